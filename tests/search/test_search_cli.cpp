// `minipuzzle search` end to end on CPU, as subprocesses:
//   - a search written as a config file (configs/search/nano2-12b-to-9b.json) gives the report the library does;
//   - stage 2 (--zero-shot-top M): the best M candidates of a tiny transformers-made NemotronH are pruned in memory
//     and ranked by their loss on calibration tokens; each loss equals the one `minipuzzle prune` + `minipuzzle
//     eval` measure on the same candidate written to disk;
//   - stage 3 (--distill-top K): the best K of stage 2 are distilled briefly and re-ranked by validation loss;
//   - the inputs stages 2 and 3 need are checked before the search runs.
#include <cmath>
#include <fstream>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/json.h"
#include "minipuzzle/token_file.h"
#include "run_command.h"

namespace fs = mp::fs;
using mp::test::Path;
using namespace mp;

namespace {

struct Setup {
  std::string dir, model, train, valid, scores;
};

// Token files from tinyshakespeare's bytes folded into the fixture's vocabulary, and the model's scores.json.
const Setup& setup() {
  static Setup s = [] {
    Setup s;
    s.dir = test::temp_dir("search_cli");
    s.model = test::reference_model("hybrid_g1");  // vocab 97, "M*-M-*M-", hidden 48, FFN 80, 6 Mamba heads
    std::ifstream in(test::shared_data("tinyshakespeare.txt"), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    REQUIRE(text.size() > 40000);
    auto write = [&](const std::string& name, size_t begin, size_t count) {
      TokenFileMetadata meta;
      meta.tokenizer_kind = "byte_level";
      meta.vocab_size = 97;
      TokenFileWriter w(s.dir + "/" + name, meta);
      std::vector<uint32_t> ids;
      for (size_t i = begin; i < begin + count; ++i) ids.push_back(uint32_t(uint8_t(text[i])) % 97);
      w.add_document(ids);
      w.finish();
      return s.dir + "/" + name;
    };
    s.train = write("train", 0, 24000);
    s.valid = write("valid", 30000, 4096);
    s.scores = s.dir + "/scores.json";
    auto r = test::run_command(test::minipuzzle_binary() + " score " + s.model + " --calib " + s.train +
                               " --samples 8 --seq-len 64 -o " + s.scores);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return s;
  }();
  return s;
}

// The tiny space: 6 depth choices (one or two layers dropped) x hidden {32, 48} x FFN {48, 80} x Mamba heads {4, 6} x attention heads {2, 4}.
std::string tiny_search(const Setup& s, const std::string& out) {
  return test::minipuzzle_binary() + " search " + s.model + " --hardware h100-80gb --context 4096 --scores " +
         s.scores + " --drop-mamba 0:1 --drop-attention 0:1 --drop-mlp 0:1 --drop-total 1:2 --hidden 32:48:16" +
         " --ffn 48:80:32 --mamba-heads 4:6:2 --mamba-head-dim 8 --attention-heads 2:4:2 --calib " + s.valid +
         " --calib-tokens 1024 --seq-len 64 --batch-size 4 --threads 1 -o " + out;
}

}  // namespace

TEST_CASE("search --config: the Nano 2 width search from configs/search ranks the 9B shape in the top 5", "[search][cli]") {
  const std::string out = test::temp_dir("search_cli_config") + "/report";
  auto r = test::run_command(test::minipuzzle_binary() + " search --config nano2-12b-to-9b -o " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json report = read_json_file(out + "/report.json");
  CHECK(report["proxy"] == "importance-uniform");
  CHECK_FALSE(report["parent"]["feasible"].get<bool>());
  REQUIRE(report["references"].size() == 1);
  const json& ref = report["references"][0]["candidate"];
  CHECK(ref["feasible"].get<bool>());
  CHECK(ref["rank"].get<int64_t>() >= 1);
  CHECK(ref["rank"].get<int64_t>() <= 5);
  // A flag given beside the file overrides it: without the parameter target the 9B no longer makes the top 5.
  auto r2 = test::run_command(test::minipuzzle_binary() + " search --config nano2-12b-to-9b --max-params 0 -o " + out + "2");
  INFO(r2.output);
  REQUIRE(r2.exit_code == 0);
  CHECK(read_json_file(out + "2/report.json")["references"][0]["candidate"]["rank"].get<int64_t>() > 5);
  // Unknown keys are refused with the key named.
  const std::string bad = test::temp_dir("search_cli_config") + "/bad.json";
  std::ofstream(bad) << R"({"source": "nemotron-nano-12b-v2", "hardware": "a10g", "hiden": "4480"})";
  auto r3 = test::run_command(test::minipuzzle_binary() + " search --config " + bad + " -o " + out + "3");
  CHECK(r3.exit_code == 1);
  CHECK(r3.output.find("unknown key \"hiden\"") != std::string::npos);
}

TEST_CASE("search stage 2: the best M pruned in memory, ranked by their loss on calibration tokens", "[search][cli]") {
  const Setup& s = setup();
  const std::string out = s.dir + "/stage2";
  auto r = test::run_command(tiny_search(s, out) + " --zero-shot-top 5");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json report = read_json_file(out + "/report.json");
  CHECK(report["enumerated"].get<int64_t>() == 96);
  CHECK(report["stages"]["stage2_top"].get<int64_t>() == 5);
  const json& c = report["candidates"];
  REQUIRE(c.size() >= 6);
  for (size_t i = 0; i < 5; ++i) {
    INFO("candidate " << i);
    CHECK(c[i]["stage"].get<int64_t>() == 2);
    CHECK(c[i]["rank"].get<int64_t>() == int64_t(i) + 1);
    REQUIRE(c[i].contains("zero_shot_loss"));
    CHECK(std::isfinite(c[i]["zero_shot_loss"].get<double>()));
    if (i > 0) CHECK(c[i - 1]["zero_shot_loss"].get<double>() <= c[i]["zero_shot_loss"].get<double>());
  }
  CHECK(c[5]["stage"].get<int64_t>() == 1);
  CHECK_FALSE(c[5].contains("zero_shot_loss"));
  CHECK_FALSE(fs::exists(out + "/stage3"));  // stage 2 writes no checkpoint

  // The same candidates written to disk by `minipuzzle prune` and measured by `minipuzzle eval`.
  for (size_t i : {size_t(0), size_t(4)}) {
    const std::string id = c[i]["id"].get<std::string>(), pruned = s.dir + "/pruned_" + std::to_string(i);
    auto p = test::run_command(test::minipuzzle_binary() + " prune " + s.model + " --scores " + s.scores +
                               " --target " + out + "/report.json#" + id + " -o " + pruned + " --overwrite");
    INFO(p.output);
    REQUIRE(p.exit_code == 0);
    auto e = test::run_command(test::minipuzzle_binary() + " eval " + pruned + " --data " + s.valid +
                               " --seq-len 64 --batch-size 4 --max-tokens 1024 --device cpu");
    INFO(e.output);
    REQUIRE(e.exit_code == 0);
    json ej = json::parse(e.output.substr(e.output.find('{')));
    CHECK(c[i]["zero_shot_loss"].get<double>() == Approx(ej["loss"].get<double>()).epsilon(1e-5));
  }
}

TEST_CASE("search stage 3: the best K of stage 2 distilled briefly and re-ranked by validation loss", "[search][cli]") {
  const Setup& s = setup();
  const std::string out = s.dir + "/stage3run";
  auto r = test::run_command(tiny_search(s, out) + " --zero-shot-top 3 --distill-top 2 --distill-data " + s.train +
                             " --distill-tokens 2048 --distill-micro-batch 4 --distill-lr 1e-3 --distill-eval-tokens 1024");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json report = read_json_file(out + "/report.json");
  CHECK(report["stages"]["distill_top"].get<int64_t>() == 2);
  const json& c = report["candidates"];
  REQUIRE(c.size() >= 3);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(c[i]["stage"].get<int64_t>() == 3);
    REQUIRE(c[i].contains("distilled_loss"));
    CHECK(std::isfinite(c[i]["distilled_loss"].get<double>()));
    const std::string id = c[i]["id"].get<std::string>();
    // The distilled student is kept for further training.
    CHECK(fs::exists(out + "/stage3/" + id + "/distill/final/config.json"));
    CHECK(fs::exists(out + "/stage3/" + id + "/distill/log.jsonl"));
  }
  CHECK(c[0]["distilled_loss"].get<double>() <= c[1]["distilled_loss"].get<double>());
  CHECK(c[2]["stage"].get<int64_t>() == 2);
  CHECK_FALSE(c[2].contains("distilled_loss"));
}

TEST_CASE("search stages 2-3: missing inputs are refused before the search runs", "[search][cli]") {
  const Setup& s = setup();
  const std::string out = s.dir + "/refused";
  auto no_scores = test::run_command(test::minipuzzle_binary() + " search " + s.model +
                                     " --hardware h100-80gb --zero-shot-top 3 --calib " + s.valid + " -o " + out);
  CHECK(no_scores.exit_code == 1);
  CHECK(no_scores.output.find("needs --scores") != std::string::npos);
  // SOURCE given as the parent's config.json (the scores fit it) rather than its checkpoint directory.
  auto not_a_checkpoint = test::run_command(test::minipuzzle_binary() + " search " + s.model + "/config.json" +
                                            " --hardware h100-80gb --zero-shot-top 3 --scores " + s.scores +
                                            " --calib " + s.valid + " -o " + out);
  CHECK(not_a_checkpoint.exit_code == 1);
  CHECK(not_a_checkpoint.output.find("checkpoint directory") != std::string::npos);
  // Scores of another model are refused by the scores reader's checks, before anything runs.
  auto other_model = test::run_command(test::minipuzzle_binary() + " search nemotron-nano-12b-v2 --hardware a10g" +
                                       " --zero-shot-top 3 --scores " + s.scores + " --calib " + s.valid + " -o " + out);
  CHECK(other_model.exit_code == 1);
  CHECK(other_model.output.find("another model") != std::string::npos);
  auto no_data = test::run_command(tiny_search(s, out) + " --zero-shot-top 3 --distill-top 2");
  CHECK(no_data.exit_code == 1);
  CHECK(no_data.output.find("--distill-data") != std::string::npos);
  auto k_above_m = test::run_command(tiny_search(s, out) + " --zero-shot-top 2 --distill-top 3 --distill-data " + s.train);
  CHECK(k_above_m.exit_code == 1);
  CHECK_FALSE(fs::exists(out + "/report.json"));
}
