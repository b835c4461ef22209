// Mamba-2's gated RMSNorm, forward and backward (math in gated_rmsnorm_cuda.h).
//
// A block owns one group of one row (forward) or one group over a tile of rows (backward). The backward keeps
// its channels in registers (at most kMaxPerThread per thread), needs two block sums per row (sum h^2 and
// sum dout*w*h) and accumulates dw for its channels over the tile's rows, written as per-tile partial sums that
// the binding adds up (deterministic, no atomics).
#include "kernels/gated_rmsnorm_cuda.h"
#include "kernels/mamba_cuda_common.cuh"

namespace mp::kernels {
namespace {

constexpr int kMaxPerThread = 8;
constexpr int64_t kRowsPerTile = 32;

int threads_for(int64_t group_size) {
  int64_t t = (group_size + kMaxPerThread - 1) / kMaxPerThread;
  t = (t + 31) / 32 * 32;
  if (t < 64) t = 64;
  return int(t);
}

// Sums a pair over the block; every thread gets the result. `scratch` holds >= 64 floats. Ends with a barrier.
__device__ float2 block_sum2(float a, float b, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  float2 total = make_float2(0.f, 0.f);
  for (int i = 0; i < warps; ++i) {
    total.x += scratch[i];
    total.y += scratch[32 + i];
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ float kept_channels(const GatedRmsNormParams& p, int64_t g, int64_t group_size) {
  if (!p.kept) return float(group_size);
  const float k = p.kept[g];
  return k < 1.f ? 1.f : k;
}

__global__ void gated_norm_forward_kernel(GatedRmsNormParams p, void* out, ElemType out_type) {
  __shared__ float scratch[64];
  const int64_t gs = p.channels / p.groups;
  const int64_t g = blockIdx.x % p.groups, row = blockIdx.x / p.groups;
  const int64_t c0 = g * gs;
  float sumsq = 0.f;
  for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
    const int64_t ch = c0 + j;
    const float zv = load_elem(p.z, row * p.z_stride + ch, p.z_type);
    float h = load_elem(p.y, row * p.y_stride + ch, p.y_type) * zv * sigmoidf_fast(zv);
    if (p.mask) h *= p.mask[ch];
    sumsq += h * h;
  }
  const float total = block_sum2(sumsq, 0.f, scratch).x;
  const float r = rsqrtf(total / kept_channels(p, g, gs) + p.eps);
  for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
    const int64_t ch = c0 + j;
    const float zv = load_elem(p.z, row * p.z_stride + ch, p.z_type);
    float h = load_elem(p.y, row * p.y_stride + ch, p.y_type) * zv * sigmoidf_fast(zv);
    if (p.mask) h *= p.mask[ch];
    store_elem(out, row * p.channels + ch, out_type, load_elem(p.weight, ch, p.w_type) * h * r);
  }
}

__global__ void gated_norm_backward_kernel(GatedRmsNormParams p, const void* grad_out, ElemType grad_type,
                                           void* grad_y, void* grad_z, float* dw_partial) {
  __shared__ float scratch[64];
  const int64_t gs = p.channels / p.groups;
  const int64_t g = blockIdx.x % p.groups, tile = blockIdx.x / p.groups;
  const int64_t c0 = g * gs;
  const float kept = kept_channels(p, g, gs);
  float w[kMaxPerThread], m[kMaxPerThread], dw[kMaxPerThread];
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    const bool in = j < gs;
    w[k] = in ? load_elem(p.weight, c0 + j, p.w_type) : 0.f;
    m[k] = in ? (p.mask ? p.mask[c0 + j] : 1.f) : 0.f;
    dw[k] = 0.f;
  }
  const int64_t row_end = (tile + 1) * kRowsPerTile < p.rows ? (tile + 1) * kRowsPerTile : p.rows;
  for (int64_t row = tile * kRowsPerTile; row < row_end; ++row) {
    float yv[kMaxPerThread], zv[kMaxPerThread], go[kMaxPerThread], hm[kMaxPerThread];
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxPerThread; ++k) {
      const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
      yv[k] = zv[k] = go[k] = hm[k] = 0.f;
      if (j < gs) {
        const int64_t ch = c0 + j;
        yv[k] = load_elem(p.y, row * p.y_stride + ch, p.y_type);
        zv[k] = load_elem(p.z, row * p.z_stride + ch, p.z_type);
        go[k] = load_elem(grad_out, row * p.channels + ch, grad_type);
        hm[k] = yv[k] * zv[k] * sigmoidf_fast(zv[k]) * m[k];
        s1 += hm[k] * hm[k];
        s2 += go[k] * w[k] * hm[k];
      }
    }
    const float2 sums = block_sum2(s1, s2, scratch);
    const float r = rsqrtf(sums.x / kept + p.eps);
    const float coef = r * r * r * sums.y / kept;
#pragma unroll
    for (int k = 0; k < kMaxPerThread; ++k) {
      const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
      if (j < gs) {
        const int64_t ch = c0 + j;
        const float dh = m[k] * (go[k] * w[k] * r - coef * hm[k]);
        const float sig = sigmoidf_fast(zv[k]);
        store_elem(grad_y, row * p.channels + ch, p.y_type, dh * zv[k] * sig);
        store_elem(grad_z, row * p.channels + ch, p.z_type, dh * yv[k] * sig * (1.f + zv[k] * (1.f - sig)));
        dw[k] += go[k] * hm[k] * r;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    if (j < gs) dw_partial[tile * p.channels + c0 + j] = dw[k];
  }
}

}  // namespace

cudaError_t gated_rms_norm_forward_launch(const GatedRmsNormParams& p, void* out, ElemType out_type,
                                          cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.groups <= 0 || p.channels % p.groups != 0) return cudaErrorInvalidValue;
  const int threads = threads_for(p.channels / p.groups) < 256 ? threads_for(p.channels / p.groups) : 256;
  const int64_t blocks = p.rows * p.groups;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  gated_norm_forward_kernel<<<unsigned(blocks), threads, 0, stream>>>(p, out, out_type);
  return cudaGetLastError();
}

int64_t gated_rms_norm_backward_row_tiles(const GatedRmsNormParams& p) {
  return (p.rows + kRowsPerTile - 1) / kRowsPerTile;
}

cudaError_t gated_rms_norm_backward_launch(const GatedRmsNormParams& p, const void* grad_out, ElemType grad_type,
                                           void* grad_y, void* grad_z, float* grad_weight_partial,
                                           cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.groups <= 0 || p.channels % p.groups != 0) return cudaErrorInvalidValue;
  const int threads = threads_for(p.channels / p.groups);
  if (threads > 1024) return cudaErrorInvalidValue;  // group larger than 8192 channels
  const int64_t blocks = gated_rms_norm_backward_row_tiles(p) * p.groups;
  gated_norm_backward_kernel<<<unsigned(blocks), threads, 0, stream>>>(p, grad_out, grad_type, grad_y, grad_z,
                                                                       grad_weight_partial);
  return cudaGetLastError();
}

}  // namespace mp::kernels
