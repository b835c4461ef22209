// Fused lm_head + sparse-teacher KD (issue 28): loss, d hidden and d lm_head without [N, V] logits. Per chunk of
// tokens: logits = h_chunk @ W^T into a reused buffer; the sparse KD rows (sparse_kd.cu / sparse_kd_cpu.cpp) write
// d loss / d logits over it; d h_chunk = dlogits @ W; d W += dlogits^T @ h_chunk. The teacher is its stored top-k
// rows, so there is no teacher GEMM: three GEMMs of 2 N H V flops. Same structure as linear_kd.cpp.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/kd_internal.h"
#include "kernels/sparse_kd_internal.h"
#include "minipuzzle/error.h"

namespace mp {

LinearKdLossAndGrads linear_sparse_kd_loss_and_grads(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                                     const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                                                     const at::Tensor& teacher_lse, const at::Tensor& labels,
                                                     const LinearKdOptions& options, bool want_grad_hidden,
                                                     bool want_grad_weight) {
  const at::AutoGradMode no_grad(false);
  MP_CHECK(student_hidden.defined() && student_weight.defined() && student_weight.dim() == 2 &&
               student_hidden.size(-1) == student_weight.size(1),
           "linear_sparse_kd: hidden states ", student_hidden.sizes(), " do not match the lm_head ",
           student_weight.sizes(), " (expected [..., H] and [V, H])");
  const at::ScalarType dtype = student_hidden.scalar_type();
  MP_CHECK(student_weight.scalar_type() == dtype &&
               (dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16),
           "linear_sparse_kd: hidden states (", dtype, ") and lm_head (", student_weight.scalar_type(),
           ") must share one of float32, float16, bfloat16");
  MP_CHECK(options.divergence == KdDivergence::forward_kl, "linear_sparse_kd: only forward KL is defined");
  detail::check_kd_options(options, labels.defined());
  const at::Device device = student_hidden.device();
  const int64_t H = student_weight.size(1), V = student_weight.size(0);
  const at::Tensor h = student_hidden.reshape({-1, H}).contiguous();
  const int64_t tokens = h.size(0);
  MP_CHECK(teacher_ids.defined() && teacher_logits.defined() && teacher_lse.defined() &&
               teacher_ids.sizes() == teacher_logits.sizes() && teacher_ids.dim() >= 1,
           "linear_sparse_kd: teacher ids and logits must have one shape [..., k]");
  const int64_t k = teacher_ids.size(-1);
  MP_CHECK(k >= 1 && k <= V && teacher_ids.numel() == tokens * k && teacher_lse.numel() == tokens,
           "linear_sparse_kd: ", tokens, " tokens but teacher ids ", teacher_ids.sizes(), " and lse ",
           teacher_lse.sizes(), " (k must lie in [1, ", V, "])");
  MP_CHECK(teacher_ids.scalar_type() == at::kInt || teacher_ids.scalar_type() == at::kLong,
           "linear_sparse_kd: teacher ids must be int32 or int64");
  const at::Tensor ids = teacher_ids.reshape({tokens, k}).to(device).contiguous();
  const at::Tensor tl = teacher_logits.reshape({tokens, k}).to(device, at::kFloat).contiguous();
  const at::Tensor lse = teacher_lse.reshape({tokens}).to(device, at::kFloat).contiguous();
  at::Tensor flat_labels;
  if (labels.defined()) {
    MP_CHECK(labels.numel() == tokens && !at::isFloatingType(labels.scalar_type()), "linear_sparse_kd: ", tokens,
             " integer labels expected, got ", labels.sizes(), " ", labels.scalar_type());
    flat_labels = labels.reshape({-1}).to(device, at::kLong).contiguous();
  }

  const int64_t element_bytes = int64_t(c10::elementSize(dtype));
  int64_t chunk = options.token_chunk > 0 ? options.token_chunk
                                          : options.logits_buffer_bytes / std::max<int64_t>(V * element_bytes, 1);
  chunk = std::max<int64_t>(1, std::min(chunk, std::max<int64_t>(tokens, 1)));
  at::Tensor buffer = at::empty({chunk, V}, h.options());
  const at::Tensor grad_scale = detail::kd_grad_scale(flat_labels, tokens, options, device);
  const at::Tensor row_loss = at::empty({tokens}, h.options().dtype(at::kFloat));
  const bool want_grad = want_grad_hidden || want_grad_weight;
  at::Tensor grad_hidden = want_grad_hidden ? at::empty_like(h) : at::Tensor();
  at::Tensor grad_weight = want_grad_weight ? at::empty_like(student_weight, at::MemoryFormat::Contiguous) : at::Tensor();
  const at::Tensor weight = student_weight.contiguous();
  for (int64_t r0 = 0; r0 < tokens; r0 += chunk) {
    const int64_t n = std::min(chunk, tokens - r0);
    const at::Tensor h_chunk = h.narrow(0, r0, n);
    at::Tensor logits = buffer.narrow(0, 0, n);
    at::mm_out(logits, h_chunk, weight.t());
    detail::sparse_kd_rows(logits, ids.narrow(0, r0, n), tl.narrow(0, r0, n), lse.narrow(0, r0, n),
                           flat_labels.defined() ? flat_labels.narrow(0, r0, n) : at::Tensor(), options, grad_scale,
                           row_loss.narrow(0, r0, n), want_grad ? logits : at::Tensor());
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

struct Constants {
  at::Tensor ids, logits, lse, labels;
  LinearKdOptions options;
  bool want_grad_hidden = false, want_grad_weight = false;
};

struct LinearSparseKdFunction : public torch::autograd::Function<LinearSparseKdFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const Constants& c) {
    LinearKdLossAndGrads r = linear_sparse_kd_loss_and_grads(hidden, weight, c.ids, c.logits, c.lse, c.labels,
                                                             c.options, c.want_grad_hidden, c.want_grad_weight);
    ctx->saved_data["grad_hidden"] = r.grad_student_hidden;
    ctx->saved_data["grad_weight"] = r.grad_student_weight;
    ctx->saved_data["pending"] = true;
    return r.loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    MP_CHECK(ctx->saved_data["pending"].toBool(), "linear_sparse_kd: backward ran twice through the same loss");
    ctx->saved_data["pending"] = false;
    at::Tensor gh = ctx->saved_data["grad_hidden"].toTensor(), gw = ctx->saved_data["grad_weight"].toTensor();
    ctx->saved_data["grad_hidden"] = at::Tensor();
    ctx->saved_data["grad_weight"] = at::Tensor();
    return {detail::scale_by_grad_output(std::move(gh), grad_outputs[0]),
            detail::scale_by_grad_output(std::move(gw), grad_outputs[0]), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_sparse_kd(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                            const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                            const at::Tensor& teacher_lse, const at::Tensor& labels, const LinearKdOptions& options) {
  Constants c{teacher_ids.detach(), teacher_logits.detach(), teacher_lse.detach(),
              labels.defined() ? labels.detach() : labels, options};
  const bool grad_mode = at::GradMode::is_enabled();
  c.want_grad_hidden = grad_mode && student_hidden.requires_grad();
  c.want_grad_weight = grad_mode && student_weight.requires_grad();
  if (!c.want_grad_hidden && !c.want_grad_weight)
    return linear_sparse_kd_loss_and_grads(student_hidden, student_weight, c.ids, c.logits, c.lse, c.labels, options,
                                           false, false)
        .loss;
  return LinearSparseKdFunction::apply(student_hidden, student_weight, c);
}

}  // namespace mp
