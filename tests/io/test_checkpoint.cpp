// Checkpoint directories: validation against the config, atomic sharded writing, and reload by transformers.
#include <ATen/ATen.h>

#include <fstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/model.h"
#include "run_command.h"

using namespace mp;
namespace fs = mp::fs;
using mp::test::Path;

static std::string error_of_open(const std::string& dir) {
  try {
    Checkpoint::open(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("reference checkpoints open, single-file and sharded", "[io][checkpoint]") {
  for (auto& name : test::reference_model_names()) {
    auto ck = Checkpoint::open(test::reference_model(name));
    CHECK(ck.tensor_names().size() == expected_tensors(ck.config()).size());
  }
  auto sharded = Checkpoint::open(test::reference_model("hybrid_g4_sharded"));
  CHECK(sharded.config().pattern() == "MM*-M*--M");
}

TEST_CASE("a tensor whose shape disagrees with the config is named", "[io][checkpoint]") {
  std::string dir = test::temp_dir("ck_shape") + "/m";
  fs::copy_tree(test::reference_model("hybrid_g1"), dir);
  json cfg = read_json_file(dir + "/config.json");
  cfg["intermediate_size"] = 81;
  write_json_file(dir + "/config.json", cfg);
  CHECK_THAT(error_of_open(dir), MP_CONTAINS("down_proj.weight\" has shape [48, 80] but the config implies [48, 81]"));
}

TEST_CASE("missing weights file and missing tensor are reported", "[io][checkpoint]") {
  std::string dir = test::temp_dir("ck_missing") + "/m";
  fs::create_directories(dir);
  fs::copy_file(test::reference_model("hybrid_g1") + "/config.json", dir + "/config.json");
  CHECK_THAT(error_of_open(dir), MP_CONTAINS("no model.safetensors"));
  CHECK_THAT(error_of_open(dir + "/nope"), MP_CONTAINS("not a directory"));
}

TEST_CASE("save then reload with transformers gives identical logits; large models are sharded", "[io][checkpoint]") {
  const std::string src = test::reference_model("hybrid_g2_tied");
  auto ck = Checkpoint::open(src);
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  std::string out = test::temp_dir("ck_roundtrip") + "/saved";
  // A shard limit below the model size forces several shards and an index.
  model.save(out, DType::F32, {}, false, /*max_shard_bytes=*/100000);
  CHECK(fs::exists(out + "/model.safetensors.index.json"));
  CHECK(!fs::exists(out + ".tmp-" + std::to_string(::getpid())));
  json index = read_json_file(out + "/model.safetensors.index.json");
  CHECK(index["weight_map"].size() == expected_tensors(ck.config()).size());
  int shards = 0;
  for (const std::string& name : fs::list_directory(out)) shards += fs::extension(name) == ".safetensors";
  CHECK(shards > 1);

  auto back = Checkpoint::open(out);
  for (auto& spec : expected_tensors(ck.config())) CHECK(at::equal(back.tensor(spec.name), ck.tensor(spec.name)));

  auto r = test::run_command(test::python() + " " + test::source_dir() + "/tests/reference/check_hf_load.py " + out +
                             " " + src + "/reference.safetensors --tol 0");
  INFO(r.output);
  CHECK(r.exit_code == 0);
}

TEST_CASE("writing refuses an existing output and leaves nothing on failure", "[io][checkpoint]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  std::string root = test::temp_dir("ck_atomic");
  fs::create_directories(root + "/exists");
  CHECK_THROWS_WITH(write_checkpoint(root + "/exists", ck.config(), expected_tensors(ck.config()),
                                     [&](const TensorSpec& s) { return ck.tensor(s.name); }, {}),
                    MP_CONTAINS("already exists"));
  // A producer that fails half-way: no output and no temporary directory remain.
  int calls = 0;
  CHECK_THROWS(write_checkpoint(root + "/out", ck.config(), expected_tensors(ck.config()),
                                [&](const TensorSpec& s) {
                                  if (++calls == 5) throw Error("simulated failure");
                                  return ck.tensor(s.name);
                                },
                                {}));
  CHECK(!fs::exists(root + "/out"));
  int leftovers = 0;
  for (const std::string& name : fs::list_directory(root)) leftovers += name.rfind("out", 0) == 0;
  CHECK(leftovers == 0);
}
