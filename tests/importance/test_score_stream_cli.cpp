// `minipuzzle score --max-gpu-memory` on the CPU (issue 19): a budget too small for any resident layer streams
// every layer, and the scores written equal the resident run's; a malformed size is one clear error.
#include <ATen/ATen.h>

#include <cmath>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/layer_stream.h"
#include "minipuzzle/token_file.h"
#include "run_command.h"

using namespace mp;

TEST_CASE("score --max-gpu-memory writes the resident run's scores", "[importance][stream][cli]") {
  const std::string model = test::reference_model("hybrid_g1");  // vocabulary 97
  const std::string dir = test::temp_dir("score_stream_cli");
  {
    TokenFileMetadata meta;
    meta.tokenizer_kind = "byte_level";
    meta.vocab_size = 97;
    TokenFileWriter w(dir + "/calib", meta);
    at::Tensor ids = at::randint(0, 97, {4000}, at::kInt);
    std::vector<uint32_t> v(ids.data_ptr<int>(), ids.data_ptr<int>() + ids.numel());
    w.add_document(v);
    w.finish();
  }
  // Progress as JSON lines: log lines (which say what was streamed) are printed then.
  auto run = [&](const std::string& out, const std::string& extra) {
    return test::run_command("MINIPUZZLE_PROGRESS=jsonl " + test::minipuzzle_binary() + " score " + model + " --calib " +
                             dir + "/calib.tokens --tokenizer byte --samples 5 --seq-len 20 --batch-size 2 --block-k 2 " +
                             "--iterative 1 --device cpu -o " + out + " " + extra);
  };
  auto resident = run(dir + "/resident.json", "");
  INFO(resident.output);
  REQUIRE(resident.exit_code == 0);
  // On the CPU the budget bounds the weights' copies alone: the non-layer tensors and two layers, none resident.
  const ModelConfig c = Checkpoint::open(model).config();
  int64_t widest = 0;
  for (int64_t i = 0; i < c.num_layers(); ++i) widest = std::max(widest, LayerStreamer::layer_bytes(c, i, at::kFloat));
  const int64_t budget = LayerStreamer::non_layer_bytes(c, at::kFloat) + 2 * widest;
  auto streamed = run(dir + "/streamed.json", "--max-gpu-memory " + std::to_string(budget));
  INFO(streamed.output);
  REQUIRE(streamed.exit_code == 0);
  CHECK(streamed.output.find("layer streaming within") != std::string::npos);
  CHECK(streamed.output.find("0 of 8 layers resident") != std::string::npos);
  // Written through the same JSON writer from the same numbers: the files are equal.
  json a = read_json_file(dir + "/resident.json"), b = read_json_file(dir + "/streamed.json");
  CHECK(a == b);
  auto bad = run(dir + "/bad.json", "--max-gpu-memory lots");
  CHECK(bad.exit_code == 1);
  CHECK(bad.output.find("--max-gpu-memory expects a size such as 16GiB") != std::string::npos);
}
