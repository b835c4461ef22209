// KD loss binding: checks shapes, dtypes and options, dispatches rows to the CUDA kernel (kd_loss.cu) or to the
// CPU twin (kd_loss_cpu.cpp), and wires the result into autograd.
//
// Autograd: forward computes the loss and the gradient together (the kernel needs the same row statistics for
// both, so a separate backward would read the logits again). The gradient is kept in the autograd context and
// handed out at backward, scaled by the loss gradient only when that is not 1.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cmath>
#include <string>

#include "kernels/kd_internal.h"
#include "minipuzzle/error.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/kd_loss_cuda.h"
#endif

namespace mp::detail {

void check_kd_options(const KdOptions& options, bool has_labels) {
  MP_CHECK(std::isfinite(options.temperature) && options.temperature > 0, "kd_loss: temperature must be > 0, got ",
           options.temperature);
  if (options.divergence == KdDivergence::jsd)
    MP_CHECK(options.jsd_beta > 0 && options.jsd_beta < 1, "kd_loss: jsd_beta must be strictly between 0 and 1, got ",
             options.jsd_beta, " (use forward_kl or reverse_kl for the end points)");
  MP_CHECK(std::isfinite(options.kd_weight) && std::isfinite(options.ce_weight),
           "kd_loss: kd_weight and ce_weight must be finite, got ", options.kd_weight, " and ", options.ce_weight);
  MP_CHECK(options.tma_workers == 0 || options.tma_workers == 256 || options.tma_workers == 512,
           "kd_loss: tma_workers must be 0 (the kernel's choice), 256 or 512, got ", options.tma_workers);
  MP_CHECK(options.ce_weight == 0 || has_labels, "kd_loss: ce_weight is ", options.ce_weight,
           " but no labels were given; pass labels or set ce_weight to 0");
}

at::Tensor kd_grad_scale(const at::Tensor& labels, int64_t rows, const KdOptions& options, at::Device device) {
  const auto float_options = at::TensorOptions().dtype(at::kFloat).device(device);
  if (options.reduction == KdReduction::sum) return at::ones({}, float_options);
  if (!labels.defined()) return at::full({}, 1.0 / double(std::max<int64_t>(rows, 1)), float_options);
  return labels.ne(options.ignore_index).sum().clamp_min(1).to(at::kFloat).reciprocal();
}

namespace {

std::atomic<int> last_kernel{-1};  // a KdKernel value, -1 before any CUDA call

}  // namespace

const char* kd_rows_last_kernel() {
  const int k = last_kernel.load();
  return k <= 0 ? "none" : kd_kernel_name(static_cast<KdKernel>(k));
}

void kd_rows(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels, const KdOptions& options,
             const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad) {
  if (!student.is_cuda()) {
    kd_rows_cpu(student, teacher, labels, options, grad_scale, row_loss, grad);
    return;
  }
#ifdef MINIPUZZLE_WITH_CUDA
  namespace k = mp::kernels;
  MP_CHECK(row_loss.is_contiguous() && row_loss.scalar_type() == at::kFloat, "kd_rows: row_loss must be contiguous float");
  k::KdRowParams params;
  params.student = student.data_ptr();
  params.teacher = teacher.data_ptr();
  params.grad = grad.defined() ? grad.data_ptr() : nullptr;
  params.labels = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  params.row_loss = row_loss.data_ptr<float>();
  params.grad_scale = grad_scale.data_ptr<float>();
  params.rows = student.size(0);
  params.vocab = student.size(1);
  params.student_stride = student.stride(0);
  params.teacher_stride = teacher.stride(0);
  params.grad_stride = grad.defined() ? grad.stride(0) : 0;
  switch (student.scalar_type()) {
    case at::kFloat: params.dtype = k::KdDtype::f32; break;
    case at::kHalf: params.dtype = k::KdDtype::f16; break;
    case at::kBFloat16: params.dtype = k::KdDtype::bf16; break;
    default: fail("kd_rows: unsupported dtype ", student.scalar_type());
  }
  params.kind = options.divergence == KdDivergence::forward_kl   ? k::KdKind::forward_kl
                : options.divergence == KdDivergence::reverse_kl ? k::KdKind::reverse_kl
                                                                 : k::KdKind::jsd;
  params.temperature = float(options.temperature);
  params.jsd_beta = float(options.jsd_beta);
  params.kd_weight = float(options.kd_weight);
  params.ce_weight = float(options.ce_weight);
  params.ignore_index = options.ignore_index;
  params.tma_workers = options.tma_workers;
  const c10::cuda::CUDAGuard device_guard(student.device());
  KdKernel used = options.kernel;
  const cudaError_t err = k::kd_rows_launch(params, options.kernel, c10::cuda::getCurrentCUDAStream(), &used);
  last_kernel = int(used);
  MP_CHECK(err == cudaSuccess, "kd_loss CUDA kernel launch failed: ", cudaGetErrorString(err), " (rows ", params.rows,
           ", vocab ", params.vocab, ", dtype ", student.scalar_type(), ")");
#else
  fail("kd_loss: tensors are on ", student.device(), " but minipuzzle was built without CUDA; rebuild with nvcc "
       "available (MINIPUZZLE_CUDA=ON) or move the logits to CPU");
#endif
}

namespace {

struct RowView {
  at::Tensor student, teacher, labels;  // [rows, V], [rows, V], int64 [rows] or undefined
};

RowView checked_rows(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                     const KdOptions& options) {
  MP_CHECK(student.defined() && teacher.defined(), "kd_loss: student and teacher logits are required");
  MP_CHECK(student.dim() >= 1 && student.sizes() == teacher.sizes(), "kd_loss: student logits ", student.sizes(),
           " and teacher logits ", teacher.sizes(), " must have the same shape [..., vocab]");
  MP_CHECK(student.scalar_type() == teacher.scalar_type(), "kd_loss: student logits are ", student.scalar_type(),
           " but teacher logits are ", teacher.scalar_type(), "; cast one so both match");
  const auto dtype = student.scalar_type();
  MP_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
           "kd_loss: logits must be float32, float16 or bfloat16, got ", dtype);
  MP_CHECK(student.device() == teacher.device(), "kd_loss: student logits on ", student.device(),
           " but teacher logits on ", teacher.device());
  const int64_t vocab = student.size(-1);
  MP_CHECK(vocab > 0, "kd_loss: the vocabulary (last) dimension is empty");
  check_kd_options(options, labels.defined());
  if (options.gradient_in_place)
    MP_CHECK(student.is_contiguous(), "kd_loss: gradient_in_place needs contiguous student logits (got strides ",
             student.strides(), "); call .contiguous() first or turn gradient_in_place off");

  RowView view;
  // reshape keeps a view when it can (always for contiguous logits); a unit inner stride is what the kernels need.
  view.student = student.reshape({-1, vocab});
  view.teacher = teacher.reshape({-1, vocab});
  if (view.student.stride(1) != 1) view.student = view.student.contiguous();
  if (view.teacher.stride(1) != 1) view.teacher = view.teacher.contiguous();
  if (labels.defined()) {
    MP_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool,
             "kd_loss: labels must be integer token ids, got ", labels.scalar_type());
    MP_CHECK(labels.numel() == view.student.size(0), "kd_loss: ", labels.numel(), " labels for ",
             view.student.size(0), " tokens (labels ", labels.sizes(), ", logits ", student.sizes(), ")");
    MP_CHECK(labels.device() == student.device(), "kd_loss: labels on ", labels.device(), " but logits on ",
             student.device());
    view.labels = labels.reshape({-1}).to(at::kLong).contiguous();
  }
  return view;
}

}  // namespace

KdLossAndGrad kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                               const at::Tensor& labels, const KdOptions& options, bool want_grad) {
  const RowView rows = checked_rows(student_logits, teacher_logits, labels, options);
  const int64_t n = rows.student.size(0);
  const at::Tensor grad_scale = kd_grad_scale(rows.labels, n, options, student_logits.device());
  const at::Tensor row_loss = at::empty({n}, student_logits.options().dtype(at::kFloat));
  at::Tensor grad;
  if (want_grad) grad = options.gradient_in_place ? rows.student : at::empty_like(rows.student);
  kd_rows(rows.student, rows.teacher, rows.labels, options, grad_scale, row_loss, grad);
  if (want_grad && options.gradient_in_place) {
    // The logits' values are gone: make autograd refuse any saved use of them rather than compute with gradients.
    student_logits.unsafeGetTensorImpl()->bump_version();
  }
  KdLossAndGrad result;
  result.loss = options.reduction == KdReduction::mean ? row_loss.sum() * grad_scale : row_loss.sum();
  if (want_grad) result.grad_student_logits = grad.view(student_logits.sizes());
  return result;
}

at::Tensor scale_by_grad_output(at::Tensor grad, const at::Tensor& grad_output) {
  if (!grad.defined() || !grad_output.defined()) return grad;
#ifdef MINIPUZZLE_WITH_CUDA
  // On the GPU the incoming gradient is compared with 1 on the device: item() would wait for the forward kernel.
  const bool kernel_dtype = grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kHalf ||
                            grad.scalar_type() == at::kBFloat16;
  if (grad.is_cuda() && grad.is_contiguous() && kernel_dtype) {
    const c10::cuda::CUDAGuard device_guard(grad.device());
    const at::Tensor scale = grad_output.to(grad.device(), at::kFloat).contiguous();
    const auto dtype = grad.scalar_type() == at::kFloat  ? mp::kernels::KdDtype::f32
                       : grad.scalar_type() == at::kHalf ? mp::kernels::KdDtype::f16
                                                         : mp::kernels::KdDtype::bf16;
    const cudaError_t err = mp::kernels::kd_scale_unless_one_launch(grad.data_ptr(), dtype, grad.numel(),
                                                                    scale.data_ptr<float>(),
                                                                    c10::cuda::getCurrentCUDAStream());
    MP_CHECK(err == cudaSuccess, "kd_loss backward: scaling the gradient failed: ", cudaGetErrorString(err));
    return grad;
  }
#endif
  if (grad_output.item<double>() == 1.0) return grad;
  return grad.mul_(grad_output.to(grad.device()));
}

namespace {

// Everything but the student logits travels as a constant: the teacher gets no gradient.
struct KdConstants {
  at::Tensor teacher_logits, labels;
  KdOptions options;
};

struct KdLossFunction : public torch::autograd::Function<KdLossFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student_logits,
                            const KdConstants& constants) {
    KdLossAndGrad result =
        kd_loss_and_grad(student_logits, constants.teacher_logits, constants.labels, constants.options, true);
    ctx->saved_data["grad"] = result.grad_student_logits;
    return result.loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->saved_data.find("grad");
    MP_CHECK(saved != ctx->saved_data.end(), "kd_loss: backward ran twice through the same loss; the stored gradient "
             "is handed out once (recompute the loss instead of retain_graph)");
    at::Tensor grad = saved->second.toTensor();
    ctx->saved_data.erase(saved);  // let autograd own (and free) the buffer
    return {scale_by_grad_output(std::move(grad), grad_outputs[0]), at::Tensor()};
  }
};

}  // namespace

}  // namespace mp::detail

namespace mp {

at::Tensor kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits, const at::Tensor& labels,
                   const KdOptions& options) {
  const bool want_grad = at::GradMode::is_enabled() && student_logits.requires_grad();
  if (!want_grad) return detail::kd_loss_and_grad(student_logits, teacher_logits, labels, options, false).loss;
  detail::KdConstants constants{teacher_logits.detach(), labels.defined() ? labels.detach() : labels, options};
  return detail::KdLossFunction::apply(student_logits, constants);
}

KdLossAndGrad kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                               const at::Tensor& labels, const KdOptions& options) {
  const at::AutoGradMode no_grad(false);
  return detail::kd_loss_and_grad(student_logits, teacher_logits, labels, options, true);
}

}  // namespace mp
