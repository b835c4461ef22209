// The independent reference for the KD kernels' tests: the loss written plainly with ATen (log_softmax, kl_div,
// cross_entropy) and its gradient from autograd, in float64. Nothing here shares code with src/kernels.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "minipuzzle/kd.h"

namespace kd_test {

struct Reference {
  at::Tensor loss;  // float64 scalar
  at::Tensor grad;  // float64, d loss / d student logits
};

// kl_div(input, target, log_target=true) = exp(target) * (target - input) is NaN where target = -inf (0 * -inf),
// so where the teacher has zero-probability tokens the sum is written out with an explicit zero instead.
inline at::Tensor kl_rows(const at::Tensor& log_target, const at::Tensor& log_input) {
  if (at::isinf(log_target).any().item<bool>()) {
    const at::Tensor target = log_target.exp();
    return at::where(target > 0, target * (log_target - log_input), at::zeros_like(target)).sum(-1);
  }
  return at::kl_div(log_input, log_target, at::Reduction::None, /*log_target=*/true).sum(-1);
}

inline Reference reference_kd(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                              const at::Tensor& labels, const mp::KdOptions& o,
                              at::ScalarType compute = at::kDouble) {
  const at::AutoGradMode grad_on(true);
  const int64_t vocab = student_logits.size(-1);
  at::Tensor student = student_logits.detach().reshape({-1, vocab}).to(compute).requires_grad_(true);
  const at::Tensor teacher = teacher_logits.detach().reshape({-1, vocab}).to(compute);
  const double t = o.temperature, beta = o.jsd_beta;
  const at::Tensor log_q = at::log_softmax(student / t, -1);
  const at::Tensor log_p = at::log_softmax(teacher / t, -1);
  at::Tensor divergence;
  switch (o.divergence) {
    case mp::KdDivergence::forward_kl: divergence = kl_rows(log_p, log_q); break;
    case mp::KdDivergence::reverse_kl: divergence = kl_rows(log_q, log_p); break;
    case mp::KdDivergence::jsd: {
      // log m in the log domain, so that m stays representable where both probabilities underflow.
      const at::Tensor log_m = at::logaddexp(log_p + std::log(beta), log_q + std::log(1 - beta));
      divergence = beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m);
      break;
    }
  }
  at::Tensor per_token = o.kd_weight * t * t * divergence;
  at::Tensor valid = at::ones({student.size(0)}, at::kBool).to(student.device());
  if (labels.defined()) {
    const at::Tensor flat = labels.reshape({-1}).to(at::kLong);
    valid = flat != o.ignore_index;
    if (o.ce_weight != 0)
      per_token = per_token + o.ce_weight * at::cross_entropy_loss(student, flat, {}, at::Reduction::None,
                                                                    o.ignore_index);
  }
  per_token = at::where(valid, per_token, at::zeros_like(per_token));
  at::Tensor loss = per_token.sum();
  if (o.reduction == mp::KdReduction::mean) loss = loss / valid.sum().clamp_min(1).to(compute);
  const auto grads = torch::autograd::grad({loss}, {student});
  return {loss.detach(), grads[0].reshape(student_logits.sizes())};
}

// max |a - b| / max |b| (0 when both vanish): the error relative to the tensor's scale.
inline double relative_max_error(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double err = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  return scale == 0 ? err : err / scale;
}

}  // namespace kd_test
