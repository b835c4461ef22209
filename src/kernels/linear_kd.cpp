// Fused lm_head + KD loss: loss, d hidden and d lm_head without ever holding [N, V] logits.
//
// Per chunk of tokens (sized by LinearKdOptions::logits_buffer_bytes):
//   1. student logits [chunk, V] = h_chunk @ W^T              (GEMM, into a reused buffer)
//   2. teacher logits, a quarter chunk at a time = ht @ Wt^T  (GEMM into a smaller reused buffer), or a slice of
//      the given teacher logits
//   3. the KD row kernel (kd_loss.cu / kd_loss_cpu.cpp) writes d loss / d logits in place over the student logits
//   4. d h_chunk = dlogits @ W                                (GEMM)
//      d W     += dlogits^T @ h_chunk                         (GEMM accumulating into d W, in W's dtype)
// Four GEMMs of 2*N*H*V flops each (three without a teacher lm_head): the FLOP floor of the loss. The GEMMs are
// ATen's mm (cuBLAS/cuBLASLt with fp32 accumulation on CUDA, the CPU BLAS on CPU) writing into preallocated
// buffers; the gradient is computed in the forward call and handed to autograd at backward.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kd_internal.h"
#include "minipuzzle/error.h"

namespace mp {

namespace {

bool is_logits_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_matrix_pair(const at::Tensor& hidden, const at::Tensor& weight, const char* who) {
  MP_CHECK(hidden.defined() && weight.defined(), "linear_kd: ", who, " hidden states and lm_head are both required");
  MP_CHECK(hidden.dim() >= 1 && weight.dim() == 2 && hidden.size(-1) == weight.size(1), "linear_kd: ", who,
           " hidden states ", hidden.sizes(), " do not match its lm_head ", weight.sizes(),
           " (expected [..., H] and [V, H])");
  MP_CHECK(hidden.scalar_type() == weight.scalar_type() && is_logits_dtype(hidden.scalar_type()), "linear_kd: ", who,
           " hidden states (", hidden.scalar_type(), ") and lm_head (", weight.scalar_type(),
           ") must share one of float32, float16, bfloat16");
  MP_CHECK(hidden.device() == weight.device(), "linear_kd: ", who, " hidden states on ", hidden.device(),
           " but lm_head on ", weight.device());
}

}  // namespace

LinearKdLossAndGrads linear_kd_loss_and_grads(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                              const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                                              const at::Tensor& teacher_logits, const at::Tensor& labels,
                                              const LinearKdOptions& options, bool want_grad_hidden,
                                              bool want_grad_weight) {
  const at::AutoGradMode no_grad(false);
  check_matrix_pair(student_hidden, student_weight, "student");
  const bool teacher_from_hidden = teacher_hidden.defined() || teacher_weight.defined();
  MP_CHECK(teacher_from_hidden != teacher_logits.defined(),
           "linear_kd: give the teacher either as hidden states + lm_head or as logits, not ",
           teacher_from_hidden ? "both" : "neither");
  const at::ScalarType dtype = student_hidden.scalar_type();
  const at::Device device = student_hidden.device();
  const int64_t hidden_size = student_weight.size(1), vocab = student_weight.size(0);
  const at::Tensor h = student_hidden.reshape({-1, hidden_size}).contiguous();
  const int64_t tokens = h.size(0);
  at::Tensor th, tw, tl;
  if (teacher_from_hidden) {
    check_matrix_pair(teacher_hidden, teacher_weight, "teacher");
    MP_CHECK(teacher_weight.size(0) == vocab, "linear_kd: teacher vocabulary ", teacher_weight.size(0),
             " differs from the student's ", vocab);
    th = teacher_hidden.reshape({-1, teacher_weight.size(1)}).contiguous();
    tw = teacher_weight.contiguous();
    MP_CHECK(th.size(0) == tokens, "linear_kd: ", th.size(0), " teacher tokens but ", tokens, " student tokens");
    MP_CHECK(teacher_hidden.scalar_type() == dtype && teacher_hidden.device() == device, "linear_kd: teacher (",
             teacher_hidden.scalar_type(), " on ", teacher_hidden.device(), ") and student (", dtype, " on ", device,
             ") must share dtype and device; cast the teacher");
  } else {
    MP_CHECK(teacher_logits.dim() >= 1 && teacher_logits.size(-1) == vocab, "linear_kd: teacher logits ",
             teacher_logits.sizes(), " do not end in the vocabulary size ", vocab);
    tl = teacher_logits.reshape({-1, vocab});
    if (tl.stride(1) != 1) tl = tl.contiguous();
    MP_CHECK(tl.size(0) == tokens, "linear_kd: ", tl.size(0), " teacher tokens but ", tokens, " student tokens");
    MP_CHECK(teacher_logits.scalar_type() == dtype && teacher_logits.device() == device, "linear_kd: teacher logits (",
             teacher_logits.scalar_type(), " on ", teacher_logits.device(), ") and student (", dtype, " on ", device,
             ") must share dtype and device");
  }
  detail::check_kd_options(options, labels.defined());
  at::Tensor flat_labels;
  if (labels.defined()) {
    MP_CHECK(labels.numel() == tokens && labels.device() == device && !at::isFloatingType(labels.scalar_type()),
             "linear_kd: labels must be ", tokens, " integer token ids on ", device, ", got ", labels.sizes(), " ",
             labels.scalar_type(), " on ", labels.device());
    flat_labels = labels.reshape({-1}).to(at::kLong).contiguous();
  }

  const int64_t element_bytes = int64_t(c10::elementSize(dtype));
  int64_t chunk = options.token_chunk > 0 ? options.token_chunk
                                          : options.logits_buffer_bytes / std::max<int64_t>(vocab * element_bytes, 1);
  chunk = std::max<int64_t>(1, std::min(chunk, tokens));
  const int64_t teacher_chunk = std::max<int64_t>(1, chunk / 4);
  const auto logits_options = h.options();
  at::Tensor student_buffer = at::empty({chunk, vocab}, logits_options);
  at::Tensor teacher_buffer = teacher_from_hidden ? at::empty({teacher_chunk, vocab}, logits_options) : at::Tensor();
  const at::Tensor grad_scale = detail::kd_grad_scale(flat_labels, tokens, options, device);
  const at::Tensor row_loss = at::empty({tokens}, logits_options.dtype(at::kFloat));
  const bool want_grad = want_grad_hidden || want_grad_weight;
  at::Tensor grad_hidden = want_grad_hidden ? at::empty_like(h) : at::Tensor();
  at::Tensor grad_weight = want_grad_weight ? at::empty_like(student_weight, at::MemoryFormat::Contiguous) : at::Tensor();
  const at::Tensor weight = student_weight.contiguous();

  for (int64_t r0 = 0; r0 < tokens; r0 += chunk) {
    const int64_t n = std::min(chunk, tokens - r0);
    const at::Tensor h_chunk = h.narrow(0, r0, n);
    at::Tensor logits = student_buffer.narrow(0, 0, n);
    at::mm_out(logits, h_chunk, weight.t());
    const at::Tensor gradient_target = want_grad ? logits : at::Tensor();
    if (teacher_from_hidden) {
      for (int64_t s0 = 0; s0 < n; s0 += teacher_chunk) {
        const int64_t m = std::min(teacher_chunk, n - s0);
        at::Tensor teacher_part = teacher_buffer.narrow(0, 0, m);
        at::mm_out(teacher_part, th.narrow(0, r0 + s0, m), tw.t());
        detail::kd_rows(logits.narrow(0, s0, m), teacher_part,
                        flat_labels.defined() ? flat_labels.narrow(0, r0 + s0, m) : at::Tensor(), options, grad_scale,
                        row_loss.narrow(0, r0 + s0, m), want_grad ? logits.narrow(0, s0, m) : at::Tensor());
      }
    } else {
      detail::kd_rows(logits, tl.narrow(0, r0, n), flat_labels.defined() ? flat_labels.narrow(0, r0, n) : at::Tensor(),
                      options, grad_scale, row_loss.narrow(0, r0, n), gradient_target);
    }
    // `logits` now holds d loss / d logits for these tokens.
    if (want_grad_hidden) {
      at::Tensor grad_hidden_chunk = grad_hidden.narrow(0, r0, n);
      at::mm_out(grad_hidden_chunk, logits, weight);
    }
    if (want_grad_weight) {
      if (r0 == 0)
        at::mm_out(grad_weight, logits.t(), h_chunk);
      else
        grad_weight.addmm_(logits.t(), h_chunk);
    }
  }

  if (tokens == 0 && want_grad_weight) grad_weight.zero_();

  LinearKdLossAndGrads result;
  result.loss = options.reduction == KdReduction::mean ? row_loss.sum() * grad_scale : row_loss.sum();
  if (want_grad_hidden) result.grad_student_hidden = grad_hidden.view(student_hidden.sizes());
  result.grad_student_weight = grad_weight;
  return result;
}

namespace {

struct LinearKdConstants {
  at::Tensor teacher_hidden, teacher_weight, teacher_logits, labels;
  LinearKdOptions options;
  bool want_grad_hidden = false, want_grad_weight = false;
};

at::Tensor detached(const at::Tensor& t) { return t.defined() ? t.detach() : t; }

struct LinearKdFunction : public torch::autograd::Function<LinearKdFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& student_hidden,
                            const at::Tensor& student_weight, const LinearKdConstants& c) {
    LinearKdLossAndGrads result =
        linear_kd_loss_and_grads(student_hidden, student_weight, c.teacher_hidden, c.teacher_weight, c.teacher_logits,
                                 c.labels, c.options, c.want_grad_hidden, c.want_grad_weight);
    ctx->saved_data["grad_hidden"] = result.grad_student_hidden;
    ctx->saved_data["grad_weight"] = result.grad_student_weight;
    ctx->saved_data["pending"] = true;
    return result.loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    MP_CHECK(ctx->saved_data["pending"].toBool(), "linear_kd: backward ran twice through the same loss; the stored "
             "gradients are handed out once (recompute the loss instead of retain_graph)");
    ctx->saved_data["pending"] = false;
    at::Tensor grad_hidden = ctx->saved_data["grad_hidden"].toTensor();
    at::Tensor grad_weight = ctx->saved_data["grad_weight"].toTensor();
    ctx->saved_data["grad_hidden"] = at::Tensor();  // let autograd own (and free) the buffers
    ctx->saved_data["grad_weight"] = at::Tensor();
    return {detail::scale_by_grad_output(std::move(grad_hidden), grad_outputs[0]),
            detail::scale_by_grad_output(std::move(grad_weight), grad_outputs[0]), at::Tensor()};
  }
};

at::Tensor linear_kd_autograd(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                              LinearKdConstants constants) {
  const bool grad_mode = at::GradMode::is_enabled();
  constants.want_grad_hidden = grad_mode && student_hidden.requires_grad();
  constants.want_grad_weight = grad_mode && student_weight.requires_grad();
  if (!constants.want_grad_hidden && !constants.want_grad_weight)
    return linear_kd_loss_and_grads(student_hidden, student_weight, constants.teacher_hidden,
                                    constants.teacher_weight, constants.teacher_logits, constants.labels,
                                    constants.options, false, false)
        .loss;
  return LinearKdFunction::apply(student_hidden, student_weight, constants);
}

}  // namespace

at::Tensor linear_kd(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                     const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight, const at::Tensor& labels,
                     const LinearKdOptions& options) {
  MP_CHECK(teacher_hidden.defined() && teacher_weight.defined(),
           "linear_kd: teacher hidden states and lm_head are required (use linear_kd_from_teacher_logits for logits)");
  LinearKdConstants constants;
  constants.teacher_hidden = detached(teacher_hidden);
  constants.teacher_weight = detached(teacher_weight);
  constants.labels = detached(labels);
  constants.options = options;
  return linear_kd_autograd(student_hidden, student_weight, constants);
}

at::Tensor linear_kd_from_teacher_logits(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                         const at::Tensor& teacher_logits, const at::Tensor& labels,
                                         const LinearKdOptions& options) {
  MP_CHECK(teacher_logits.defined(), "linear_kd_from_teacher_logits: teacher logits are required");
  LinearKdConstants constants;
  constants.teacher_logits = detached(teacher_logits);
  constants.labels = detached(labels);
  constants.options = options;
  return linear_kd_autograd(student_hidden, student_weight, constants);
}

}  // namespace mp
