// Grouped-query attention, causal, no positional embedding (Nemotron-H's attention layers carry no RoPE).
#include <cmath>

#include "src/model/layers.h"

namespace mp::model {

at::Tensor attention_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h) {
  const ModelConfig& c = ctx.config;
  const int64_t batch = h.size(0), T = h.size(1);
  const int64_t heads = c.num_attention_heads, kv = c.num_key_value_heads, d = c.head_dim;
  at::Tensor q = at::linear(h, p.get("q_proj.weight")).view({batch, T, heads, d}).transpose(1, 2);
  at::Tensor k = at::linear(h, p.get("k_proj.weight")).view({batch, T, kv, d}).transpose(1, 2);
  at::Tensor v = at::linear(h, p.get("v_proj.weight")).view({batch, T, kv, d}).transpose(1, 2);
  if (kv != heads) {  // each KV head serves heads/kv consecutive query heads
    k = k.repeat_interleave(heads / kv, 1);
    v = v.repeat_interleave(heads / kv, 1);
  }
  at::Tensor o = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                  /*is_causal=*/T > 1, /*scale=*/1.0 / std::sqrt(double(d)));
  o = o.transpose(1, 2);  // [B,T,heads,d]
  if (ctx.mask && ctx.mask->attn_heads.defined()) o = o * ctx.mask->attn_heads.to(o.scalar_type()).view({1, 1, heads, 1});
  o = o.reshape({batch, T, heads * d});
  ctx.tap(Tap::AttnHeads, o);
  return at::linear(o, p.get("o_proj.weight"));
}

}  // namespace mp::model
