// Nested order (issue 27): the permuted model is the same function as the original (logits in float64 within
// 1e-10, fp32 within 1e-5 of the logit scale), the permutation really moves units (it is not the identity), and the prefix slice of a
// budget equals `minipuzzle prune` of the original with the same scores (the same function; float64 1e-10), on
// random scores and on scores full of ties, for the hybrids and the MoE hybrids (experts within routing groups,
// expert and shared-expert channels). The slice for elastic distillation passes gradients to the shared
// weights. References: the original model (independent of the permutation code) and the pruner (make_plan's
// top-k choice, tested against masking in test_prune_equivalence).
#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <set>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/elastic.h"
#include "prune_test_util.h"

using namespace mp;

namespace {

// Scores rounded to three levels: most comparisons are ties, so the tie rule (lower index first) decides.
Scores tied_scores(const ModelConfig& c, uint64_t seed) {
  Scores s = test::make_random_scores(c, seed);
  auto round3 = [](std::vector<double>& v) {
    for (auto& x : v) x = std::floor(x * 3) / 3;
  };
  round3(s.hidden);
  for (auto& l : s.layers) {
    round3(l.mlp_neurons), round3(l.attn_heads), round3(l.attn_kv_groups), round3(l.mamba.heads);
    round3(l.mamba.head_dim), round3(l.mamba.groups), round3(l.moe.experts), round3(l.moe.expert_channels);
    round3(l.moe.shared);
    for (auto& [k, v] : l.depth.by_criterion) v = std::floor(v * 2) / 2;
  }
  return s;
}

struct Budget {
  std::string name;
  PruneTarget target;
};

std::vector<Budget> budgets_for(const ModelConfig& c) {
  std::vector<Budget> out;
  auto add = [&](const std::string& name, auto fill) {
    PruneTarget t;
    t.origin = name;
    fill(t);
    out.push_back({name, t});
  };
  const int64_t attn_per_group = c.num_attention_heads / c.num_key_value_heads;
  const int64_t mamba_per_group = c.mamba_num_heads / c.n_groups;
  add("hidden", [&](PruneTarget& t) { t.hidden_size = c.hidden_size * 3 / 4; });
  add("mlp neurons", [&](PruneTarget& t) { t.intermediate_size = c.intermediate_size * 5 / 8; });
  if (attn_per_group > 1)
    add("attention heads within KV groups",
        [&](PruneTarget& t) { t.num_attention_heads = c.num_key_value_heads * (attn_per_group - 1); });
  if (c.num_key_value_heads > 1)
    add("whole KV groups", [&](PruneTarget& t) {
      t.num_key_value_heads = c.num_key_value_heads - 1;
      t.num_attention_heads = (c.num_key_value_heads - 1) * attn_per_group;
    });
  add("mamba heads within groups", [&](PruneTarget& t) { t.mamba_num_heads = c.n_groups * (mamba_per_group / 2); });
  add("mamba head_dim", [&](PruneTarget& t) { t.mamba_head_dim = c.mamba_head_dim - 3; });
  if (c.n_groups > 1)
    add("whole mamba groups", [&](PruneTarget& t) {
      t.mamba_num_heads = c.mamba_num_heads / 2;
      t.mamba_group_removal = true;
    });
  add("depth (drop_count)", [&](PruneTarget& t) { t.drop_count = 2; });
  add("everything", [&](PruneTarget& t) {
    t.hidden_size = c.hidden_size / 2;
    t.intermediate_size = c.intermediate_size / 2;
    t.num_attention_heads = c.num_key_value_heads * std::max<int64_t>(1, attn_per_group - 1);
    t.mamba_num_heads = c.n_groups * std::max<int64_t>(1, mamba_per_group - 1);
    t.mamba_head_dim = c.mamba_head_dim - 1;
    t.drop_count = 2;
  });
  return out;
}

bool moves_something(const PrunePlan& p) {
  auto moved = [](const std::vector<int64_t>& v) {
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] != int64_t(i)) return true;
    return false;
  };
  bool any = moved(p.hidden);
  for (auto& l : p.layers)
    any = any || moved(l.mlp_neurons) || moved(l.attn_heads) || moved(l.mamba_heads) || moved(l.mamba_head_dim) ||
          moved(l.moe_experts);
  return any;
}

// Every list of the permutation is a permutation of its axis.
void check_permutation(const std::vector<int64_t>& v, int64_t n, const std::string& what) {
  INFO(what);
  REQUIRE(int64_t(v.size()) == n);
  std::set<int64_t> s(v.begin(), v.end());
  CHECK(int64_t(s.size()) == n);
  CHECK(*s.begin() == 0);
  CHECK(*s.rbegin() == n - 1);
}

}  // namespace

TEST_CASE("the nested model computes what the original computes", "[pruning][elastic]") {
  std::vector<std::string> names = test::reference_model_names();
  for (auto& n : test::moe_reference_model_names())
    if (n != "moe_mtp") names.push_back(n);
  for (const auto& name : names) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& c = ck.config();
    at::manual_seed(5);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 37}, at::kLong);
    for (int tied = 0; tied < 2; ++tied) {
      Scores scores = tied ? tied_scores(c, 21) : test::make_random_scores(c, 21);
      NestedOrder order = make_nested_order(c, scores);
      INFO(name << (tied ? " (tied scores)" : " (random scores)"));
      REQUIRE(moves_something(order.permutation));
      check_permutation(order.permutation.hidden, c.hidden_size, "hidden");
      check_permutation(order.layer_ranking, c.num_layers(), "layer ranking");
      for (auto& l : order.permutation.layers) {
        if (l.type == LayerType::Mlp) check_permutation(l.mlp_neurons, c.intermediate_size, "mlp");
        if (l.type == LayerType::Attention) check_permutation(l.attn_heads, c.num_attention_heads, "attention heads");
        if (l.type == LayerType::Mamba) check_permutation(l.mamba_heads, c.mamba_num_heads, "mamba heads");
        if (l.type == LayerType::Moe) check_permutation(l.moe_experts, c.n_routed_experts, "experts");
      }
      for (auto dtype : {at::kDouble, at::kFloat}) {
        auto model = NemotronH::load(ck, at::kCPU, dtype);
        NemotronH nested = prune_in_memory(model, order.permutation);
        at::Tensor a = test::logits_of(model, ids), b = test::logits_of(nested, ids);
        const double err = test::max_abs_diff(a, b);
        INFO((dtype == at::kDouble ? "float64" : "fp32") << ": max |logit difference| " << err << " of scale "
                                                           << a.abs().max().item<double>());
        // fp32: the permutation reorders the sums over channels (GEMM reductions), so rounding differs by a few
        // 1e-6 of the logit scale (measured at most 5.1e-6, hybrid_g4_sharded); float64 shows the function is equal.
        const double scale = std::max(1.0, a.abs().max().item<double>());
        CHECK(err <= (dtype == at::kDouble ? 1e-10 : 1e-5 * scale));
        // The tensors did move: some weight differs from the original's at the same name.
        bool differs = false;
        for (auto& [n, t] : nested.parameters()) differs = differs || !at::equal(t, model.parameters().at(n));
        CHECK(differs);
      }
    }
  }
}

TEST_CASE("a prefix slice of the nested model equals the pruned original", "[pruning][elastic]") {
  for (const auto& name : test::reference_model_names()) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& c = ck.config();
    auto model = NemotronH::load(ck, at::kCPU, at::kDouble);
    at::manual_seed(6);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 41}, at::kLong);
    for (int tied = 0; tied < 2; ++tied) {
      Scores scores = tied ? tied_scores(c, 33) : test::make_random_scores(c, 33);
      NestedOrder order = make_nested_order(c, scores);
      NemotronH nested = prune_in_memory(model, order.permutation);
      for (auto& b : budgets_for(c)) {
        INFO(name << (tied ? " (tied scores)" : " (random scores)") << ": " << b.name);
        PrunePlan pruned_plan = make_plan(c, b.target, &scores);
        PrunePlan prefix = nested_plan(nested.config(), b.target, order.layer_ranking);
        CHECK(prefix.target.pattern() == pruned_plan.target.pattern());
        CHECK(count_parameters(prefix.target) == count_parameters(pruned_plan.target));
        // The prefix plan keeps the first units of every axis.
        for (size_t i = 0; i < prefix.hidden.size(); ++i) CHECK(prefix.hidden[i] == int64_t(i));
        NemotronH pruned = prune_in_memory(model, pruned_plan);
        NemotronH sliced = prune_in_memory(nested, prefix);
        const double err = test::max_abs_diff(test::logits_of(pruned, ids), test::logits_of(sliced, ids));
        INFO("max |logit difference| " << err);
        CHECK(err <= 1e-10);
        // The differentiable slice is the same model.
        NemotronH view = slice_model(nested, prefix);
        CHECK(test::max_abs_diff(test::logits_of(view, ids), test::logits_of(sliced, ids)) == 0);
      }
    }
  }
}

TEST_CASE("MoE: a prefix slice of the nested model equals the pruned original", "[pruning][elastic]") {
  for (const std::string name : {"moe_g1", "moe_grouped_latent"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& c = ck.config();
    auto model = NemotronH::load(ck, at::kCPU, at::kDouble);
    at::manual_seed(7);
    at::Tensor ids = at::randint(0, c.vocab_size, {2, 29}, at::kLong);
    for (int tied = 0; tied < 2; ++tied) {
      Scores scores = tied ? tied_scores(c, 44) : test::make_random_scores(c, 44);
      NestedOrder order = make_nested_order(c, scores);
      NemotronH nested = prune_in_memory(model, order.permutation);
      PruneTarget t;
      t.n_routed_experts = c.n_group == 1 ? c.n_routed_experts / 2 : 2 * c.n_group;  // grouped routing: 2 per group
      t.moe_intermediate_size = c.moe_intermediate_size / 2;
      t.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size / 2;
      t.hidden_size = c.hidden_size * 3 / 4;
      t.drop_count = 1;
      INFO(name << (tied ? " (tied scores)" : " (random scores)"));
      NemotronH pruned = prune_in_memory(model, make_plan(c, t, &scores));
      NemotronH sliced = prune_in_memory(nested, nested_plan(nested.config(), t, order.layer_ranking));
      const double err = test::max_abs_diff(test::logits_of(pruned, ids), test::logits_of(sliced, ids));
      INFO("max |logit difference| " << err);
      CHECK(err <= 1e-10);
    }
  }
}

TEST_CASE("a differentiable slice sends gradients to the shared weights, zero outside the budget", "[pruning][elastic]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g2_tied"));
  const ModelConfig& c = ck.config();
  auto nested = NemotronH::load(ck, at::kCPU, at::kDouble);
  REQUIRE(c.tie_word_embeddings);
  nested.parameters()["lm_head.weight"] = nested.parameters().at("backbone.embeddings.weight");  // one tensor
  nested.set_requires_grad(true);
  PruneTarget t;
  t.intermediate_size = c.intermediate_size / 2;
  t.hidden_size = c.hidden_size / 2;
  std::vector<int64_t> ranking;
  for (int64_t i = c.num_layers() - 1; i >= 0; --i) ranking.push_back(i);
  PrunePlan plan = nested_plan(c, t, ranking);
  NemotronH view = slice_model(nested, plan);
  at::manual_seed(2);
  at::Tensor ids = at::randint(0, c.vocab_size, {1, 9}, at::kLong);
  view.forward(ids).pow(2).mean().backward();
  // MLP up_proj: rows beyond the kept neurons and columns beyond the kept hidden channels get no gradient.
  int64_t mlp = -1;
  for (int64_t i = 0; i < c.num_layers(); ++i)
    if (c.layers[i] == LayerType::Mlp) mlp = i;
  at::Tensor g = nested.parameters().at("backbone.layers." + std::to_string(mlp) + ".mixer.up_proj.weight").grad();
  REQUIRE(g.defined());
  const int64_t F = c.intermediate_size / 2, H = c.hidden_size / 2;
  CHECK(g.narrow(0, 0, F).narrow(1, 0, H).abs().sum().item<double>() > 0);
  CHECK(g.narrow(0, F, c.intermediate_size - F).abs().sum().item<double>() == 0);
  CHECK(g.narrow(1, H, c.hidden_size - H).abs().sum().item<double>() == 0);
  // Tied embeddings stay one tensor in the slice.
  CHECK(view.parameters().at("lm_head.weight").is_same(view.parameters().at("backbone.embeddings.weight")));
}

TEST_CASE("budget sampling is deterministic per step, without replacement, and follows the weights", "[elastic]") {
  ElasticSampling s;
  s.schedule = "weighted";
  s.per_step = 1;
  s.weights = {1.0, 3.0};
  std::map<size_t, int> hits;
  for (int64_t step = 0; step < 4000; ++step) {
    auto a = sample_budgets(s, 2, 99, step);
    REQUIRE(a.size() == 1);
    CHECK(a == sample_budgets(s, 2, 99, step));
    hits[a[0]]++;
  }
  // Binomial(4000, 0.75): mean 3000, sd 27.
  CHECK(std::abs(hits[1] - 3000) < 150);
  s.schedule = "uniform";
  s.per_step = 2;
  s.weights = {1, 1, 1};
  for (int64_t step = 0; step < 50; ++step) {
    auto a = sample_budgets(s, 3, 1, step);
    REQUIRE(a.size() == 2);
    CHECK(a[0] < a[1]);
  }
  s.schedule = "all";
  CHECK(sample_budgets(s, 3, 1, 0) == std::vector<size_t>{0, 1, 2});
}

TEST_CASE("budgets files: forms and errors", "[elastic]") {
  ElasticBudgets b = load_budgets(R"({"budgets": {"small": {"ffn": 64, "drop_count": 1}, "full": {}},
                                      "sampling": {"schedule": "weighted", "per_step": 1,
                                                   "weights": {"small": 1, "full": 2}}})");
  REQUIRE(b.budgets.size() == 2);
  CHECK(b.sampling.weights.size() == 2);
  CHECK_THROWS_WITH(load_budgets(R"({"budgets": {"a": {"ffn": 1}}, "sampling": {"schedule": "weighted"}})"),
                    MP_CONTAINS("weights"));
  CHECK_THROWS_WITH(load_budgets(R"({"budgets": {"a": {"fnn": 1}}})"), MP_CONTAINS("fnn"));
  CHECK_THROWS_WITH(load_budgets(R"({"budgets": [{"name": "a"}, {"name": "a"}]})"),
                    MP_CONTAINS("repeated"));
  // A drop_count without a layer ranking is refused with the reason.
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  PruneTarget t;
  t.drop_count = 1;
  CHECK_THROWS_WITH(nested_plan(ck.config(), t, {}), MP_CONTAINS("layer ranking"));
}
