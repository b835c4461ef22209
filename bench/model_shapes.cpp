#include "bench/model_shapes.h"

#include "minipuzzle/checkpoint.h"

namespace mp::bench {

double forward_flops(const ModelConfig& c, int64_t batch, int64_t seq_len) {
  const double tokens = double(batch) * seq_len;
  double matmul_params = 0;
  for (auto& s : expected_tensors(c)) {
    if (s.shape.size() != 2 || s.name.find("embeddings") != std::string::npos) continue;
    matmul_params += double(s.shape[0]) * s.shape[1];
  }
  double flops = 2.0 * tokens * matmul_params;
  flops += c.count(LayerType::Attention) * batch * 2.0 * 2.0 * c.num_attention_heads * c.head_dim *
           double(seq_len) * seq_len / 2.0;
  const double Q = double(c.chunk_size), N = double(c.ssm_state_size), P = double(c.mamba_head_dim);
  flops += c.count(LayerType::Mamba) * tokens *
           (2.0 * c.mamba_num_heads * (Q * P + 2.0 * N * P) + 2.0 * c.n_groups * Q * N);
  return flops;
}

}  // namespace mp::bench
