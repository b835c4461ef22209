// Raw launcher of the sparse-teacher KD row kernel (sparse_kd.cu). No torch here: pointers, sizes and a stream.
// The math is documented in include/minipuzzle/sparse_kd.h; the binding (sparse_kd_binding.cpp) checks shapes.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/kd_loss_cuda.h"  // KdDtype

namespace mp::kernels {

struct SparseKdParams {
  const void* student = nullptr;        // [rows, vocab] logits (dtype), row stride student_stride elements
  const void* teacher_ids = nullptr;    // [rows, k] int32 or int64 (ids_int64), contiguous; distinct per row
  bool ids_int64 = true;
  const float* teacher_logits = nullptr;  // [rows, k] float32, contiguous (raw logits)
  const float* teacher_lse = nullptr;     // [rows] float32: log sum_v exp(t_v / T) over the full row
  void* grad = nullptr;                 // [rows, vocab] d loss / d student (dtype), stride grad_stride; null: none
  const int64_t* labels = nullptr;      // [rows] or null (every row valid, no CE term)
  float* row_loss = nullptr;            // [rows] out: kd_weight*T^2*D + ce_weight*CE, 0 for ignored rows
  const float* grad_scale = nullptr;    // device scalar: factor of the gradient (1 / valid rows for a mean)
  int64_t rows = 0, vocab = 0, k = 0;
  int64_t student_stride = 0, grad_stride = 0;
  KdDtype dtype = KdDtype::f32;
  float temperature = 1.f, kd_weight = 1.f, ce_weight = 0.f;
  int64_t ignore_index = -100;
};

// Enqueues one block per row on `stream`; the block keeps a bitmask of the row's k ids in shared memory
// (vocab / 8 bytes, up to the device's opt-in limit: about 1.8M tokens on Hopper). Returns the launch error.
cudaError_t sparse_kd_rows_launch(const SparseKdParams& params, cudaStream_t stream);

}  // namespace mp::kernels
