// Mamba-2 mixer: in_proj -> [z | x B C | dt], causal depthwise conv1d + SiLU over x B C, SSD scan, gated
// RMSNorm grouped by n_groups, out_proj. Follows transformers' NemotronHMamba2Mixer torch path, dtypes included.
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"

namespace mp::model {

at::Tensor mamba2_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h) {
  const ModelConfig& c = ctx.config;
  const int64_t batch = h.size(0), T = h.size(1);
  const int64_t H = c.mamba_num_heads, P = c.mamba_head_dim, G = c.n_groups, N = c.ssm_state_size;
  const int64_t d_inner = c.mamba_d_inner(), conv_dim = c.mamba_conv_dim();
  auto fused = [&](kernels::MambaOp op) { return kernels::model_uses_kernel(op, h); };  // CUDA: kernels.h

  at::Tensor proj = at::linear(h, p.get("in_proj.weight"), p.optional("in_proj.bias"));
  // One split (its backward is one concatenation) rather than three narrows (three zero-filled full-width grads).
  const std::vector<at::Tensor> parts = at::split_with_sizes(proj, {d_inner, conv_dim, H}, -1);
  at::Tensor z = parts[0], xBC = parts[1], dt = parts[2];
  if (ctx.wants(Tap::MambaX)) {
    at::Tensor x_in = xBC.narrow(-1, 0, d_inner);
    // With gradients on (score --taylor), the tapped x must be what the conv reads, or backward never reaches it
    // (a narrow taken aside is a leaf of nothing): x is joined back into xBC, one copy, only on that path.
    if (xBC.requires_grad()) xBC = at::cat({x_in, xBC.narrow(-1, d_inner, conv_dim - d_inner)}, -1);
    ctx.tap(Tap::MambaX, x_in);
  }

  at::Tensor conv_w = p.get("conv1d.weight");  // [conv_dim, 1, K]
  if (fused(kernels::MambaOp::conv)) {
    xBC = kernels::causal_conv1d_silu(xBC, conv_w, p.optional("conv1d.bias"));
  } else {
    at::Tensor conv = at::conv1d(xBC.transpose(1, 2).to(conv_w.scalar_type()), conv_w, p.optional("conv1d.bias"),
                                 /*stride=*/1, /*padding=*/c.conv_kernel - 1, /*dilation=*/1, /*groups=*/conv_dim);
    xBC = at::silu(conv.narrow(-1, 0, T)).to(h.scalar_type()).transpose(1, 2);
  }
  at::Tensor x = xBC.narrow(-1, 0, d_inner);
  at::Tensor Bm = xBC.narrow(-1, d_inner, G * N);
  at::Tensor Cm = xBC.narrow(-1, d_inner + G * N, G * N);

  // exp and softplus over rows of `heads` elements: float64 on CPU, rounded once (width_stable_type, layers.h).
  const at::ScalarType stat = statistics_type(h.scalar_type());
  at::Tensor A = -at::exp(p.get("A_log").to(width_stable_type(h, stat))).to(stat);
  dt = dt + p.get("dt_bias").to(dt.scalar_type());
  dt = at::softplus(dt.to(width_stable_type(dt, dt.scalar_type()))).to(dt.scalar_type());
  // transformers clamps dt to [time_step_min, inf), not to config.time_step_limit.
  dt = at::clamp_min(dt, c.time_step_min);

  auto scan = fused(kernels::MambaOp::ssd) ? kernels::ssd_scan : ssd_chunk_scan;
  at::Tensor y = scan(x.reshape({batch, T, H, P}), dt, A, Bm.reshape({batch, T, G, N}), Cm.reshape({batch, T, G, N}),
                      p.get("D"), c.chunk_size)
                     .reshape({batch, T, d_inner});
  at::Tensor channel_mask = ctx.mask ? ctx.mask->mamba_channels : at::Tensor();
  if (channel_mask.defined()) y = y * channel_mask.to(y.scalar_type());
  at::Tensor normed =
      fused(kernels::MambaOp::norm)
          ? kernels::gated_rms_norm(y, z, p.get("norm.weight"), G, c.layer_norm_epsilon, channel_mask,
                                    ctx.wants(Tap::MambaY) ? c10::nullopt : c10::make_optional(h.scalar_type()))
          : gated_rms_norm(y, z, p.get("norm.weight"), G, c.layer_norm_epsilon, channel_mask);
  ctx.tap(Tap::MambaY, normed);
  return at::linear(normed.to(h.scalar_type()), p.get("out_proj.weight"), p.optional("out_proj.bias"));
}

}  // namespace mp::model
