// Parameter counts and the inference memory model. Every term is a closed form of the shape and the serving
// setup, documented term by term in search/MEMORY_MODEL.md; the comments below name the tensors counted.
#include <algorithm>
#include <cmath>

#include "minipuzzle/error.h"
#include "minipuzzle/search.h"

namespace mp::search {

constexpr int64_t kMaxContextTokens = int64_t(1) << 40;
constexpr int64_t kMaxBatch = int64_t(1) << 24;

Shape Shape::of(const ModelConfig& c) {
  Shape s;
  s.vocab = c.vocab_size;
  s.hidden = c.hidden_size;
  s.ffn = c.intermediate_size;
  s.n_mamba = c.count(LayerType::Mamba);
  s.n_attention = c.count(LayerType::Attention);
  s.n_mlp = c.count(LayerType::Mlp);
  s.n_moe = c.count(LayerType::Moe);
  if (s.n_moe) {
    s.experts = c.n_routed_experts;
    s.experts_per_token = c.num_experts_per_tok;
    s.expert_ffn = c.moe_intermediate_size;
    s.shared_ffn = c.moe_shared_expert_intermediate_size;
    s.moe_latent = c.moe_latent_size;
  }
  s.attention_heads = c.num_attention_heads;
  s.kv_heads = c.num_key_value_heads;
  s.head_dim = c.head_dim;
  s.mamba_heads = c.mamba_num_heads;
  s.mamba_head_dim = c.mamba_head_dim;
  s.n_groups = c.n_groups;
  s.state = c.ssm_state_size;
  s.conv_kernel = c.conv_kernel;
  s.chunk_size = c.chunk_size;
  s.tied_embeddings = c.tie_word_embeddings;
  s.conv_bias = c.use_conv_bias;
  s.mamba_bias = c.use_bias;
  s.mlp_bias = c.mlp_bias;
  return s;
}

// Mamba-2 mixer: in_proj (H -> z, x, B, C, dt), depthwise conv1d over x|B|C (weight + optional bias),
// A_log, D and dt_bias per head, the gated RMSNorm weight over d_inner, out_proj (d_inner -> H).
int64_t mamba_layer_params(const Shape& s) {
  const int64_t in_dim = 2 * s.d_inner() + 2 * s.n_groups * s.state + s.mamba_heads;
  int64_t p = s.hidden * in_dim + (s.mamba_bias ? in_dim : 0);
  p += s.conv_dim() * s.conv_kernel + (s.conv_bias ? s.conv_dim() : 0);
  p += 3 * s.mamba_heads + s.d_inner();
  p += s.d_inner() * s.hidden + (s.mamba_bias ? s.hidden : 0);
  return p;
}

// Attention: q_proj (H -> heads*hd), k_proj and v_proj (H -> kv*hd), o_proj (heads*hd -> H); no biases.
int64_t attention_layer_params(const Shape& s) {
  return s.hidden * s.attention_heads * s.head_dim * 2 + s.hidden * s.kv_heads * s.head_dim * 2;
}

// MLP (relu^2, no gate): up_proj (H -> F) and down_proj (F -> H), biases when mlp_bias.
int64_t mlp_layer_params(const Shape& s) { return 2 * s.hidden * s.ffn + (s.mlp_bias ? s.ffn + s.hidden : 0); }

// MoE: each routed expert is a relu^2 MLP on the latent (or hidden) channels without biases; the router has an
// [E, H] weight and an E-entry correction bias; the shared expert is an MLP of shared_ffn; the latent projections
// (H -> latent -> H) carry biases when mlp_bias.
int64_t moe_expert_params(const Shape& s) { return 2 * (s.moe_latent > 0 ? s.moe_latent : s.hidden) * s.expert_ffn; }
static int64_t moe_layer_fixed_params(const Shape& s) {
  int64_t p = s.experts * s.hidden + s.experts;                                    // router
  p += 2 * s.hidden * s.shared_ffn + (s.mlp_bias ? s.shared_ffn + s.hidden : 0);  // shared expert
  if (s.moe_latent > 0) p += 2 * s.hidden * s.moe_latent + (s.mlp_bias ? s.moe_latent + s.hidden : 0);
  return p;
}
int64_t moe_layer_params(const Shape& s) { return moe_layer_fixed_params(s) + s.experts * moe_expert_params(s); }
int64_t moe_layer_active_params(const Shape& s) {
  return moe_layer_fixed_params(s) + s.experts_per_token * moe_expert_params(s);
}
double moe_experts_touched(const Shape& s, double tokens) {
  if (s.experts <= 0) return 0.0;
  const double E = static_cast<double>(s.experts), k = static_cast<double>(s.experts_per_token);
  return E * (1.0 - std::pow(1.0 - k / E, std::max(tokens, 0.0)));
}

ParamCounts count_params(const Shape& s) {
  ParamCounts p;
  p.embeddings = s.vocab * s.hidden;
  p.lm_head = s.tied_embeddings ? 0 : s.vocab * s.hidden;
  p.final_norm = s.hidden;
  p.layer_norms = s.layers() * s.hidden;  // one pre-mixer RMSNorm weight per layer
  p.mamba = s.n_mamba * mamba_layer_params(s);
  p.attention = s.n_attention * attention_layer_params(s);
  p.mlp = s.n_mlp * mlp_layer_params(s);
  if (s.n_moe) {
    p.moe = s.n_moe * moe_layer_params(s);
    p.moe_active = s.n_moe * moe_layer_active_params(s);
    p.moe_routed = s.n_moe * s.experts * moe_expert_params(s);
  }
  return p;
}

json ParamCounts::to_json() const {
  json j = {{"total", total()},       {"embeddings", embeddings}, {"lm_head", lm_head},
          {"final_norm", final_norm}, {"layer_norms", layer_norms}, {"mamba", mamba},
          {"attention", attention},   {"mlp", mlp}};
  if (moe) {
    j["moe"] = moe;
    j["moe_active"] = moe_active;
    j["active"] = active();
  }
  return j;
}

json InferenceSetup::to_json() const {
  return {{"context", context},
          {"batch", batch},
          {"weights_dtype", dtype_name(weights)},
          {"kv_cache_dtype", dtype_name(kv_cache)},
          {"conv_state_dtype", dtype_name(conv_state)},
          {"ssm_state_dtype", dtype_name(ssm_state)},
          {"activations_dtype", dtype_name(activations)},
          {"prefill_chunk", prefill_chunk},
          {"runtime_margin_gib", runtime_margin_bytes / kGiB}};
}

double prefill_activation_bytes(const Shape& s, int64_t tokens_per_seq, int64_t batch, DType activations) {
  if (tokens_per_seq <= 0) return 0.0;
  const double a = dtype_bytes(activations);
  const double T = static_cast<double>(tokens_per_seq) * static_cast<double>(batch);
  // Always live across a layer: the fp32 residual stream and the normed layer input.
  const double base = T * static_cast<double>(s.hidden) * (4.0 + a);
  double peak_layer = 0;
  if (s.n_mamba) {
    const double in_dim = static_cast<double>(2 * s.d_inner() + 2 * s.n_groups * s.state + s.mamba_heads);
    const double chunks = std::ceil(static_cast<double>(tokens_per_seq) / static_cast<double>(s.chunk_size));
    // in_proj output, conv1d output over x|B|C, fp32 chunk states of the SSD scan, y and the gated-norm output.
    double m = T * in_dim * a + T * static_cast<double>(s.conv_dim()) * a +
               chunks * static_cast<double>(batch) * static_cast<double>(s.mamba_heads) *
                   static_cast<double>(s.mamba_head_dim) * static_cast<double>(s.state) * 4.0 +
               2.0 * T * static_cast<double>(s.d_inner()) * a;
    peak_layer = std::max(peak_layer, m);
  }
  if (s.n_attention) {
    // q, k, v and the attention output; a fused (flash) kernel never materialises the score matrix.
    double q = T * static_cast<double>((s.attention_heads + 2 * s.kv_heads) * s.head_dim) * a +
               T * static_cast<double>(s.attention_heads * s.head_dim) * a;
    peak_layer = std::max(peak_layer, q);
  }
  if (s.n_mlp) peak_layer = std::max(peak_layer, 2.0 * T * static_cast<double>(s.ffn) * a);  // up and relu^2
  if (s.n_moe) {
    // The k routed slots per token: gathered inputs, the experts' up output and relu^2, their outputs; the fp32
    // sum of the routed outputs. The shared expert runs after them (up and relu^2).
    const double in = static_cast<double>(s.moe_latent > 0 ? s.moe_latent : s.hidden);
    const double slots = T * static_cast<double>(s.experts_per_token);
    const double routed = slots * (2.0 * in + 2.0 * static_cast<double>(s.expert_ffn)) * a + T * in * 4.0;
    peak_layer = std::max({peak_layer, routed, 2.0 * T * static_cast<double>(s.shared_ffn) * a});
  }
  // Logits of the last position of each sequence, in fp32.
  peak_layer = std::max(peak_layer, static_cast<double>(batch) * static_cast<double>(s.vocab) * 4.0);
  return base + peak_layer;
}

MemoryBreakdown estimate_memory(const Shape& s, const InferenceSetup& u) {
  MP_CHECK(u.context > 0 && u.batch > 0, "memory model: context and batch must be positive (found ", u.context,
           " and ", u.batch, ")");
  // Beyond these, token and byte counts (batch x context x widths) leave the range where the arithmetic here
  // and in the roofline is exact (int64 products overflow); no device holds such a cache, so say so instead of
  // ranking wrapped-around numbers.
  MP_CHECK(u.context <= kMaxContextTokens, "memory model: context ", u.context, " tokens exceeds the supported ",
           kMaxContextTokens, " (2^40); byte counts would overflow");
  MP_CHECK(u.batch <= kMaxBatch, "memory model: batch ", u.batch, " exceeds the supported ", kMaxBatch,
           " (2^24 sequences); byte counts would overflow");
  MemoryBreakdown m;
  const double B = static_cast<double>(u.batch), L = static_cast<double>(u.context);
  m.weights = static_cast<double>(count_params(s).total()) * dtype_bytes(u.weights);
  // K and V for every attention layer, sequence and position.
  m.kv_cache = static_cast<double>(s.n_attention) * 2.0 * B * L * static_cast<double>(s.kv_heads * s.head_dim) *
               dtype_bytes(u.kv_cache);
  // The last (d_conv - 1) inputs of the depthwise conv over x|B|C, per Mamba layer and sequence.
  m.conv_state = static_cast<double>(s.n_mamba) * B * static_cast<double>((s.conv_kernel - 1) * s.conv_dim()) *
                 dtype_bytes(u.conv_state);
  // The SSM state h: heads x head_dim x state per Mamba layer and sequence.
  m.ssm_state = static_cast<double>(s.n_mamba) * B *
                static_cast<double>(s.mamba_heads * s.mamba_head_dim * s.state) * dtype_bytes(u.ssm_state);
  m.activations = prefill_activation_bytes(s, std::min(u.prefill_chunk, u.context), u.batch, u.activations);
  m.runtime_margin = u.runtime_margin_bytes;
  return m;
}

json MemoryBreakdown::to_json() const {
  auto term = [](double bytes) { return json{{"bytes", bytes}, {"gib", bytes / kGiB}}; };
  return {{"weights", term(weights)},         {"kv_cache", term(kv_cache)},
          {"conv_state", term(conv_state)},   {"ssm_state", term(ssm_state)},
          {"activations", term(activations)}, {"runtime_margin", term(runtime_margin)},
          {"total", term(total())}};
}

}  // namespace mp::search
