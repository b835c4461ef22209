// Raw launcher of the fused KD-loss row kernel (kd_loss.cu). No torch here: pointers, sizes and a stream.
// The math is documented in include/minipuzzle/kd.h; the binding (kd_binding.cpp) checks shapes and dtypes.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "minipuzzle/kd_kernel.h"  // KdKernel: which kernel shape runs the rows

namespace mp::kernels {

enum class KdDtype : int { f32 = 0, f16 = 1, bf16 = 2 };
enum class KdKind : int { forward_kl = 0, reverse_kl = 1, jsd = 2 };

struct KdRowParams {
  const void* student = nullptr;   // [rows, vocab] logits, row stride student_stride elements
  const void* teacher = nullptr;   // [rows, vocab], same dtype
  void* grad = nullptr;            // [rows, vocab] d loss / d student, same dtype; may equal student; null: none
  const int64_t* labels = nullptr; // [rows] or null (then every row is valid and there is no CE term)
  float* row_loss = nullptr;       // [rows] out: kd_weight*T^2*D + ce_weight*CE, 0 for ignored rows
  const float* grad_scale = nullptr;  // device scalar: factor of the gradient (1 / valid rows for a mean)
  int64_t rows = 0, vocab = 0;
  int64_t student_stride = 0, teacher_stride = 0, grad_stride = 0;
  KdDtype dtype = KdDtype::f32;
  KdKind kind = KdKind::forward_kl;
  float temperature = 1.f, jsd_beta = 0.5f, kd_weight = 1.f, ce_weight = 0.f;
  int64_t ignore_index = -100;
  int tma_workers = 0;  // cluster_tma: 256 asks for the narrow block (KdOptions::tma_workers); else 512
};

// Enqueues the row kernel on `stream`. Returns cudaSuccess or the launch error (the binding turns it into an
// mp::Error). The variant actually used is written to *used when used is not null.
// The cluster_tma shape alone (kd_loss_tma.cu): cudaErrorNotSupported, with nothing launched, where
// it does not apply (another divergence, fp32, CE at T != 1, rows not 16-byte aligned, V too long).
cudaError_t kd_rows_tma_launch(const KdRowParams& params, cudaStream_t stream);

// grad[0 .. count) *= *scale unless *scale == 1 (a device scalar, read on the device: kd_scale_grad.cu), in place.
cudaError_t kd_scale_unless_one_launch(void* grad, KdDtype dtype, int64_t count, const float* scale,
                                       cudaStream_t stream);

cudaError_t kd_rows_launch(const KdRowParams& params, KdKernel variant, cudaStream_t stream,
                           KdKernel* used = nullptr);

}  // namespace mp::kernels
