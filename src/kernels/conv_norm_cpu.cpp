// ATen twins of causal_conv1d.cu and gated_rmsnorm.cu: the forward as the model computes it and the hand-derived
// backward the kernels implement (float32 math), checked on CPU against autograd through the model's functions.
#include "kernels/mamba_internal.h"

namespace mp::kernels::detail {

// ---- causal depthwise conv1d + SiLU ----------------------------------------------------------------------------

at::Tensor conv1d_silu_forward_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t T = x.size(1), C = x.size(2), K = weight.size(-1);
  const at::Tensor w = weight.reshape({C, 1, K});
  const at::Tensor conv = at::conv1d(x.transpose(1, 2).to(w.scalar_type()), w, bias, /*stride=*/1,
                                     /*padding=*/K - 1, /*dilation=*/1, /*groups=*/C);
  return at::silu(conv.narrow(-1, 0, T)).to(x.scalar_type()).transpose(1, 2).contiguous();
}

Conv1dGrads conv1d_silu_backward_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& grad_out) {
  const int64_t T = x.size(1), C = x.size(2), K = weight.size(-1);
  const at::Tensor xt = x.to(at::kFloat).transpose(1, 2);  // [B,C,T]
  const at::Tensor w = weight.to(at::kFloat).reshape({C, 1, K});
  const at::Tensor b = bias.defined() ? bias.to(at::kFloat) : at::Tensor();
  const at::Tensor u = at::conv1d(xt, w, b, 1, K - 1, 1, C).narrow(-1, 0, T);
  const at::Tensor sig = at::sigmoid(u);
  const at::Tensor g = grad_out.to(at::kFloat).transpose(1, 2) * sig * (1 + u * (1 - sig));  // dL/du [B,C,T]
  // dx[t] = sum_k w[k] g[t+K-1-k]: a correlation of g (zero-padded on the right) with the flipped kernel.
  const at::Tensor dx = at::conv1d(at::constant_pad_nd(g, {0, K - 1}), w.flip(-1), at::Tensor(),
                                   at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, C);
  // dw[k] = sum_t g[t] x[t-(K-1)+k].
  const at::Tensor xp = at::constant_pad_nd(xt, {K - 1, 0});
  std::vector<at::Tensor> dw;
  for (int64_t k = 0; k < K; ++k) dw.push_back((g * xp.narrow(-1, k, T)).sum(at::IntArrayRef{0, 2}));
  Conv1dGrads grads;
  grads.dx = dx.transpose(1, 2).to(x.scalar_type()).contiguous();
  grads.dweight = at::stack(dw, 1);  // [C,K]
  grads.dbias = g.sum(at::IntArrayRef{0, 2});
  return grads;
}

// ---- gated RMSNorm ---------------------------------------------------------------------------------------------

namespace {

// h * mask grouped as [R, G, C/G], and the kept channel count per group ([G,1], or the group size).
struct GroupedGate {
  at::Tensor hm, kept, mask;
};

GroupedGate grouped_gate(const at::Tensor& y, const at::Tensor& z, int64_t groups, const at::Tensor& mask) {
  const int64_t R = y.size(0), C = y.size(1), gs = C / groups;
  GroupedGate gg;
  gg.hm = (y.to(at::kFloat) * at::silu(z.to(at::kFloat))).view({R, groups, gs});
  if (mask.defined()) {
    gg.mask = mask.to(at::kFloat).view({groups, gs});
    gg.hm = gg.hm * gg.mask;
    gg.kept = gg.mask.sum(-1, true).clamp_min(1.0);  // [G,1]
  } else {
    gg.kept = at::full({groups, 1}, double(gs), gg.hm.options());
  }
  return gg;
}

}  // namespace

at::Tensor gated_norm_forward_aten(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t groups,
                                   double eps, const at::Tensor& mask, at::ScalarType out_dtype) {
  const GroupedGate gg = grouped_gate(y, z, groups, mask);
  const at::Tensor r = at::rsqrt(gg.hm.pow(2).sum(-1, true) / gg.kept + eps);
  return (weight.to(at::kFloat) * (gg.hm * r).view(y.sizes())).to(out_dtype);
}

GatedNormGrads gated_norm_backward_aten(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                        int64_t groups, double eps, const at::Tensor& mask,
                                        const at::Tensor& grad_out) {
  const int64_t R = y.size(0), C = y.size(1), gs = C / groups;
  const GroupedGate gg = grouped_gate(y, z, groups, mask);
  const at::Tensor r = at::rsqrt(gg.hm.pow(2).sum(-1, true) / gg.kept + eps);  // [R,G,1]
  const at::Tensor go = grad_out.to(at::kFloat).view({R, groups, gs});
  const at::Tensor wf = weight.to(at::kFloat).view({groups, gs});
  // out = w hm r, r = (sum hm^2 / kept + eps)^(-1/2): dhm = dout w r - r^3 hm sum(dout w hm) / kept.
  const at::Tensor s2 = (go * wf * gg.hm).sum(-1, true);
  at::Tensor dh = go * wf * r - r.pow(3) * gg.hm * s2 / gg.kept;
  if (gg.mask.defined()) dh = dh * gg.mask;
  dh = dh.view({R, C});
  const at::Tensor zf = z.to(at::kFloat), yf = y.to(at::kFloat), sig = at::sigmoid(zf);
  GatedNormGrads grads;
  grads.dy = dh * zf * sig;
  grads.dz = dh * yf * sig * (1 + zf * (1 - sig));
  grads.dweight = (go * gg.hm * r).sum(0).view({C});
  return grads;
}

}  // namespace mp::kernels::detail
