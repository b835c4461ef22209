// Mamba-2 mixer: in_proj -> [z | x B C | dt], causal depthwise conv1d + SiLU over x B C, SSD scan, gated
// RMSNorm grouped by n_groups, out_proj. Follows transformers' NemotronHMamba2Mixer torch path, dtypes included.
#include <ATen/core/grad_mode.h>

#include <atomic>
#include <vector>

#include "minipuzzle/kernels.h"
#include "src/model/layers.h"

namespace mp::model {

namespace {
std::atomic<int64_t> g_scan_slice_bytes{int64_t(512) << 20};

using ScanFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, int64_t);

// `scan` over slices of samples and of heads within one group (a slice reads its group's B and C only), each
// small enough for scan_slice_bytes(); the results are written into one output (or concatenated when gradients
// flow through them). Same operations per head as one call: the slices change which heads share a GEMM batch only.
at::Tensor sliced_scan(ScanFn scan, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                       const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, int64_t Q) {
  const int64_t batch = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  const int64_t per_head_sample = ((T + Q - 1) / Q) * Q * ssd_aten_bytes_per_head_token(P, N, Q);
  const int64_t limit = scan_slice_bytes();
  if (batch * H * per_head_sample <= limit) return scan(x, dt, A, Bm, Cm, D, Q);
  const int64_t hpg = H / G;
  // Heads per slice: the largest divisor of the heads per group that fits (at least one head).
  int64_t heads = 1;
  for (int64_t d = hpg; d >= 1; --d)
    if (hpg % d == 0 && d * per_head_sample <= limit) {
      heads = d;
      break;
    }
  // Whole groups, and several samples, when a group fits.
  int64_t samples = 1;
  if (heads == hpg) {
    int64_t groups = 1;
    for (int64_t g = G; g >= 1; --g)
      if (G % g == 0 && g * hpg * per_head_sample <= limit) {
        groups = g;
        break;
      }
    heads = groups * hpg;
    if (groups == G) samples = std::max<int64_t>(1, limit / (H * per_head_sample));
  }
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || dt.requires_grad() || A.requires_grad() || Bm.requires_grad() ||
                     Cm.requires_grad() || D.requires_grad());
  at::Tensor out;
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < batch; b += samples) {
    const int64_t nb = std::min(samples, batch - b);
    std::vector<at::Tensor> cols;
    for (int64_t h0 = 0; h0 < H; h0 += heads) {
      const int64_t g0 = h0 / hpg, ng = std::max<int64_t>(1, heads / hpg);
      auto part = [&](const at::Tensor& t, int64_t dim, int64_t start, int64_t n) {
        return t.narrow(0, b, nb).narrow(dim, start, n).contiguous();
      };
      at::Tensor y = scan(part(x, 2, h0, heads), part(dt, 2, h0, heads), A.narrow(0, h0, heads).contiguous(),
                          part(Bm, 2, g0, ng), part(Cm, 2, g0, ng), D.narrow(0, h0, heads).contiguous(), Q);
      if (grad) {
        cols.push_back(y);
        continue;
      }
      if (!out.defined()) out = at::empty({batch, T, H, P}, y.options());
      out.narrow(0, b, nb).narrow(2, h0, heads).copy_(y);
    }
    if (grad) rows.push_back(at::cat(cols, 2));
  }
  return grad ? at::cat(rows, 0) : out;
}
}  // namespace

int64_t ssd_aten_bytes_per_head_token(int64_t head_dim, int64_t state, int64_t chunk) {
  return 4 * (10 * head_dim + 3 * state + 5 * chunk);
}
int64_t scan_slice_bytes() { return g_scan_slice_bytes.load(); }
void set_scan_slice_bytes(int64_t bytes) { g_scan_slice_bytes.store(std::max<int64_t>(1, bytes)); }

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

  // As transformers' torch_forward: A = -exp(A_log) in float32 (float64 for a float64 model), softplus(dt + dt_bias)
  // in the model dtype (the scan reads dt in float32).
  at::Tensor A = -at::exp(p.get("A_log").to(statistics_type(h.scalar_type())));
  dt = at::softplus(dt + p.get("dt_bias").to(dt.scalar_type()));
  // transformers clamps dt to [time_step_min, inf), not to config.time_step_limit.
  dt = at::clamp_min(dt, c.time_step_min);

  const bool use_kernel_op = fused(kernels::MambaOp::ssd);
  ScanFn scan = use_kernel_op ? &kernels::ssd_scan : &ssd_chunk_scan;
  // The CUDA kernel's own buffers are bf16 and a few float32 [B,T,H,P]; every other path is ATen's (see layers.h).
  const bool cuda_kernel = use_kernel_op && x.is_cuda() && x.scalar_type() == at::kBFloat16 &&
                           kernels::ssd_scan_cuda_supported(H, P, G, c.chunk_size);
  at::Tensor xs = x.reshape({batch, T, H, P}), Bs = Bm.reshape({batch, T, G, N}), Cs = Cm.reshape({batch, T, G, N});
  at::Tensor y = (cuda_kernel ? scan(xs, dt, A, Bs, Cs, p.get("D"), c.chunk_size)
                              : sliced_scan(scan, xs, dt, A, Bs, Cs, p.get("D"), c.chunk_size))
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
