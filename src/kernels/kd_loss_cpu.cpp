// KD loss rows on CPU with ATen: the same math as kd_loss.cu, written elementwise (log-probabilities first, then
// p * (log p - log q) per element), in float32, in chunks of rows so temporaries stay small.
// Zero-probability terms (teacher logit -inf, or an underflowed probability) are masked to 0 rather than left as
// 0 * -inf = NaN, which is what the limit p log p -> 0 says.
#include <ATen/ATen.h>

#include "kernels/kd_internal.h"
#include "minipuzzle/error.h"

namespace mp::detail {

namespace {

// Zero where `keep` is false (also where the masked value is NaN).
at::Tensor masked(const at::Tensor& keep, const at::Tensor& value) { return at::where(keep, value, 0.0); }

}  // namespace

void kd_rows_cpu(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                 const KdOptions& options, const at::Tensor& grad_scale, const at::Tensor& row_loss,
                 const at::Tensor& grad) {
  const int64_t rows = student.size(0), vocab = student.size(1);
  const double t_value = options.temperature, beta = options.jsd_beta;
  const bool has_ce = labels.defined() && options.ce_weight != 0.0;
  const double scale = grad_scale.item<double>();
  // About 4M floats per temporary: large enough for ATen's threads, small enough for a laptop's cache budget.
  const int64_t chunk_rows = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(vocab, 1));

  for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int64_t r1 = std::min(rows, r0 + chunk_rows);
    const at::Tensor z = student.slice(0, r0, r1).to(at::kFloat);
    const at::Tensor s = z / t_value;
    const at::Tensor t = teacher.slice(0, r0, r1).to(at::kFloat) / t_value;
    const at::Tensor log_q = at::log_softmax(s, 1);  // (x - max) - log sum: precise for |logits| ~ 1e4
    const at::Tensor log_p = at::log_softmax(t, 1);
    const at::Tensor q = log_q.exp(), p = log_p.exp();

    at::Tensor divergence, d_divergence;  // D per row, dD/ds per element
    switch (options.divergence) {
      case KdDivergence::forward_kl:
        divergence = masked(p > 0, p * (log_p - log_q)).sum(1);
        d_divergence = q - p;
        break;
      case KdDivergence::reverse_kl: {
        divergence = masked(q > 0, q * (log_q - log_p)).sum(1);
        d_divergence = masked(q > 0, q * (log_q - log_p - divergence.unsqueeze(1)));
        break;
      }
      case KdDivergence::jsd: {
        const at::Tensor m = beta * p + (1.0 - beta) * q;
        const at::Tensor log_m = m.log(), m_positive = m > 0;
        const at::Tensor kl_p_m = masked(m_positive & (p > 0), p * (log_p - log_m)).sum(1);
        const at::Tensor kl_q_m = masked(m_positive & (q > 0), q * (log_q - log_m)).sum(1);
        divergence = beta * kl_p_m + (1.0 - beta) * kl_q_m;
        d_divergence = masked(m_positive & (q > 0), (1.0 - beta) * q * (log_q - log_m - kl_q_m.unsqueeze(1)));
        break;
      }
    }
    at::Tensor loss = options.kd_weight * t_value * t_value * divergence;
    at::Tensor g = (scale * options.kd_weight * t_value) * d_divergence;

    if (labels.defined()) {
      const at::Tensor chunk_labels = labels.slice(0, r0, r1);
      const at::Tensor valid = chunk_labels != options.ignore_index;
      if (has_ce) {
        const at::Tensor out_of_range = valid & ((chunk_labels < 0) | (chunk_labels >= vocab));
        if (out_of_range.any().item<bool>()) {
          const int64_t bad = out_of_range.nonzero()[0][0].item<int64_t>();
          fail("kd_loss: label ", chunk_labels[bad].item<int64_t>(), " at token ", r0 + bad,
               " is outside the vocabulary [0, ", vocab, ") and is not ignore_index (", options.ignore_index,
               "); fix the labels or set ignore_index to the padding label");
        }
        const at::Tensor index = at::where(valid, chunk_labels, 0).unsqueeze(1);
        const at::Tensor log_softmax_z = t_value == 1.0 ? log_q : at::log_softmax(z, 1);
        loss = loss - options.ce_weight * log_softmax_z.gather(1, index).squeeze(1);
        at::Tensor softmax_z = t_value == 1.0 ? q.clone() : log_softmax_z.exp();
        softmax_z.scatter_add_(1, index, at::full({r1 - r0, 1}, -1.0f, softmax_z.options()));
        g = g + (scale * options.ce_weight) * softmax_z;
      }
      loss = masked(valid, loss);
      g = masked(valid.unsqueeze(1), g);
    }
    row_loss.slice(0, r0, r1).copy_(loss);
    // Last: with an in-place gradient in float32, z above aliases these rows.
    if (grad.defined()) grad.slice(0, r0, r1).copy_(g);
  }
}

}  // namespace mp::detail
