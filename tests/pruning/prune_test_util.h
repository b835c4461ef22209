// Shared helpers of the pruning tests: seeded random importance scores for a config (so every ranking is
// exercised without running the scorer), and logits without autograd.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <random>

#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"

namespace mp::test {

inline std::vector<double> random_scores(std::mt19937_64& rng, int64_t n) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

// Scores with every field the pruner reads, random but seeded; the fingerprint says which model they fit.
inline Scores make_random_scores(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Scores s;
  s.fingerprint = shape_fingerprint(c);
  s.pattern = c.pattern();
  s.hidden = random_scores(rng, c.hidden_size);
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    LayerScores l;
    l.index = i;
    l.type = c.layers[static_cast<size_t>(i)];
    l.depth.by_criterion["lm_loss_increase"] = random_scores(rng, 1)[0];
    l.depth.by_criterion["block_influence"] = random_scores(rng, 1)[0];
    if (l.type == LayerType::Mlp) l.mlp_neurons = random_scores(rng, c.intermediate_size);
    if (l.type == LayerType::Attention) {
      l.attn_heads = random_scores(rng, c.num_attention_heads);
      l.attn_kv_groups = random_scores(rng, c.num_key_value_heads);
    }
    if (l.type == LayerType::Mamba) {
      l.mamba.heads = random_scores(rng, c.mamba_num_heads);
      l.mamba.heads_out = random_scores(rng, c.mamba_num_heads);
      l.mamba.head_dim = random_scores(rng, c.mamba_head_dim);
      l.mamba.groups = random_scores(rng, c.n_groups);
      l.mamba.channels = random_scores(rng, c.mamba_d_inner());
    }
    if (l.type == LayerType::Moe) {
      l.moe.experts = random_scores(rng, c.n_routed_experts);
      l.moe.frequency = random_scores(rng, c.n_routed_experts);
      l.moe.expert_channels = random_scores(rng, c.n_routed_experts * c.moe_intermediate_size);
      l.moe.shared = random_scores(rng, c.moe_shared_expert_intermediate_size);
    }
    s.layers.push_back(l);
  }
  return s;
}

// float32 logits; float64 for a float64 model (whose forward runs in float64 throughout).
inline at::Tensor logits_of(const NemotronH& model, const at::Tensor& ids, const ForwardOptions& options = {}) {
  c10::AutoGradMode no_grad(false);
  if (model.dtype() == at::kDouble) return at::linear(model.forward_hidden(ids, options), model.lm_head_weight());
  return model.forward(ids, options);
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace mp::test
