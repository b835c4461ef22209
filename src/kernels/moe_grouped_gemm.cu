// The routed experts' grouped GEMM (see moe_grouped_gemm_cuda.h): one launch per projection for all experts of a
// MoE layer, tokens sorted by expert, relu^2 and the routing weight fused into the epilogue.
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>

#include "kernels/moe_grouped_gemm_cuda.h"

namespace mp::kernels {
namespace {

constexpr int kBM = 64, kBN = 64;  // rows (tokens of one expert) x output columns per block

// Block row-tile `t` (counted over all experts, each expert's rows in ceil(count / kBM) tiles) -> its expert and
// rows; found = 0 past the last tile. Thread 0 walks the offsets; the block reads the result from shared memory.
struct Tile {
  int64_t expert, row_begin, row_end;
  int found;
};

__device__ void find_tile(const int64_t* offsets, int64_t experts, int64_t t, Tile* out) {
  if (threadIdx.x == 0) {
    out->found = 0;
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t begin = offsets[e], end = offsets[e + 1];
      const int64_t tiles = (end - begin + kBM - 1) / kBM;
      if (t < tiles) {
        out->expert = e, out->row_begin = begin + t * kBM, out->row_end = end, out->found = 1;
        break;
      }
      t -= tiles;
    }
  }
  __syncthreads();
}

__device__ __forceinline__ float epilogue(float v, bool relu2, const float* row_scale, int64_t row) {
  if (relu2) {
    v = fmaxf(v, 0.f);
    v *= v;
  }
  return row_scale ? v * row_scale[row] : v;
}

// ---- bf16: WMMA 16x16x16 on tensor cores, 4 warps each computing 32 x 32 of the 64 x 64 tile ------------------
constexpr int kBK16 = 32, kLds16 = kBK16 + 8, kLdc = kBN + 4;

template <bool kVector>
__global__ void __launch_bounds__(128)
    grouped_gemm_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* const* __restrict__ weights,
                      const int64_t* __restrict__ offsets, int64_t experts, int64_t n, int64_t k,
                      const float* __restrict__ row_scale, bool relu2, __nv_bfloat16* __restrict__ y) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 As[kBM * kLds16];
  __shared__ __align__(32) __nv_bfloat16 Bs[kBN * kLds16];
  __shared__ __align__(32) float Cs[kBM * kLdc];
  __shared__ Tile tile;
  find_tile(offsets, experts, blockIdx.x, &tile);
  if (!tile.found) return;
  const int64_t row0 = tile.row_begin, row_end = tile.row_end, n0 = int64_t(blockIdx.y) * kBN;
  const __nv_bfloat16* __restrict__ w = weights[tile.expert];
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < k; k0 += kBK16) {
    if (kVector) {  // 8 bf16 (16 bytes) per load; k % 8 == 0, so a chunk is wholly inside or outside k
      for (int c = threadIdx.x; c < kBM * kBK16 / 8; c += blockDim.x) {
        const int r = c / (kBK16 / 8), kc = (c % (kBK16 / 8)) * 8;
        const int64_t gk = k0 + kc, gr = row0 + r, gn = n0 + r;
        uint4 a = make_uint4(0, 0, 0, 0), b = make_uint4(0, 0, 0, 0);
        if (gr < row_end && gk < k) a = *reinterpret_cast<const uint4*>(x + gr * k + gk);
        if (gn < n && gk < k) b = *reinterpret_cast<const uint4*>(w + gn * k + gk);
        *reinterpret_cast<uint4*>(As + r * kLds16 + kc) = a;
        *reinterpret_cast<uint4*>(Bs + r * kLds16 + kc) = b;
      }
    } else {
      const __nv_bfloat16 zero = __float2bfloat16(0.f);
      for (int c = threadIdx.x; c < kBM * kBK16; c += blockDim.x) {
        const int r = c / kBK16, kc = c % kBK16;
        const int64_t gk = k0 + kc, gr = row0 + r, gn = n0 + r;
        As[r * kLds16 + kc] = (gr < row_end && gk < k) ? x[gr * k + gk] : zero;
        Bs[r * kLds16 + kc] = (gn < n && gk < k) ? w[gn * k + gk] : zero;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK16; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * kLds16 + kk, kLds16);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * kLds16 + kk, kLds16);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc[i][j], kLdc, wmma::mem_row_major);
  __syncthreads();
  for (int c = threadIdx.x; c < kBM * kBN; c += blockDim.x) {
    const int r = c / kBN, cc = c % kBN;
    const int64_t gr = row0 + r, gn = n0 + cc;
    if (gr < row_end && gn < n) y[gr * n + gn] = __float2bfloat16(epilogue(Cs[r * kLdc + cc], relu2, row_scale, gr));
  }
}

// ---- f32: CUDA cores, 256 threads each computing 4 x 4 of the 64 x 64 tile ---------------------------------------
constexpr int kBK32 = 16;

__global__ void __launch_bounds__(256)
    grouped_gemm_f32(const float* __restrict__ x, const float* const* __restrict__ weights,
                     const int64_t* __restrict__ offsets, int64_t experts, int64_t n, int64_t k,
                     const float* __restrict__ row_scale, bool relu2, float* __restrict__ y) {
  __shared__ float As[kBK32][kBM + 4];
  __shared__ float Bs[kBK32][kBN + 4];
  __shared__ Tile tile;
  find_tile(offsets, experts, blockIdx.x, &tile);
  if (!tile.found) return;
  const int64_t row0 = tile.row_begin, row_end = tile.row_end, n0 = int64_t(blockIdx.y) * kBN;
  const float* __restrict__ w = weights[tile.expert];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kBK32) {
    for (int c = threadIdx.x; c < kBM * kBK32; c += blockDim.x) {
      const int r = c / kBK32, kc = c % kBK32;
      const int64_t gk = k0 + kc, gr = row0 + r, gn = n0 + r;
      As[kc][r] = (gr < row_end && gk < k) ? x[gr * k + gk] : 0.f;
      Bs[kc][r] = (gn < n && gk < k) ? w[gn * k + gk] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK32; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i], b[i] = Bs[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gr = row0 + ty * 4 + i;
    if (gr >= row_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx * 4 + j;
      if (gn < n) y[gr * n + gn] = epilogue(acc[i][j], relu2, row_scale, gr);
    }
  }
}

}  // namespace

cudaError_t moe_grouped_gemm_launch(const void* x, const void* const* weights, const int64_t* offsets, int64_t experts,
                                    int64_t rows, int64_t n, int64_t k, const float* row_scale, bool relu2, void* y,
                                    ElemType type, bool weights_aligned16, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  if (experts <= 0 || k <= 0) return cudaErrorInvalidValue;
  // Row tiles: every expert's last tile may be partial, so ceil(rows / kBM) + experts bounds them (blocks past
  // the last tile return at once).
  const int64_t row_tiles = (rows + kBM - 1) / kBM + experts, col_tiles = (n + kBN - 1) / kBN;
  if (row_tiles > 0x7fffffff || col_tiles > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid{static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles), 1u};
  if (type == ElemType::bf16) {
    const bool vector = weights_aligned16 && k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    auto xb = static_cast<const __nv_bfloat16*>(x);
    auto wb = reinterpret_cast<const __nv_bfloat16* const*>(weights);
    auto yb = static_cast<__nv_bfloat16*>(y);
    if (vector)
      grouped_gemm_bf16<true><<<grid, 128, 0, stream>>>(xb, wb, offsets, experts, n, k, row_scale, relu2, yb);
    else
      grouped_gemm_bf16<false><<<grid, 128, 0, stream>>>(xb, wb, offsets, experts, n, k, row_scale, relu2, yb);
  } else {
    grouped_gemm_f32<<<grid, 256, 0, stream>>>(static_cast<const float*>(x),
                                               reinterpret_cast<const float* const*>(weights), offsets, experts, n, k,
                                               row_scale, relu2, static_cast<float*>(y));
  }
  return cudaGetLastError();
}

}  // namespace mp::kernels
