// Raw launchers of the causal depthwise conv1d + SiLU kernels (causal_conv1d.cu). No torch: pointers, sizes and a
// stream; causal_conv1d_binding.cpp checks shapes and dtypes.
//
//   u[b,t,c]   = bias[c] + sum_{k<K} w[c,k] * x[b, t-(K-1)+k, c]     (x = 0 before t = 0)
//   out[b,t,c] = silu(u[b,t,c])
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/mamba_cuda_common.h"

namespace mp::kernels {

struct CausalConv1dParams {
  const void* x = nullptr;   // [batch, seqlen, channels]: channel stride 1, time stride x_stride_t, batch x_stride_b
  int64_t x_stride_b = 0, x_stride_t = 0;
  ElemType x_type = ElemType::bf16;
  const void* weight = nullptr;  // [channels, K] contiguous
  const void* bias = nullptr;    // [channels] or null
  ElemType w_type = ElemType::bf16;  // of weight and bias
  int64_t batch = 0, seqlen = 0, channels = 0, kernel_size = 0;  // kernel_size 1..8
};

// out: [batch, seqlen, channels] contiguous, of type out_type.
cudaError_t causal_conv1d_silu_forward_launch(const CausalConv1dParams& p, void* out, ElemType out_type,
                                              cudaStream_t stream);

// grad_out: [batch, seqlen, channels] contiguous (gradient of the SiLU output), of type grad_type.
// grad_x: [batch, seqlen, channels] contiguous of type x_type (written).
// grad_weight_partial: float [tiles, channels, K] and grad_bias_partial float [tiles, channels] (written; the
// binding sums over tiles, which keeps the result deterministic). tiles = causal_conv1d_backward_tiles(p).
int64_t causal_conv1d_backward_tiles(const CausalConv1dParams& p);
cudaError_t causal_conv1d_silu_backward_launch(const CausalConv1dParams& p, const void* grad_out, ElemType grad_type,
                                               void* grad_x, float* grad_weight_partial, float* grad_bias_partial,
                                               cudaStream_t stream);

}  // namespace mp::kernels
