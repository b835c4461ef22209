// KD loss against a sparse teacher (issue 28): the teacher is given per token by its top-k ids and logits and the
// log-sum-exp of its full row (what `minipuzzle teacher-logits` stores, docs/TEACHER_LOGITS.md), the student by
// its dense logits.
//
// Per valid token (label != ignore_index, or every token without labels), at temperature T, with K the stored ids:
//   teacher  p_i = exp(t_i / T - lse_T)  for i in K,   p_tail = 1 - sum_K p_i = -expm1(logsumexp_K(t / T) - lse_T)
//            (clamped at 0), where lse_T = log sum_v exp(t_v / T) over the WHOLE vocabulary (stored), so the tail
//            mass is exact
//   student  log q_v = s_v / T - logsumexp(s / T),     log q_tail = logsumexp_{v not in K}(s_v / T) - logsumexp(s / T)
//   D = sum_K p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail)
// i.e. forward KL between the teacher and student distributions coarsened to K plus one "tail" bucket (exact
// dense forward KL when K is the whole vocabulary, since then p_tail = 0). The loss per token is
//   kd_weight * T^2 * D + ce_weight * CE(student logits at T = 1, label)
// reduced like kd_loss (mean over valid tokens or sum). d D / d s_v = (q_v - p_v) / T for v in K and
// (q_v - p_tail * q_v / q_tail) / T outside K.
// Only forward KL is defined here (options.divergence must be forward_kl). The ids of one row must be distinct
// and within [0, V). Zero-probability terms (p_i = 0, or p_tail = 0) contribute 0.
//
// Student logits: float32, float16 or bfloat16 [*, V]; teacher ids int32 or int64 [*, k]; teacher logits float32
// [*, k] (raw, not divided by T); teacher lse float32 [*] (at the loss's temperature). CUDA tensors run
// src/kernels/sparse_kd.cu (one block per row, a bitmask of K in shared memory; one read of the student row for
// the statistics and one for the gradient), CPU tensors the ATen twin (sparse_kd_cpu.cpp) in float32.
#pragma once
#include <ATen/core/Tensor.h>

#include "minipuzzle/kd.h"

namespace mp {

// Differentiable (w.r.t. student_logits only; the teacher is constant). Scalar float32.
at::Tensor sparse_kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                          const at::Tensor& teacher_logits, const at::Tensor& teacher_lse,
                          const at::Tensor& labels = at::Tensor(), const KdOptions& options = KdOptions());

// Without autograd: the loss and d loss / d student logits for a loss gradient of 1.
KdLossAndGrad sparse_kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_ids,
                                      const at::Tensor& teacher_logits, const at::Tensor& teacher_lse,
                                      const at::Tensor& labels = at::Tensor(), const KdOptions& options = KdOptions());

// Fused lm_head + sparse KD (the linear_kd of kd.h for a sparse teacher): student hidden [*, H] and lm_head [V, H]
// -> the same loss as sparse_kd_loss(hidden @ lm_head^T, ...), made a chunk of tokens at a time (options'
// token_chunk / logits_buffer_bytes) so that full [tokens, V] logits never exist; the gradient of each chunk is
// written over its logits and folded into d hidden and d lm_head by two GEMMs. Differentiable w.r.t. hidden and
// lm_head (each only if it requires grad).
at::Tensor linear_sparse_kd(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                            const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                            const at::Tensor& teacher_lse, const at::Tensor& labels = at::Tensor(),
                            const LinearKdOptions& options = LinearKdOptions());
LinearKdLossAndGrads linear_sparse_kd_loss_and_grads(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                                     const at::Tensor& teacher_ids, const at::Tensor& teacher_logits,
                                                     const at::Tensor& teacher_lse, const at::Tensor& labels,
                                                     const LinearKdOptions& options, bool want_grad_hidden = true,
                                                     bool want_grad_weight = true);

}  // namespace mp
