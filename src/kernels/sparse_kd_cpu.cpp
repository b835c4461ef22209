// Sparse-teacher KD rows on CPU with ATen (issue 28): the same math as sparse_kd.cu (include/minipuzzle/sparse_kd.h),
// in float32, in chunks of rows so temporaries stay small. Terms of zero probability are 0 (not 0 * -inf).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "kernels/sparse_kd_internal.h"
#include "minipuzzle/error.h"

namespace mp::detail {

void sparse_kd_rows_cpu(const at::Tensor& student, const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                        const at::Tensor& teacher_lse, const at::Tensor& labels, const KdOptions& options,
                        const at::Tensor& grad_scale, const at::Tensor& row_loss, const at::Tensor& grad) {
  const int64_t rows = student.size(0), vocab = student.size(1);
  const double T = options.temperature;
  const bool has_ce = labels.defined() && options.ce_weight != 0.0;
  const double scale = grad_scale.item<double>();
  const double inf = std::numeric_limits<double>::infinity();
  const int64_t chunk_rows = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(vocab, 1));

  for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int64_t r1 = std::min(rows, r0 + chunk_rows), n = r1 - r0;
    const at::Tensor z = student.slice(0, r0, r1).to(at::kFloat);
    const at::Tensor x = z / T;
    const at::Tensor ids = teacher_ids.slice(0, r0, r1).to(at::kLong);
    const at::Tensor tz = teacher_logits.slice(0, r0, r1).to(at::kFloat) / T;
    const at::Tensor lse_t = teacher_lse.slice(0, r0, r1).to(at::kFloat).unsqueeze(1);

    const at::Tensor lse_all = at::logsumexp(x, {1}, true);
    const at::Tensor log_q = x - lse_all;
    // Outside K: the student's tail.
    const at::Tensor in_top = at::zeros({n, vocab}, at::kBool).scatter_(1, ids, true);
    const at::Tensor x_tail = at::where(in_top, -inf, x);
    const at::Tensor lse_tail = at::logsumexp(x_tail, {1}, true);  // -inf when K is the whole vocabulary
    const at::Tensor has_tail = at::isfinite(lse_tail);

    const at::Tensor log_p = tz - lse_t, p = log_p.exp();
    const at::Tensor p_tail = at::clamp_min(-at::expm1(at::logsumexp(tz, {1}, true) - lse_t), 0.0);
    const at::Tensor tail_on = (p_tail > 0) & has_tail;
    const at::Tensor kl_top = at::where(p > 0, p * (log_p - log_q.gather(1, ids)), 0.0).sum(1);
    const at::Tensor kl_tail = at::where(tail_on, p_tail * (p_tail.log() - (lse_tail - lse_all)), 0.0).squeeze(1);
    at::Tensor loss = options.kd_weight * T * T * (kl_top + kl_tail);

    // d D / d x: q - p on K, q - p_tail * q / q_tail outside.
    const at::Tensor tail_coef = at::where(tail_on, p_tail, 0.0);
    const at::Tensor lse_tail_safe = at::where(has_tail, lse_tail, 0.0);
    at::Tensor d = log_q.exp() - tail_coef * (x_tail - lse_tail_safe).exp();
    d.scatter_add_(1, ids, -p);
    at::Tensor g = (scale * options.kd_weight * T) * d;

    if (labels.defined()) {
      const at::Tensor chunk_labels = labels.slice(0, r0, r1);
      const at::Tensor valid = chunk_labels != options.ignore_index;
      if (has_ce) {
        const at::Tensor out_of_range = valid & ((chunk_labels < 0) | (chunk_labels >= vocab));
        if (out_of_range.any().item<bool>()) {
          const int64_t bad = out_of_range.nonzero()[0][0].item<int64_t>();
          fail("sparse_kd_loss: label ", chunk_labels[bad].item<int64_t>(), " at token ", r0 + bad,
               " is outside the vocabulary [0, ", vocab, ") and is not ignore_index (", options.ignore_index, ")");
        }
        const at::Tensor index = at::where(valid, chunk_labels, 0).unsqueeze(1);
        const at::Tensor log_softmax_z = T == 1.0 ? log_q : at::log_softmax(z, 1);
        loss = loss - options.ce_weight * log_softmax_z.gather(1, index).squeeze(1);
        at::Tensor softmax_z = log_softmax_z.exp();
        softmax_z.scatter_add_(1, index, at::full({n, 1}, -1.0f, softmax_z.options()));
        g = g + (scale * options.ce_weight) * softmax_z;
      }
      loss = at::where(valid, loss, 0.0);
      g = at::where(valid.unsqueeze(1), g, 0.0);
    }
    row_loss.slice(0, r0, r1).copy_(loss);
    if (grad.defined()) grad.slice(0, r0, r1).copy_(g);
  }
}

}  // namespace mp::detail
