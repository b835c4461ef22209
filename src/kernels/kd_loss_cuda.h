// Raw launcher of the fused KD-loss row kernel (kd_loss.cu). No torch here: pointers, sizes and a stream.
// The math is documented in include/minipuzzle/kd.h; the binding (kd_binding.cpp) checks shapes and dtypes.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mp::kernels {

enum class KdDtype : int { f32 = 0, f16 = 1, bf16 = 2 };
enum class KdKind : int { forward_kl = 0, reverse_kl = 1, jsd = 2 };

// Which kernel shape runs the rows.
//   automatic    : cluster_tma where it applies (forward KL, 16-bit logits, V a multiple of 8 up to 262144, CE
//                  only at T = 1), else cluster_smem when a row fits the cluster's shared memory (and the device
//                  can co-schedule the cluster), otherwise two_pass. cluster_pipelined only when asked.
//   cluster_tma  : persistent clusters of up to 16 blocks; a producer warp streams rows into a ring of shared-memory
//                  buffers with TMA bulk copies while the workers keep stage 2's exponentials in registers for the
//                  gradient (two exps per element instead of four); kd_loss_tma.cu says why.
//   cluster_smem : a cluster of up to 8 blocks holds one row in shared memory: logits are read from HBM once and
//                  the gradient written once (the bandwidth-optimal shape on Hopper).
//   two_pass     : one block per row reading the row from global memory in each stage (any size; the fallback).
//   cluster_pipelined : cluster_smem made persistent: each block keeps several slice buffers and copies the next
//                  rows while computing the current one (memory and arithmetic overlap). automatic takes it when
//                  at least two buffers fit (16-bit logits up to V ~ 230k, fp32 ~ 115k), else cluster_smem, else two_pass.
enum class KdKernelVariant : int { automatic = 0, cluster_smem = 1, two_pass = 2, cluster_pipelined = 3, cluster_tma = 4 };

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
};

// Enqueues the row kernel on `stream`. Returns cudaSuccess or the launch error (the binding turns it into an
// mp::Error). The variant actually used is written to *used when used is not null.
// The cluster_tma shape alone (kd_loss_tma.cu): cudaErrorNotSupported, with nothing launched, where
// it does not apply (another divergence, fp32, CE at T != 1, rows not 16-byte aligned, V too long).
cudaError_t kd_rows_tma_launch(const KdRowParams& params, cudaStream_t stream);

// grad[0 .. count) *= *scale unless *scale == 1 (a device scalar, read on the device: kd_scale_grad.cu), in place.
cudaError_t kd_scale_unless_one_launch(void* grad, KdDtype dtype, int64_t count, const float* scale,
                                       cudaStream_t stream);

cudaError_t kd_rows_launch(const KdRowParams& params, KdKernelVariant variant, cudaStream_t stream,
                           KdKernelVariant* used = nullptr);

}  // namespace mp::kernels
