// ATen binding of the routed experts' grouped GEMM (moe_grouped_gemm.cu): shape and dtype checks, the pointer and
// offset table sent to the device in one copy, and the per-expert ATen loop that is both the CPU path and the
// reference the GPU test compares the kernel with.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cstring>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/moe_grouped_gemm_cuda.h"
#endif

namespace mp::kernels {
namespace {

void check_inputs(const at::Tensor& x, const std::vector<at::Tensor>& weights, const std::vector<int64_t>& counts,
                  const at::Tensor& row_scale) {
  MP_CHECK(x.dim() == 2, "moe_grouped_linear: x must be [rows, k], found ", x.sizes());
  MP_CHECK(!weights.empty() && weights.size() == counts.size(), "moe_grouped_linear: ", weights.size(),
           " expert weights for ", counts.size(), " expert row counts");
  int64_t rows = 0;
  for (int64_t c : counts) {
    MP_CHECK(c >= 0, "moe_grouped_linear: negative row count ", c);
    rows += c;
  }
  MP_CHECK(rows == x.size(0), "moe_grouped_linear: the row counts sum to ", rows, " but x has ", x.size(0), " rows");
  const int64_t n = weights[0].dim() == 2 ? weights[0].size(0) : -1;
  for (size_t e = 0; e < weights.size(); ++e) {
    const at::Tensor& w = weights[e];
    MP_CHECK(w.dim() == 2 && w.size(0) == n && w.size(1) == x.size(1), "moe_grouped_linear: expert ", e,
             " weight has shape ", w.sizes(), ", expected [", n, ", ", x.size(1), "]");
    MP_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(), "moe_grouped_linear: expert ", e,
             " weight is ", w.scalar_type(), " on ", w.device(), ", x is ", x.scalar_type(), " on ", x.device());
  }
  if (row_scale.defined())
    MP_CHECK(row_scale.dim() == 1 && row_scale.size(0) == x.size(0) && row_scale.device() == x.device(),
             "moe_grouped_linear: row_scale must be [", x.size(0), "] on ", x.device(), ", found ", row_scale.sizes(),
             " on ", row_scale.device());
}

}  // namespace

at::Tensor moe_grouped_linear_reference(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                        const std::vector<int64_t>& counts, const at::Tensor& row_scale, bool relu2) {
  check_inputs(x, weights, counts, row_scale);
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (size_t e = 0; e < weights.size(); ++e) {
    const int64_t n = counts[e];
    if (n == 0) continue;
    at::Tensor y = at::linear(x.narrow(0, offset, n), weights[e]);
    if (relu2) {
      y = at::relu(y);
      y = y * y;
    }
    // The scale in float32 at least (the kernel's epilogue), float64 for float64 inputs.
    if (row_scale.defined())
      y = (y.to(at::promote_types(y.scalar_type(), at::kFloat)) * row_scale.narrow(0, offset, n).unsqueeze(1))
              .to(x.scalar_type());
    parts.push_back(y);
    offset += n;
  }
  if (parts.empty()) return at::empty({0, weights[0].size(0)}, x.options());
  return at::cat(parts, 0);
}

bool moe_grouped_linear_uses_cuda(const at::Tensor& x) {
#ifdef MINIPUZZLE_WITH_CUDA
  return x.is_cuda() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
#else
  (void)x;
  return false;
#endif
}

at::Tensor moe_grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                              const std::vector<int64_t>& counts, const at::Tensor& row_scale, bool relu2) {
  if (!moe_grouped_linear_uses_cuda(x)) return moe_grouped_linear_reference(x, weights, counts, row_scale, relu2);
#ifdef MINIPUZZLE_WITH_CUDA
  check_inputs(x, weights, counts, row_scale);
  bool needs_grad = x.requires_grad();
  for (auto& w : weights) needs_grad = needs_grad || w.requires_grad();
  MP_CHECK(!(at::GradMode::is_enabled() && needs_grad),
           "moe_grouped_linear: the CUDA grouped GEMM is forward-only; run it under no_grad (the MoE layer uses the "
           "per-expert path when gradients are needed)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = static_cast<int64_t>(weights.size()), rows = x.size(0), k = x.size(1), n = weights[0].size(0);
  const at::Tensor xc = x.contiguous();
  std::vector<at::Tensor> wc(weights.size());
  // One host table (E weight pointers, E + 1 row offsets), pinned, copied to the device in one transfer on the
  // current stream; the caching host allocator keeps it until the copy has run.
  at::Tensor table = at::empty({2 * E + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* t = table.data_ptr<int64_t>();
  bool aligned = true;
  for (int64_t e = 0; e < E; ++e) {
    wc[e] = weights[e].contiguous();
    const auto ptr = reinterpret_cast<uintptr_t>(wc[e].data_ptr());
    aligned = aligned && ptr % 16 == 0;
    std::memcpy(&t[e], &ptr, sizeof(int64_t));
  }
  t[E] = 0;
  for (int64_t e = 0; e < E; ++e) t[E + 1 + e] = t[E + e] + counts[e];
  const at::Tensor device_table = table.to(x.device(), /*non_blocking=*/true);
  const at::Tensor scale = row_scale.defined() ? row_scale.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor y = at::empty({rows, n}, x.options());
  const int64_t* dt = device_table.data_ptr<int64_t>();
  const cudaError_t err = moe_grouped_gemm_launch(
      xc.data_ptr(), reinterpret_cast<const void* const*>(dt), dt + E, E, rows, n, k,
      scale.defined() ? scale.data_ptr<float>() : nullptr, relu2, y.data_ptr(),
      x.scalar_type() == at::kFloat ? ElemType::f32 : ElemType::bf16, aligned, at::cuda::getCurrentCUDAStream());
  MP_CHECK(err == cudaSuccess, "moe_grouped_linear: CUDA launch failed: ", cudaGetErrorString(err), " (", E,
           " experts, ", rows, " rows, [", n, ", ", k, "] weights, ", x.scalar_type(), ")");
  return y;
#else
  return {};
#endif
}

}  // namespace mp::kernels
