// Raw launcher of the routed experts' grouped GEMM (moe_grouped_gemm.cu). No torch here.
//
// The MoE layer sorts its (token, slot) assignments by expert, so expert e owns the contiguous rows
// [offsets[e], offsets[e+1]) of the gathered input. One launch computes every expert's slice:
//     y[r, :] = epilogue(x[r, :] . W_e^T)        for r in [offsets[e], offsets[e+1]), e in [0, experts)
// with W_e = weights[e], an nn.Linear weight [n, k] (row-major), and the epilogue relu(.)^2 when `relu2` is set,
// then a product with row_scale[r] (float32) when row_scale is not null (the routing weight of the slot).
// Accumulation and the epilogue are float32; y is written in the element type.
// Blocks cover (64-row tile of one expert) x (64 output columns); a block finds its expert by walking the
// offsets, so the grid needs no host-side tile table: ceil(rows / 64) + experts row tiles bound the tiles of any
// split of `rows` rows into `experts` slices. bf16: tensor cores (WMMA 16x16x16, float32 accumulators);
// f32: CUDA cores.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/mamba_cuda_common.h"

namespace mp::kernels {

// x [rows, k] row-major (contiguous), weights: device array of `experts` device pointers to [n, k] row-major
// matrices, offsets: device array of experts + 1 int64 (offsets[0] = 0, offsets[experts] = rows, non-decreasing),
// row_scale: device float32 [rows] or null, y [rows, n] row-major (contiguous). All of `type`.
// weights_aligned16: the caller guarantees every weight pointer is 16-byte aligned (then, with k % 8 == 0 and x
// 16-byte aligned, bf16 tiles are read 8 elements at a time).
cudaError_t moe_grouped_gemm_launch(const void* x, const void* const* weights, const int64_t* offsets, int64_t experts,
                                    int64_t rows, int64_t n, int64_t k, const float* row_scale, bool relu2, void* y,
                                    ElemType type, bool weights_aligned16, cudaStream_t stream);

}  // namespace mp::kernels
