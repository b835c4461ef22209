// Pruning MoE hybrids (Nemotron 3 style): routed experts per layer (router rows and e_score_correction_bias entries
// with them, an equal share of every routing group), expert and shared-expert widths, experts per token; hidden
// channels through routers, experts and latent projections; MTP tensors copied, refused or dropped.
//
// References: (1) the masked parent (ForwardOptions masks: a removed expert can never be chosen, also within its
// group's ranking; removed channels are zero), exact in float64 (1e-10) and within fp32 rounding; (2) transformers
// on the pruned checkpoint (tests/reference/check_pruned_hf.py: no missing / unexpected tensors, logits within 1e-4
// of the logit scale); (3) brute force over the scores for the kept experts.
#include <set>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/safetensors.h"
#include "prune_test_util.h"
#include "run_command.h"

using namespace mp;

namespace {

std::vector<std::pair<std::string, PruneTarget>> moe_cases(const ModelConfig& c) {
  std::vector<std::pair<std::string, PruneTarget>> out;
  auto add = [&](const std::string& name, auto fill) {
    PruneTarget t;
    t.origin = name;
    fill(t);
    out.push_back({name, t});
  };
  const int64_t E = c.n_routed_experts, G = c.n_group;
  add("experts", [&](PruneTarget& t) { t.n_routed_experts = E - G; });  // one per group
  add("experts by frequency", [&](PruneTarget& t) {
    t.n_routed_experts = G == 1 ? E / 2 : 2 * G;
    t.expert_criterion = "frequency";
  });
  add("expert width", [&](PruneTarget& t) { t.moe_intermediate_size = c.moe_intermediate_size - 5; });
  add("shared expert width", [&](PruneTarget& t) { t.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size / 2; });
  add("experts per token", [&](PruneTarget& t) { t.num_experts_per_tok = c.num_experts_per_tok - 1; });
  add("everything MoE but hidden, plus a layer", [&](PruneTarget& t) {
    t.n_routed_experts = E - G;
    t.moe_intermediate_size = c.moe_intermediate_size / 2;
    t.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size - 3;
    t.num_experts_per_tok = c.num_experts_per_tok - 1;
    t.drop_layers = {0};
  });
  return out;
}

struct Comparison {
  std::string label;
  double err = 0, masking_effect = 0;
};

std::vector<Comparison> compare_with_masked_parent(at::ScalarType dtype) {
  std::vector<Comparison> out;
  for (const std::string name : {"moe_g1", "moe_grouped_latent"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    auto parent = NemotronH::load(ck, at::kCPU, dtype);
    const ModelConfig& c = ck.config();
    Scores scores = test::make_random_scores(c, 17);
    at::manual_seed(3);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 41}, at::kLong);
    at::Tensor full = test::logits_of(parent, ids);
    for (auto& [label, target] : moe_cases(c)) {
      PrunePlan plan = make_plan(c, target, &scores);
      CHECK_FALSE(plan.is_identity());
      NemotronH pruned = prune_in_memory(parent, plan);
      auto masks = plan.parent_masks();
      ForwardOptions masked;
      masked.masks = &masks;
      masked.skip_layers = plan.parent_skip_layers();
      at::Tensor reference = test::logits_of(parent, ids, masked);
      out.push_back({name + ": " + label, test::max_abs_diff(test::logits_of(pruned, ids), reference),
                     test::max_abs_diff(full, reference)});
    }
  }
  return out;
}

void write_cpp_reference(const std::string& ckpt, const std::string& ref_path, int64_t vocab) {
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

}  // namespace

TEST_CASE("MoE: pruned logits equal the masked parent's in float64 (1e-10)", "[pruning][moe]") {
  for (const Comparison& r : compare_with_masked_parent(at::kDouble)) {
    INFO(r.label << ": max abs logit difference " << r.err << " (float64), masking effect " << r.masking_effect);
    CHECK(r.err <= 1e-10);
    CHECK(r.masking_effect > 1e-3);  // the masks must matter, or the comparison proves nothing
  }
}

TEST_CASE("MoE: pruned logits equal the masked parent's in fp32 (1e-5)", "[pruning][moe]") {
  double worst = 0;
  for (const Comparison& r : compare_with_masked_parent(at::kFloat)) {
    INFO(r.label << ": max abs logit difference " << r.err << " (fp32)");
    CHECK(r.err <= 1e-5);
    CHECK(r.masking_effect > 1e-3);
    worst = std::max(worst, r.err);
  }
  WARN("MoE pruning, fp32 pruned vs masked parent: worst max |dlogit| " << worst);
}

TEST_CASE("MoE plan: the best experts of every routing group stay, router rows with them", "[pruning][moe]") {
  auto ck = Checkpoint::open(test::reference_model("moe_grouped_latent"));  // 12 experts in 4 groups
  const ModelConfig& c = ck.config();
  Scores scores = test::make_random_scores(c, 9);
  PruneTarget t;
  t.n_routed_experts = 8;
  PrunePlan plan = make_plan(c, t, &scores);
  CHECK(plan.target.n_routed_experts == 8);
  CHECK(plan.target.n_group == 4);
  for (auto& l : plan.layers) {
    if (l.type != LayerType::Moe) continue;
    const auto& sc = scores.layers[l.source].moe.experts;
    std::set<int64_t> kept(l.moe_experts.begin(), l.moe_experts.end());
    for (int64_t g = 0; g < 4; ++g) {
      int64_t n = 0;
      double worst_kept = 1e9, best_removed = -1e9;
      for (int64_t e = 3 * g; e < 3 * g + 3; ++e) {
        if (kept.count(e)) ++n, worst_kept = std::min(worst_kept, sc[e]);
        else best_removed = std::max(best_removed, sc[e]);
      }
      CHECK(n == 2);
      CHECK(worst_kept >= best_removed);
    }
  }
  // The cut router keeps exactly those rows, its fp32 bias the same entries.
  NemotronH parent = NemotronH::load(ck, at::kCPU, at::kFloat);
  NemotronH pruned = prune_in_memory(parent, plan);
  const auto& l = plan.layers[1];
  REQUIRE(l.type == LayerType::Moe);
  at::Tensor idx = at::tensor(l.moe_experts, at::kLong);
  const std::string src = "backbone.layers." + std::to_string(l.source) + ".mixer.gate.";
  CHECK(at::equal(pruned.parameters().at("backbone.layers.1.mixer.gate.weight"),
                  parent.parameters().at(src + "weight").index_select(0, idx)));
  CHECK(at::equal(pruned.parameters().at("backbone.layers.1.mixer.gate.e_score_correction_bias"),
                  parent.parameters().at(src + "e_score_correction_bias").index_select(0, idx)));
  CHECK(at::equal(pruned.parameters().at("backbone.layers.1.mixer.experts.1.up_proj.weight"),
                  parent.parameters().at("backbone.layers.1.mixer.experts." + std::to_string(l.moe_experts[1]) +
                                         ".up_proj.weight")));
}

TEST_CASE("MoE plan: bad expert counts are refused with the reason", "[pruning][moe]") {
  auto c = Checkpoint::open(test::reference_model("moe_grouped_latent")).config();
  Scores scores = test::make_random_scores(c, 9);
  PruneTarget t;
  t.n_routed_experts = 10;  // not a multiple of n_group 4
  CHECK_THROWS_WITH(make_plan(c, t, &scores), MP_CONTAINS("not a multiple of n_group 4"));
  t.n_routed_experts = 4;  // one per group: transformers ranks a group by its best two
  CHECK_THROWS_WITH(make_plan(c, t, &scores), MP_CONTAINS("at least 2"));
  t.n_routed_experts = 16;
  CHECK_THROWS_WITH(make_plan(c, t, &scores), MP_CONTAINS("larger than the parent"));
  PruneTarget none;
  none.n_routed_experts = 8;
  CHECK_THROWS_WITH(make_plan(c, none, nullptr), MP_CONTAINS("--scores"));
}

TEST_CASE("MoE: pruned checkpoints load in transformers with the C++ logits; MTP copied, refused or dropped",
          "[pruning][moe][transformers]") {
  const std::string dir = test::temp_dir("prune_moe_hf");
  std::string pairs;
  for (const std::string name : {"moe_g1", "moe_grouped_latent"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& c = ck.config();
    Scores scores = test::make_random_scores(c, 23);
    PruneTarget t;
    t.hidden_size = c.hidden_size - 8;
    t.n_routed_experts = c.n_routed_experts - c.n_group;
    t.moe_intermediate_size = c.moe_intermediate_size - 4;
    t.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size - 6;
    t.num_experts_per_tok = c.num_experts_per_tok - 1;
    const std::string out = dir + "/" + name;
    prune_checkpoint(ck, make_plan(c, t, &scores), out);
    auto back = Checkpoint::open(out);
    CHECK(back.config().n_routed_experts == c.n_routed_experts - c.n_group);
    CHECK(back.info("backbone.layers.1.mixer.gate.e_score_correction_bias").dtype == DType::F32);
    write_cpp_reference(out, out + ".reference.safetensors", c.vocab_size);
    pairs += " '" + out + "=" + out + ".reference.safetensors'";
  }
  // MTP: an expert-width-only prune of moe_mtp refuses (the MTP MoE layer has the parent's widths) ...
  auto mtp = Checkpoint::open(test::reference_model("moe_mtp"));
  Scores scores = test::make_random_scores(mtp.config(), 2);
  PruneTarget t;
  t.n_routed_experts = 6;
  CHECK_THROWS_WITH(prune_checkpoint(mtp, make_plan(mtp.config(), t, &scores), dir + "/mtp_refused"),
                    MP_CONTAINS("--drop-mtp"));
  // ... --drop-mtp writes it without them ...
  t.drop_mtp = true;
  prune_checkpoint(mtp, make_plan(mtp.config(), t, &scores), dir + "/mtp_dropped");
  auto dropped = Checkpoint::open(dir + "/mtp_dropped");
  CHECK(dropped.mtp_tensor_names().empty());
  CHECK(dropped.config().num_nextn_predict_layers == 0);
  // ... and a prune that leaves the MTP shapes alone (depth, Mamba heads) copies them byte for byte (CLI).
  const std::string scores_path = dir + "/mtp_scores.json";
  write_scores(scores_path, scores);
  auto r = test::run_command(test::minipuzzle_binary() + " prune " + test::reference_model("moe_mtp") + " --scores " +
                             scores_path + " --drop-layers 5 --mamba-heads 2 -o " + dir + "/mtp_kept");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  auto kept = Checkpoint::open(dir + "/mtp_kept");
  REQUIRE(kept.mtp_tensor_names() == mtp.mtp_tensor_names());
  for (const auto& n : mtp.mtp_tensor_names()) CHECK(at::equal(kept.tensor(n), mtp.tensor(n)));
  CHECK(kept.config().num_nextn_predict_layers == 1);
  write_cpp_reference(dir + "/mtp_kept", dir + "/mtp_kept.reference.safetensors", mtp.config().vocab_size);
  pairs += " '" + dir + "/mtp_kept=" + dir + "/mtp_kept.reference.safetensors'";
  auto py = test::run_command(test::python() + " " + test::source_dir() +
                              "/tests/reference/check_pruned_hf.py --tol 1e-4" + pairs);
  INFO(py.output);
  CHECK(py.exit_code == 0);
  CHECK(py.output.find("\"ok\": false") == std::string::npos);
}
