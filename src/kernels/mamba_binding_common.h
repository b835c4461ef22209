// Internal to the Mamba-2 kernel bindings (causal_conv1d_binding.cpp, gated_rmsnorm_binding.cpp,
// ssd_scan_binding.cpp, relu2_binding.cpp): the few helpers every binding uses to check dtypes, cast gradients back
// and hand tensors to the raw CUDA launchers. Nothing op-specific lives here.
#pragma once
#include <ATen/ATen.h>

#include "minipuzzle/error.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/mamba_cuda_common.h"
#endif

namespace mp::kernels::binding {

[[maybe_unused]] inline bool is_f32_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

inline at::Tensor cast_like(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad.to(like.scalar_type()) : grad;
}

#ifdef MINIPUZZLE_WITH_CUDA
inline ElemType elem_type(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? ElemType::f32 : ElemType::bf16; }

// A gradient as a contiguous tensor the kernels read (float32 unless it already is bf16/f32).
inline at::Tensor kernel_grad(const at::Tensor& g) { return (is_f32_or_bf16(g) ? g : g.to(at::kFloat)).contiguous(); }

inline void check_cuda(cudaError_t err, const char* kernel, const at::Tensor& x, int blas_status = 0) {
  MP_CHECK(err == cudaSuccess, kernel, " CUDA launch failed: ", cudaGetErrorString(err), " (input ", x.sizes(), " ",
           x.scalar_type(), " on ", x.device(), "; last cuBLAS status ", blas_status, ", 0 = none failed)");
}
#endif

}  // namespace mp::kernels::binding
