// Causal depthwise conv1d + SiLU (Mamba-2's short convolution over x, B, C), forward and backward.
//
// One thread owns one channel over a tile of time steps and slides a register window of the last K inputs along
// time, so each input is read once per tile; consecutive threads hold consecutive channels, so every load is
// coalesced across the warp. The backward recomputes the pre-activation u from the same window, forms
// g = dout * silu'(u) and keeps the last K values of g to produce dx (the transposed convolution), while dw and
// dbias accumulate per thread over its own tile and are written as per-tile partial sums (summed by the binding:
// deterministic, no atomics).
#include "kernels/causal_conv1d_cuda.h"
#include "kernels/mamba_cuda_common.cuh"

namespace mp::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kTile = 64;  // time steps per thread

struct Tiling {
  int64_t per_seq, tile_len;
};

Tiling tiling(const CausalConv1dParams& p) {
  int64_t tile_len = kTile;
  // Keep the grid's y extent (batch * tiles) within CUDA's 65535.
  while (p.batch * ((p.seqlen + tile_len - 1) / tile_len) > 65535) tile_len *= 2;
  return {(p.seqlen + tile_len - 1) / tile_len, tile_len};
}

template <int K>
__global__ void conv_forward_kernel(CausalConv1dParams p, Tiling tl, void* out, ElemType out_type) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= p.channels) return;
  const int64_t b = blockIdx.y / tl.per_seq, tile = blockIdx.y % tl.per_seq;
  const int64_t t0 = tile * tl.tile_len;
  const int64_t t1 = t0 + tl.tile_len < p.seqlen ? t0 + tl.tile_len : p.seqlen;
  float w[K], win[K];
#pragma unroll
  for (int k = 0; k < K; ++k) w[k] = load_elem(p.weight, c * K + k, p.w_type);
  const float bias = p.bias ? load_elem(p.bias, c, p.w_type) : 0.f;
  const int64_t xb = b * p.x_stride_b + c;
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t t = t0 - (K - 1) + k;
    win[k] = t >= 0 ? load_elem(p.x, xb + t * p.x_stride_t, p.x_type) : 0.f;
  }
  for (int64_t t = t0; t < t1; ++t) {
    win[K - 1] = load_elem(p.x, xb + t * p.x_stride_t, p.x_type);
    float u = bias;
#pragma unroll
    for (int k = 0; k < K; ++k) u += w[k] * win[k];
    store_elem(out, (b * p.seqlen + t) * p.channels + c, out_type, u * sigmoidf_fast(u));
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }
}

template <int K>
__global__ void conv_backward_kernel(CausalConv1dParams p, Tiling tl, const void* grad_out, ElemType grad_type,
                                     void* grad_x, float* dw_partial, float* db_partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= p.channels) return;
  const int64_t b = blockIdx.y / tl.per_seq, tile = blockIdx.y % tl.per_seq;
  const int64_t t0 = tile * tl.tile_len;
  const int64_t t1 = t0 + tl.tile_len < p.seqlen ? t0 + tl.tile_len : p.seqlen;
  float w[K], xwin[K], gwin[K], dw[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    w[k] = load_elem(p.weight, c * K + k, p.w_type);
    gwin[k] = 0.f;
    dw[k] = 0.f;
  }
  const float bias = p.bias ? load_elem(p.bias, c, p.w_type) : 0.f;
  float db = 0.f;
  const int64_t xb = b * p.x_stride_b + c;
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t t = t0 - (K - 1) + k;
    xwin[k] = t >= 0 ? load_elem(p.x, xb + t * p.x_stride_t, p.x_type) : 0.f;
  }
  // tp runs over every step whose g feeds a dx of this tile: [t0, t1 + K - 1), g = 0 past the sequence end.
  for (int64_t tp = t0; tp < t1 + K - 1; ++tp) {
    float g = 0.f;
    if (tp < p.seqlen) {
      xwin[K - 1] = load_elem(p.x, xb + tp * p.x_stride_t, p.x_type);
      float u = bias;
#pragma unroll
      for (int k = 0; k < K; ++k) u += w[k] * xwin[k];
      const float sig = sigmoidf_fast(u);
      g = load_elem(grad_out, (b * p.seqlen + tp) * p.channels + c, grad_type) * sig * (1.f + u * (1.f - sig));
      if (tp < t1) {  // the parameter gradients count each step once: in the tile that owns it
#pragma unroll
        for (int k = 0; k < K; ++k) dw[k] += g * xwin[k];
        db += g;
      }
    }
#pragma unroll
    for (int k = 0; k < K - 1; ++k) gwin[k] = gwin[k + 1];
    gwin[K - 1] = g;  // gwin[K-1-k] = g[tp - k]
    const int64_t t = tp - (K - 1);
    if (t >= t0) {
      float dx = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) dx += w[k] * gwin[K - 1 - k];  // dx[t] = sum_k w[k] g[t + K-1-k]
      store_elem(grad_x, (b * p.seqlen + t) * p.channels + c, p.x_type, dx);
    }
#pragma unroll
    for (int k = 0; k < K - 1; ++k) xwin[k] = xwin[k + 1];
  }
  const int64_t tile_index = b * tl.per_seq + tile;
#pragma unroll
  for (int k = 0; k < K; ++k) dw_partial[(tile_index * p.channels + c) * K + k] = dw[k];
  db_partial[tile_index * p.channels + c] = db;
}

}  // namespace

int64_t causal_conv1d_backward_tiles(const CausalConv1dParams& p) {
  const Tiling tl = tiling(p);
  return p.batch * tl.per_seq;
}

cudaError_t causal_conv1d_silu_forward_launch(const CausalConv1dParams& p, void* out, ElemType out_type,
                                              cudaStream_t stream) {
  if (p.batch * p.seqlen * p.channels == 0) return cudaSuccess;
  const Tiling tl = tiling(p);
  const dim3 grid(unsigned((p.channels + kThreads - 1) / kThreads), unsigned(p.batch * tl.per_seq));
  switch (p.kernel_size) {
#define MP_CONV_FWD(K) \
  case K: conv_forward_kernel<K><<<grid, kThreads, 0, stream>>>(p, tl, out, out_type); break;
    MP_CONV_FWD(1) MP_CONV_FWD(2) MP_CONV_FWD(3) MP_CONV_FWD(4) MP_CONV_FWD(5) MP_CONV_FWD(6) MP_CONV_FWD(7)
    MP_CONV_FWD(8)
#undef MP_CONV_FWD
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t causal_conv1d_silu_backward_launch(const CausalConv1dParams& p, const void* grad_out, ElemType grad_type,
                                               void* grad_x, float* grad_weight_partial, float* grad_bias_partial,
                                               cudaStream_t stream) {
  if (p.batch * p.seqlen * p.channels == 0) return cudaSuccess;
  const Tiling tl = tiling(p);
  const dim3 grid(unsigned((p.channels + kThreads - 1) / kThreads), unsigned(p.batch * tl.per_seq));
  switch (p.kernel_size) {
#define MP_CONV_BWD(K)                                                                                        \
  case K:                                                                                                     \
    conv_backward_kernel<K><<<grid, kThreads, 0, stream>>>(p, tl, grad_out, grad_type, grad_x,                \
                                                           grad_weight_partial, grad_bias_partial);           \
    break;
    MP_CONV_BWD(1) MP_CONV_BWD(2) MP_CONV_BWD(3) MP_CONV_BWD(4) MP_CONV_BWD(5) MP_CONV_BWD(6) MP_CONV_BWD(7)
    MP_CONV_BWD(8)
#undef MP_CONV_BWD
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mp::kernels
