// A target equal to the parent reproduces it byte for byte; invalid targets fail with a clear message before
// anything is written; targets parse from every accepted form (flags, inline JSON, a full config, a search
// report candidate).
#include <cstring>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/safetensors.h"
#include "prune_test_util.h"
#include "run_command.h"

using namespace mp;
namespace fs = mp::fs;
using mp::test::Path;

namespace {

// Compares every tensor of two checkpoints byte for byte (dtype, shape and data).
void check_same_bytes(const std::string& a_dir, const std::string& b_dir) {
  auto a = Checkpoint::open(a_dir);
  auto b = Checkpoint::open(b_dir);
  for (auto& spec : expected_tensors(a.config())) {
    const TensorInfo& ia = a.info(spec.name);
    const TensorInfo& ib = b.info(spec.name);
    INFO(spec.name);
    REQUIRE(ia.dtype == ib.dtype);
    REQUIRE(ia.shape == ib.shape);
    at::Tensor ta = a.tensor(spec.name), tb = b.tensor(spec.name);
    REQUIRE(ta.nbytes() == tb.nbytes());
    CHECK(std::memcmp(ta.data_ptr(), tb.data_ptr(), ta.nbytes()) == 0);
  }
}

std::string expect_failure(const ModelConfig& c, const PruneTarget& t, const Scores* scores) {
  try {
    make_plan(c, t, scores);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("make_plan accepted an invalid target");
  return "";
}

}  // namespace

TEST_CASE("a target equal to the parent gives the same bytes per tensor", "[pruning]") {
  const std::string dir = test::temp_dir("prune_identity");
  for (const auto& name : test::reference_model_names()) {
    auto ck = Checkpoint::open(test::reference_model(name));
    Scores scores = test::make_random_scores(ck.config(), 1);
    // Every width given explicitly at the parent's value, with scores: still nothing may move.
    PruneTarget same;
    same.hidden_size = ck.config().hidden_size;
    same.intermediate_size = ck.config().intermediate_size;
    same.num_attention_heads = ck.config().num_attention_heads;
    same.mamba_num_heads = ck.config().mamba_num_heads;
    same.mamba_head_dim = ck.config().mamba_head_dim;
    PrunePlan plan = make_plan(ck.config(), same, &scores);
    CHECK(plan.is_identity());
    prune_checkpoint(ck, plan, dir + "/" + name);
    check_same_bytes(test::reference_model(name), dir + "/" + name);
    CHECK(load_config(dir + "/" + name).pattern() == ck.config().pattern());
  }
  // Through the CLI, with the parent's own config.json as the target (the "full student config" form).
  const std::string parent = test::reference_model("hybrid_g4_sharded");
  auto r = test::run_command(test::minipuzzle_binary() + " prune " + parent + " --target " + parent +
                             "/config.json -o " + dir + "/cli_identity");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  check_same_bytes(parent, dir + "/cli_identity");
  CHECK(fs::exists(dir + "/cli_identity/minipuzzle_prune.json"));
}

TEST_CASE("invalid targets fail with a clear message", "[pruning]") {
  auto g2 = Checkpoint::open(test::reference_model("hybrid_g2_tied")).config();  // 8 Mamba heads, 2 groups
  auto g4 = Checkpoint::open(test::reference_model("hybrid_g4_sharded")).config();  // 6 heads / 3 KV
  Scores s2 = test::make_random_scores(g2, 1), s4 = test::make_random_scores(g4, 1);
  PruneTarget t;
  t.mamba_num_heads = 7;
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("not a multiple of n_groups"));
  t = {};
  t.mamba_num_heads = 6;
  t.mamba_group_removal = true;  // groups hold 4 heads: 6 is not whole groups
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("multiple of 4"));
  t = {};
  t.num_attention_heads = 4;  // 4 heads over 3 KV heads
  CHECK_THAT(expect_failure(g4, t, &s4), MP_CONTAINS("does not divide"));
  t = {};
  t.num_key_value_heads = 1;
  t.num_attention_heads = 3;  // 3 per KV group, but groups hold 2
  CHECK_THAT(expect_failure(g4, t, &s4), MP_CONTAINS("hold only 2"));
  t = {};
  t.hidden_size = g2.hidden_size + 8;
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("larger than the parent"));
  t = {};
  t.mamba_head_dim = g2.mamba_head_dim * 2;
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("larger than the parent"));
  t = {};
  t.drop_layers = {2, 17};
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("layer index 17 does not exist"));
  t = {};
  t.drop_layers = {-1};
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("does not exist"));
  t = {};
  t.intermediate_size = 32;
  CHECK_THAT(expect_failure(g2, t, &s4), MP_CONTAINS("pattern"));  // scores of another model
  CHECK_THAT(expect_failure(g2, t, nullptr), MP_CONTAINS("--scores"));
  Scores wrong_width = s2;
  wrong_width.fingerprint.clear();
  wrong_width.layers[1].mlp_neurons.resize(10);  // same pattern, other FFN width
  CHECK_THAT(expect_failure(g2, t, &wrong_width), MP_CONTAINS("another model"));
  t = {};
  t.drop_count = 2;
  t.depth_criterion = "perplexity";
  CHECK_THAT(expect_failure(g2, t, &s2), MP_CONTAINS("no depth criterion \"perplexity\""));
}

TEST_CASE("the CLI refuses invalid targets before writing anything", "[pruning][cli]") {
  const std::string dir = test::temp_dir("prune_invalid_cli");
  const std::string parent = test::reference_model("hybrid_g2_tied");
  auto ck = Checkpoint::open(parent);
  write_scores(dir + "/scores.json", test::make_random_scores(ck.config(), 2));
  write_scores(dir + "/other.json",
               test::make_random_scores(Checkpoint::open(test::reference_model("hybrid_g1")).config(), 2));
  struct Bad {
    std::string args, message;
  };
  const std::vector<Bad> bad = {
      {"--scores " + dir + "/scores.json --mamba-heads 5", "not a multiple of n_groups"},
      {"--scores " + dir + "/scores.json --hidden 4096", "larger than the parent"},
      {"--scores " + dir + "/scores.json --drop-layers 1,9", "layer index 9 does not exist"},
      {"--scores " + dir + "/other.json --ffn 32", "another model"},
      {"--scores " + dir + "/scores.json --attn-heads 3 --kv-heads 2", "larger than the parent"},
      {"--target '{\"hiden_size\": 32}'", "unknown field \"hiden_size\""},
      {"--target " + dir + "/report.json#nope", "cannot read"},
  };
  for (auto& b : bad) {
    const std::string out = dir + "/out";
    auto r = test::run_command(test::minipuzzle_binary() + " prune " + parent + " " + b.args + " -o " + out);
    INFO(b.args << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, MP_CONTAINS(b.message));
    CHECK_FALSE(fs::exists(out));
    for (const std::string& name : fs::list_directory(dir)) CHECK(name.find(".tmp-") == std::string::npos);
  }
}

TEST_CASE("targets parse from flags, JSON, a full config and a search report candidate", "[pruning]") {
  const std::string dir = test::temp_dir("prune_target_forms");
  auto parent = Checkpoint::open(test::reference_model("hybrid_g1")).config();  // M*-M-*M-
  // A search report with one candidate: the student's full config plus the parent layers it drops.
  ModelConfig student = parent;
  student.layers = {LayerType::Mamba, LayerType::Mlp, LayerType::Mamba, LayerType::Attention, LayerType::Mamba,
                    LayerType::Mlp};  // parent without layers 1 (*) and 4 (-)
  student.intermediate_size = 64;
  student.mamba_num_heads = 4;
  json report{{"format", "minipuzzle-search-report/1"},
              {"candidates", json::array({json{{"id", "c-abc"}, {"dropped_layers", {1, 4}}, {"config", student.to_json()}}})}};
  write_json_file(dir + "/report.json", report);
  PruneTarget t = load_target(dir + "/report.json#c-abc");
  REQUIRE(t.full_config);
  CHECK(t.drop_layers == std::vector<int64_t>{1, 4});
  CHECK(t.intermediate_size == 64);
  Scores scores = test::make_random_scores(parent, 9);
  PrunePlan plan = make_plan(parent, t, &scores);
  CHECK(plan.target.pattern() == "M-M*M-");
  CHECK(plan.target.mamba_num_heads == 4);
  CHECK_THROWS_WITH(load_target(dir + "/report.json#c-zzz"), MP_CONTAINS("no candidate with id \"c-zzz\""));
  // The same student handed over in memory (the search's zero-shot ranking path).
  PrunePlan from_config = make_plan(parent, target_from_config(student, {1, 4}), &scores);
  CHECK(from_config.to_json() == plan.to_json());
  // One JSON form: the target written is the report's candidate (less the search's own fields), and reads back.
  const json written = target_from_config(student, {1, 4}).to_json();
  CHECK(written == json{{"dropped_layers", {1, 4}}, {"config", student.to_json()}});
  CHECK(t.to_json() == written);
  CHECK(make_plan(parent, PruneTarget::from_json(written, "written"), &scores).to_json() == plan.to_json());
  // A candidate whose pattern does not follow from its dropped layers is refused.
  report["candidates"][0]["dropped_layers"] = {1, 3};
  write_json_file(dir + "/report.json", report);
  CHECK_THROWS_WITH(make_plan(parent, load_target(dir + "/report.json#c-abc"), &scores),
                    MP_CONTAINS("is not the parent's"));
  // Inline JSON with short names.
  PruneTarget inline_t = load_target("{\"ffn\": 40, \"mamba_heads\": 3, \"drop_count\": 1}");
  CHECK(inline_t.intermediate_size == 40);
  CHECK(inline_t.mamba_num_heads == 3);
  CHECK(inline_t.drop_count == 1);
  CHECK(inline_t.to_json() == json{{"intermediate_size", 40}, {"mamba_num_heads", 3}, {"drop_count", 1}});
  PruneTarget knobs = load_target("{\"hidden\": 32, \"drop_layers\": [2], \"mamba_head_criterion\": \"nested\", "
                                  "\"depth_criterion\": \"kl\", \"expert_criterion\": \"loss\", \"drop_mtp\": true, "
                                  "\"mamba_group_removal\": true}");
  PruneTarget back = PruneTarget::from_json(knobs.to_json(), "written");
  CHECK(back.to_json() == knobs.to_json());
  CHECK(back.hidden_size == 32);
  CHECK(back.drop_layers == std::vector<int64_t>{2});
  CHECK(back.mamba_head_criterion == "nested");
  CHECK(back.depth_criterion == "kl");
  CHECK(back.expert_criterion == "loss");
  CHECK(back.drop_mtp);
  CHECK(back.mamba_group_removal);
  PrunePlan p2 = make_plan(parent, inline_t, &scores);
  CHECK(p2.target.num_layers() == parent.num_layers() - 1);
  // The dropped layer is the one with the lowest depth score.
  int64_t worst = 0;
  for (int64_t i = 1; i < parent.num_layers(); ++i)
    if (scores.layers[i].depth.by_criterion["lm_loss_increase"] < scores.layers[worst].depth.by_criterion["lm_loss_increase"])
      worst = i;
  CHECK(p2.dropped_layers == std::vector<int64_t>{worst});
}
