// Raw launchers of Mamba-2's gated RMSNorm (gated_rmsnorm.cu). No torch here.
//
// Per row and per group of group_size = channels / groups channels (m = channel mask, 1 without one):
//   h_j   = y_j * silu(z_j) * m_j
//   r     = rsqrt(sum_j h_j^2 / kept + eps)      (kept: group_size, or the number of kept channels in the group)
//   out_j = w_j * h_j * r
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/mamba_cuda_common.h"

namespace mp::kernels {

struct GatedRmsNormParams {
  const void* y = nullptr;  // [rows, channels], row stride y_stride, unit channel stride
  int64_t y_stride = 0;
  ElemType y_type = ElemType::f32;
  const void* z = nullptr;  // [rows, channels], row stride z_stride
  int64_t z_stride = 0;
  ElemType z_type = ElemType::bf16;
  const void* weight = nullptr;  // [channels]
  ElemType w_type = ElemType::bf16;
  const float* mask = nullptr;   // [channels] 0/1 or null
  const float* kept = nullptr;   // [groups] kept channels per group (with a mask), or null
  int64_t rows = 0, channels = 0, groups = 1;
  float eps = 1e-5f;
};

// out: [rows, channels] contiguous of out_type.
cudaError_t gated_rms_norm_forward_launch(const GatedRmsNormParams& p, void* out, ElemType out_type,
                                          cudaStream_t stream);

// grad_out: [rows, channels] contiguous of grad_type. grad_y / grad_z: [rows, channels] contiguous of y_type /
// z_type. grad_weight_partial: float [row_tiles, channels] (summed over tiles by the binding);
// row_tiles = gated_rms_norm_backward_row_tiles(p).
int64_t gated_rms_norm_backward_row_tiles(const GatedRmsNormParams& p);
cudaError_t gated_rms_norm_backward_launch(const GatedRmsNormParams& p, const void* grad_out, ElemType grad_type,
                                           void* grad_y, void* grad_z, float* grad_weight_partial,
                                           cudaStream_t stream);

}  // namespace mp::kernels
