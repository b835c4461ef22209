// `minipuzzle nest` and `minipuzzle slice` (issue 27) through the CLI: the nested checkpoint holds the original
// model (our loader: logits within fp32 rounding of the original's), records its layer ranking and budgets, and a
// slice by budget name or by inline shape is the model `minipuzzle prune` makes with the same scores (logits), loads
// in transformers with no missing / unexpected / mismatched tensors and transformers' logits equal ours
// (tests/reference/check_pruned_hf.py, 1e-4 of the logit scale, as the pruner's transformers test).
#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/elastic.h"
#include "minipuzzle/safetensors.h"
#include "prune_test_util.h"
#include "run_command.h"

using namespace mp;

namespace {

void write_reference(const std::string& ckpt, const std::string& ref_path, int64_t vocab) {
  auto model = NemotronH::load(Checkpoint::open(ckpt), at::kCPU, at::kFloat);
  std::map<std::string, at::Tensor> ref;
  at::manual_seed(5);
  for (int64_t L : {7, 90}) {
    at::Tensor ids = at::randint(0, vocab, {2, L}, at::kLong);
    ref["input_ids_" + std::to_string(L)] = ids;
    ref["logits_" + std::to_string(L)] = test::logits_of(model, ids).contiguous();
  }
  save_safetensors(ref_path, ref);
}

double relative_diff(const NemotronH& a, const NemotronH& b, const at::Tensor& ids) {
  at::Tensor x = test::logits_of(a, ids), y = test::logits_of(b, ids);
  return test::max_abs_diff(x, y) / std::max(1.0, x.abs().max().item<double>());
}

}  // namespace

TEST_CASE("nest and slice through the CLI; slices load in transformers", "[pruning][elastic][transformers]") {
  const std::string dir = test::temp_dir("nest_slice_cli");
  const std::string bin = test::minipuzzle_binary();
  std::string pairs;
  for (const std::string name : {"hybrid_g2_tied", "hybrid_g4_sharded"}) {
    INFO(name);
    const std::string parent = test::reference_model(name);
    auto ck = Checkpoint::open(parent);
    const ModelConfig& c = ck.config();
    Scores scores = test::make_random_scores(c, 8);
    const std::string scores_path = dir + "/" + name + "_scores.json";
    write_scores(scores_path, scores);
    // Budgets: a named one with every axis and depth, recorded at nesting time.
    json small{{"hidden_size", c.hidden_size / 2},
               {"intermediate_size", c.intermediate_size / 2},
               {"mamba_num_heads", c.n_groups * std::max<int64_t>(1, c.mamba_num_heads / c.n_groups / 2)},
               {"num_attention_heads", c.num_key_value_heads * std::max<int64_t>(1, c.num_attention_heads / c.num_key_value_heads - 1)},
               {"drop_count", 2}};
    json budgets{{"budgets", {{"small", small}}}};
    const std::string budgets_path = dir + "/" + name + "_budgets.json";
    write_json_file(budgets_path, budgets);
    const std::string nested = dir + "/" + name + "_nested";
    auto r = test::run_command(bin + " nest " + parent + " --scores " + scores_path + " --budgets " + budgets_path +
                               " -o " + nested);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    auto info = read_elastic_info(nested);
    REQUIRE(info.has_value());
    CHECK(int64_t(info->layer_ranking.size()) == c.num_layers());
    REQUIRE(info->find("small") != nullptr);

    auto original = NemotronH::load(ck, at::kCPU, at::kFloat);
    auto nested_model = NemotronH::load(Checkpoint::open(nested), at::kCPU, at::kFloat);
    at::manual_seed(3);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 33}, at::kLong);
    CHECK(relative_diff(original, nested_model, ids) <= 1e-5);

    // By name, and by an inline shape.
    const std::string by_name = dir + "/" + name + "_small";
    r = test::run_command(bin + " slice " + nested + " --budget small -o " + by_name);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(fs::exists(by_name + "/minipuzzle_slice.json"));
    CHECK_FALSE(fs::exists(by_name + "/" + kElasticFile));  // a slice is an ordinary checkpoint
    PrunePlan plan = make_plan(c, PruneTarget::from_json(small, "small"), &scores);
    NemotronH pruned = prune_in_memory(original, plan);
    auto sliced = NemotronH::load(Checkpoint::open(by_name), at::kCPU, at::kFloat);
    CHECK(sliced.config().pattern() == pruned.config().pattern());
    CHECK(relative_diff(pruned, sliced, ids) <= 1e-5);

    const std::string by_shape = dir + "/" + name + "_ffn";
    r = test::run_command(bin + " slice " + nested + " --budget '{\"ffn\": " + std::to_string(c.intermediate_size / 4) +
                          "}' -o " + by_shape);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    PruneTarget ffn;
    ffn.intermediate_size = c.intermediate_size / 4;
    CHECK(relative_diff(prune_in_memory(original, make_plan(c, ffn, &scores)),
                        NemotronH::load(Checkpoint::open(by_shape), at::kCPU, at::kFloat), ids) <= 1e-5);

    for (const std::string& out : {nested, by_name, by_shape}) {
      write_reference(out, out + ".reference.safetensors", c.vocab_size);
      pairs += " '" + out + "=" + out + ".reference.safetensors'";
    }

    // Errors: one line, exit 1.
    r = test::run_command(bin + " slice " + nested + " --budget tiny -o " + dir + "/x");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("small") != std::string::npos);  // names the budgets it has
    r = test::run_command(bin + " slice " + parent + " --budget small -o " + dir + "/x");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("not a nested checkpoint") != std::string::npos);
    r = test::run_command(bin + " slice " + nested + " --budget '{\"ffn\": 100000}' -o " + dir + "/x");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("larger than the parent") != std::string::npos);
    CHECK_FALSE(fs::exists(dir + "/x"));
  }
  auto r = test::run_command(test::python() + " " + test::source_dir() + "/tests/reference/check_pruned_hf.py --tol 1e-4" + pairs);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("\"ok\": false") == std::string::npos);
}
