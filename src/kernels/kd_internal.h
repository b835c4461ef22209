// Internal pieces shared by the KD binding (kd_binding.cpp), the fused linear+KD (linear_kd.cpp), their tests and
// benchmarks. Not a public header: the trainer uses include/minipuzzle/kd.h.
#pragma once
#include <ATen/core/Tensor.h>

#include "minipuzzle/kd.h"

namespace mp::detail {

// Checks the options against the documented ranges (T > 0, 0 < beta < 1 for JSD, CE needs labels).
void check_kd_options(const KdOptions& options, bool has_labels);

// The gradient factor as a float scalar tensor on `device`: 1 / max(valid tokens, 1) for a mean (computed on the
// device from the labels, without a host sync), 1 for a sum.
at::Tensor kd_grad_scale(const at::Tensor& labels, int64_t rows, const KdOptions& options, at::Device device);

// The kernel shape the latest CUDA kd_rows call ran ("cluster_tma", "cluster_pipelined", "cluster_smem",
// "two_pass"; "none" before any), so benchmarks can say what KdKernel::automatic chose.
const char* kd_rows_last_kernel();

// Row losses and, when `grad` is defined, d(sum of row losses * grad_scale) / d student, for rows of logits.
//   student, teacher: [rows, V] with unit inner stride; labels: int64 [rows] or undefined;
//   grad_scale: float scalar on the logits' device; row_loss: float [rows] (written);
//   grad: [rows, V] in the student dtype (written, may be the student tensor itself) or undefined.
// CUDA tensors run kd_loss.cu (the shape options.kernel names), CPU tensors kd_rows_cpu.
void kd_rows(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels, const KdOptions& options,
             const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad);

// The same math with ATen ops on CPU tensors (float32 internally), in chunks of rows.
void kd_rows_cpu(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                 const KdOptions& options, const at::Tensor& grad_scale, const at::Tensor& row_loss,
                 const at::Tensor& grad);

// kd_loss_and_grad with the gradient optional (want_grad false: loss only, nothing written).
KdLossAndGrad kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                               const at::Tensor& labels, const KdOptions& options, bool want_grad);

// The usual backward receives a loss gradient of exactly 1 (loss.backward()); then the stored gradient is used as
// is, sparing a pass over it. Otherwise it is scaled in place. Reads one scalar (a host sync on CUDA).
at::Tensor scale_by_grad_output(at::Tensor grad, const at::Tensor& grad_output);

}  // namespace mp::detail
