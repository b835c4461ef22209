// Sparse-teacher KD loss binding (issue 28): checks shapes, dtypes and options, dispatches rows to the CUDA kernel
// (sparse_kd.cu) or the CPU twin (sparse_kd_cpu.cpp), and wires the result into autograd the way kd_loss does
// (the gradient is made in the forward pass and handed out once at backward).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kd_internal.h"
#include "kernels/sparse_kd_internal.h"
#include "minipuzzle/error.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/sparse_kd_cuda.h"
#endif

namespace mp::detail {

void sparse_kd_rows(const at::Tensor& student, const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                    const at::Tensor& teacher_lse, const at::Tensor& labels, const KdOptions& options,
                    const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad) {
  if (!student.is_cuda()) {
    sparse_kd_rows_cpu(student, teacher_ids, teacher_logits, teacher_lse, labels, options, grad_scale, row_loss, grad);
    return;
  }
#ifdef MINIPUZZLE_WITH_CUDA
  namespace k = mp::kernels;
  k::SparseKdParams p;
  p.student = student.data_ptr();
  p.teacher_ids = teacher_ids.data_ptr();
  p.ids_int64 = teacher_ids.scalar_type() == at::kLong;
  p.teacher_logits = teacher_logits.data_ptr<float>();
  p.teacher_lse = teacher_lse.data_ptr<float>();
  p.grad = grad.defined() ? grad.data_ptr() : nullptr;
  p.labels = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  p.row_loss = row_loss.data_ptr<float>();
  p.grad_scale = grad_scale.data_ptr<float>();
  p.rows = student.size(0);
  p.vocab = student.size(1);
  p.k = teacher_ids.size(1);
  p.student_stride = student.stride(0);
  p.grad_stride = grad.defined() ? grad.stride(0) : 0;
  switch (student.scalar_type()) {
    case at::kFloat: p.dtype = k::KdDtype::f32; break;
    case at::kHalf: p.dtype = k::KdDtype::f16; break;
    case at::kBFloat16: p.dtype = k::KdDtype::bf16; break;
    default: fail("sparse_kd_loss: unsupported dtype ", student.scalar_type());
  }
  p.temperature = float(options.temperature);
  p.kd_weight = float(options.kd_weight);
  p.ce_weight = float(options.ce_weight);
  p.ignore_index = options.ignore_index;
  const c10::cuda::CUDAGuard device_guard(student.device());
  const cudaError_t err = k::sparse_kd_rows_launch(p, c10::cuda::getCurrentCUDAStream());
  MP_CHECK(err == cudaSuccess, "sparse_kd_loss CUDA kernel launch failed: ", cudaGetErrorString(err), " (rows ",
           p.rows, ", vocab ", p.vocab, ", k ", p.k, ")");
#else
  fail("sparse_kd_loss: tensors are on ", student.device(), " but minipuzzle was built without CUDA");
#endif
}

namespace {

struct SparseRows {
  at::Tensor student, ids, logits, lse, labels;
};

SparseRows checked(const at::Tensor& student, const at::Tensor& ids, const at::Tensor& logits, const at::Tensor& lse,
                   const at::Tensor& labels, const KdOptions& options) {
  MP_CHECK(student.defined() && ids.defined() && logits.defined() && lse.defined(),
           "sparse_kd_loss: student logits, teacher ids, teacher logits and teacher lse are required");
  MP_CHECK(options.divergence == KdDivergence::forward_kl,
           "sparse_kd_loss: only forward KL is defined for a sparse teacher");
  MP_CHECK(!options.gradient_in_place, "sparse_kd_loss: gradient_in_place is not supported");
  check_kd_options(options, labels.defined());
  const auto dtype = student.scalar_type();
  MP_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
           "sparse_kd_loss: student logits must be float32, float16 or bfloat16, got ", dtype);
  MP_CHECK(student.dim() >= 1 && student.size(-1) > 0, "sparse_kd_loss: student logits ", student.sizes(),
           " need a non-empty vocabulary dimension");
  const int64_t vocab = student.size(-1);
  SparseRows r;
  r.student = student.reshape({-1, vocab});
  if (r.student.stride(1) != 1) r.student = r.student.contiguous();
  const int64_t n = r.student.size(0);
  MP_CHECK(ids.dim() >= 1 && ids.sizes() == logits.sizes(), "sparse_kd_loss: teacher ids ", ids.sizes(),
           " and teacher logits ", logits.sizes(), " must have the same shape [..., k]");
  const int64_t k = ids.size(-1);
  MP_CHECK(k >= 1 && k <= vocab, "sparse_kd_loss: k = ", k, " must lie in [1, vocab = ", vocab, "]");
  MP_CHECK(ids.numel() == n * k && lse.numel() == n, "sparse_kd_loss: ", n, " student rows but teacher ids ",
           ids.sizes(), " and lse ", lse.sizes());
  MP_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
           "sparse_kd_loss: teacher ids must be int32 or int64, got ", ids.scalar_type());
  for (const at::Tensor* t : {&ids, &logits, &lse})
    MP_CHECK(t->device() == student.device(), "sparse_kd_loss: teacher tensors on ", t->device(),
             " but student logits on ", student.device());
  r.ids = ids.reshape({n, k}).contiguous();
  r.logits = logits.reshape({n, k}).to(at::kFloat).contiguous();
  r.lse = lse.reshape({n}).to(at::kFloat).contiguous();
  if (labels.defined()) {
    MP_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool,
             "sparse_kd_loss: labels must be integer token ids, got ", labels.scalar_type());
    MP_CHECK(labels.numel() == n, "sparse_kd_loss: ", labels.numel(), " labels for ", n, " tokens");
    MP_CHECK(labels.device() == student.device(), "sparse_kd_loss: labels on ", labels.device(), " but logits on ",
             student.device());
    r.labels = labels.reshape({-1}).to(at::kLong).contiguous();
  }
  return r;
}

KdLossAndGrad loss_and_grad(const at::Tensor& student, const at::Tensor& ids, const at::Tensor& logits,
                            const at::Tensor& lse, const at::Tensor& labels, const KdOptions& options, bool want_grad) {
  const SparseRows r = checked(student, ids, logits, lse, labels, options);
  const int64_t n = r.student.size(0);
  const at::Tensor grad_scale = kd_grad_scale(r.labels, n, options, student.device());
  const at::Tensor row_loss = at::empty({n}, student.options().dtype(at::kFloat));
  at::Tensor grad;
  if (want_grad) grad = at::empty_like(r.student);
  sparse_kd_rows(r.student, r.ids, r.logits, r.lse, r.labels, options, grad_scale, row_loss, grad);
  KdLossAndGrad out;
  out.loss = options.reduction == KdReduction::mean ? row_loss.sum() * grad_scale : row_loss.sum();
  if (want_grad) out.grad_student_logits = grad.view(student.sizes());
  return out;
}

struct SparseConstants {
  at::Tensor ids, logits, lse, labels;
  KdOptions options;
};

struct SparseKdFunction : public torch::autograd::Function<SparseKdFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student,
                            const SparseConstants& c) {
    KdLossAndGrad r = loss_and_grad(student, c.ids, c.logits, c.lse, c.labels, c.options, true);
    ctx->saved_data["grad"] = r.grad_student_logits;
    return r.loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->saved_data.find("grad");
    MP_CHECK(saved != ctx->saved_data.end(), "sparse_kd_loss: backward ran twice through the same loss");
    at::Tensor grad = saved->second.toTensor();
    ctx->saved_data.erase(saved);
    return {scale_by_grad_output(std::move(grad), grad_outputs[0]), at::Tensor()};
  }
};

}  // namespace
}  // namespace mp::detail

namespace mp {

at::Tensor sparse_kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                          const at::Tensor& teacher_logits, const at::Tensor& teacher_lse, const at::Tensor& labels,
                          const KdOptions& options) {
  const bool want_grad = at::GradMode::is_enabled() && student_logits.requires_grad();
  if (!want_grad)
    return detail::loss_and_grad(student_logits, teacher_ids, teacher_logits, teacher_lse, labels, options, false).loss;
  detail::SparseConstants c{teacher_ids.detach(), teacher_logits.detach(), teacher_lse.detach(),
                            labels.defined() ? labels.detach() : labels, options};
  return detail::SparseKdFunction::apply(student_logits, c);
}

KdLossAndGrad sparse_kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                                      const at::Tensor& teacher_logits, const at::Tensor& teacher_lse,
                                      const at::Tensor& labels, const KdOptions& options) {
  const at::AutoGradMode no_grad(false);
  return detail::loss_and_grad(student_logits, teacher_ids, teacher_logits, teacher_lse, labels, options, true);
}

}  // namespace mp
