// Internal pieces of the sparse-teacher KD loss (sparse_kd_binding.cpp, sparse_kd_cpu.cpp, their tests).
// Not a public header: callers use include/minipuzzle/sparse_kd.h.
#pragma once
#include <ATen/core/Tensor.h>

#include "minipuzzle/sparse_kd.h"

namespace mp::detail {

// Row losses and, when `grad` is defined, d(sum of row losses * grad_scale) / d student.
//   student [rows, V] (unit inner stride); teacher_ids int32/int64 [rows, k]; teacher_logits float [rows, k];
//   teacher_lse float [rows]; labels int64 [rows] or undefined; grad_scale float scalar; row_loss float [rows];
//   grad [rows, V] in the student dtype or undefined. CUDA tensors run sparse_kd.cu, CPU tensors the ATen twin.
void sparse_kd_rows(const at::Tensor& student, const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                    const at::Tensor& teacher_lse, const at::Tensor& labels, const KdOptions& options,
                    const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad);
void sparse_kd_rows_cpu(const at::Tensor& student, const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                        const at::Tensor& teacher_lse, const at::Tensor& labels, const KdOptions& options,
                        const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad);

}  // namespace mp::detail
