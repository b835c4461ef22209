// Shapes the benchmarks share: an 8B-class hybrid stack (Nemotron-H-8B layer widths).
#pragma once
#include <algorithm>

#include "minipuzzle/config.h"

namespace mp::bench {

// Nemotron-H-8B widths: hidden 4096, 128 Mamba heads x 64, state 128, 8 groups, attention 32 x 128 over 8 KV
// heads, FFN 21504, vocab 131072; `pattern` picks the layers (the 8B model is 24 M, 4 *, 24 -).
// `width_div` > 1 divides the widths and head counts (head dims, state and chunk kept) for CPU-sized runs.
inline ModelConfig nemotron_h_8b_layers(const std::string& pattern, int64_t width_div = 1) {
  const int64_t d = width_div;
  const int64_t groups = std::max<int64_t>(1, 8 / d);  // also the KV heads
  json j = {{"hybrid_override_pattern", pattern}, {"vocab_size", 131072 / d}, {"hidden_size", 4096 / d},
            {"intermediate_size", 21504 / d}, {"num_attention_heads", 32 / d}, {"num_key_value_heads", groups},
            {"head_dim", 128}, {"mamba_num_heads", 128 / d}, {"mamba_head_dim", 64}, {"n_groups", groups},
            {"ssm_state_size", 128}, {"conv_kernel", 4}, {"chunk_size", 128}, {"layer_norm_epsilon", 1e-5}};
  return ModelConfig::from_json(j, "8B-class benchmark shape");
}

// Forward FLOPs of `tokens` tokens in sequences of `seq_len` (stated formula, printed with every result):
//   2 x tokens x (parameters used in matrix products: projections, MLP, lm_head)
// + attention: 2 x 2 x heads x head_dim x seq_len^2 / 2 per sequence and attention layer (causal half)
// + SSD scan per Mamba layer and token: 2 x heads x (chunk x head_dim  +  2 x state x head_dim)
//   + 2 x groups x chunk x state  (C B^T within the chunk, M x, chunk states, C x state).
double forward_flops(const ModelConfig& c, int64_t batch, int64_t seq_len);

}  // namespace mp::bench
