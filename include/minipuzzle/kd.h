// Logit distillation losses: the public face of the KD kernels (issue 7).
//
// Two entry points, both autograd functions the trainer calls like any other loss:
//   kd_loss    student logits [*, V] and teacher logits [*, V] -> scalar loss; its gradient (d loss / d student
//              logits) is computed in the same pass as the loss (one read of both logits, one write of the
//              gradient on the GPU) and handed to autograd at backward.
//   linear_kd  student hidden states [*, Hs] and lm_head [V, Hs] (plus the teacher's hidden states and lm_head, or
//              its logits) -> scalar loss; the logits are made in chunks of tokens so full [N, V] logits never
//              exist, and backward yields d hidden and d lm_head.
//
// The loss per valid token (label != ignore_index, or every token when no labels are given) is
//     kd_weight * T^2 * D(teacher_T || student_T)  +  ce_weight * CE(student logits at T = 1, label)
// where x_T = softmax(logits / T), and D is one of
//     forward_kl : KL(p || q) = sum p (log p - log q)              (p teacher, q student, both at temperature T)
//     reverse_kl : KL(q || p)
//     jsd        : beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta p + (1 - beta) q,  0 < beta < 1
// Reduction: mean over valid tokens (0 when no token is valid) or sum. Teacher logits of -inf are tokens of zero
// teacher probability: they contribute 0 to forward KL and JSD (reverse KL is then +inf, as the math says).
// The teacher is a constant: no gradient flows to teacher logits, hidden states or weights.
// Backward hands out the gradient stored by forward (once: a second backward through the same loss throws);
// it reads the loss gradient (one scalar, a host sync on CUDA) and scales only when that is not 1.
// With ce_weight != 0, labels outside [0, V) that are not ignore_index throw on CPU; on CUDA (no host sync)
// they make the loss NaN.
//
// Logits may be float32, float16 or bfloat16 (student and teacher the same dtype); all math is float32; the
// gradient has the student logits' dtype. CUDA tensors run the CUDA kernels, CPU tensors the ATen path.
// On CUDA a cluster of blocks holds each row in shared memory (one HBM read of both logits, one write of the
// gradient). Forward KL on 16-bit logits (CE only at T = 1) takes cluster_tma: persistent blocks streaming rows
// in with TMA copies and keeping the exponentials for the gradient; other cases take cluster_smem (two_pass
// for rows too long for shared memory).
// KdOptions::kernel forces one kernel shape (cluster_tma, cluster_pipelined, cluster_smem, two_pass; automatic is
// the default): kd_kernel.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "minipuzzle/kd_kernel.h"

namespace mp {

enum class KdDivergence { forward_kl, reverse_kl, jsd };
enum class KdReduction { mean, sum };

struct KdOptions {
  KdDivergence divergence = KdDivergence::forward_kl;
  double temperature = 1.0;    // T > 0; the divergence is multiplied by T^2 so gradient scales stay comparable
  double jsd_beta = 0.5;       // only for jsd, strictly between 0 and 1
  double kd_weight = 1.0;      // weight of T^2 * D
  double ce_weight = 0.0;      // weight of the cross-entropy on labels (needs labels when > 0)
  int64_t ignore_index = -100; // tokens whose label equals this are left out of loss, gradient and the mean
  KdReduction reduction = KdReduction::mean;
  // kd_loss only: write the gradient into the student logits' own buffer (saves N*V of memory). The student
  // logits' values are destroyed by the forward call and their version counter is bumped, so autograd refuses
  // any other use of them that saved their values. Needs contiguous student logits.
  bool gradient_in_place = false;
  // CUDA only (ignored on CPU): which kernel shape runs the rows of kd_loss and linear_kd (kd_kernel.h), e.g. to rule
  // a cluster kernel in or out when comparing runs; automatic chooses by dtype, divergence and vocabulary size.
  KdKernel kernel = KdKernel::automatic;
  // CUDA cluster_tma only: 256 asks for the narrow block (two blocks per SM, clusters of 16); 0 keeps 512 workers
  // (one block per SM). The benchmark and the GPU test time and check both.
  int tma_workers = 0;
};

struct LinearKdOptions : KdOptions {
  // Tokens per chunk; 0 chooses it so the chunk's student logits take at most logits_buffer_bytes. The teacher's
  // logits (when made from hidden states) are made a quarter chunk at a time, so the extra memory is about
  // 1.25 * logits_buffer_bytes. Bigger chunks mean fewer passes of the d lm_head accumulation over [V, Hs].
  int64_t token_chunk = 0;
  // 384 MiB: 1536-token chunks at V = 131072 bf16, 480 MiB extra. H100, N 8192, H 4096, timed interleaved with
  // the GEMMs (bench_linear_kd): 1.08x its own GEMM sequence and 1.13x four plain full-size cuBLAS GEMMs of the
  // same flops; 1024 tokens 1.11x (320 MiB), 2048 1.13x (640 MiB), 3072 1.09x (960 MiB), 4096 1.08x but 1.25 GiB.
  int64_t logits_buffer_bytes = int64_t(384) << 20;
};

// Differentiable KD loss (scalar float32). labels: int64 [*] (the logits' leading shape) or undefined.
at::Tensor kd_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                   const at::Tensor& labels = at::Tensor(), const KdOptions& options = KdOptions());

// Differentiable fused lm_head + KD loss with the teacher given as hidden states and its lm_head.
// student_hidden [*, Hs], student_weight [V, Hs], teacher_hidden [*, Ht], teacher_weight [V, Ht].
// Gradients flow to student_hidden and student_weight (each only if it requires grad).
at::Tensor linear_kd(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                     const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                     const at::Tensor& labels = at::Tensor(), const LinearKdOptions& options = LinearKdOptions());

// The same with the teacher given as logits [*, V] (e.g. precomputed or from a teacher run elsewhere).
at::Tensor linear_kd_from_teacher_logits(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                         const at::Tensor& teacher_logits, const at::Tensor& labels = at::Tensor(),
                                         const LinearKdOptions& options = LinearKdOptions());

// Without autograd: loss and d loss / d student logits (for a loss gradient of 1) in one call. With
// gradient_in_place, grad_student_logits shares the student logits' storage. Used by the benchmarks and by
// callers that drive backward themselves.
struct KdLossAndGrad {
  at::Tensor loss;                 // float32 scalar
  at::Tensor grad_student_logits;  // student logits' shape and dtype
};
KdLossAndGrad kd_loss_and_grad(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                               const at::Tensor& labels = at::Tensor(), const KdOptions& options = KdOptions());

// Without autograd: loss, d hidden and d lm_head (for a loss gradient of 1). teacher_hidden/teacher_weight or
// teacher_logits: exactly one of the two forms must be defined. Undefined grads when want_* is false.
struct LinearKdLossAndGrads {
  at::Tensor loss;                 // float32 scalar
  at::Tensor grad_student_hidden;  // student_hidden's shape and dtype
  at::Tensor grad_student_weight;  // student_weight's shape and dtype
};
LinearKdLossAndGrads linear_kd_loss_and_grads(const at::Tensor& student_hidden, const at::Tensor& student_weight,
                                              const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                                              const at::Tensor& teacher_logits, const at::Tensor& labels,
                                              const LinearKdOptions& options, bool want_grad_hidden = true,
                                              bool want_grad_weight = true);

}  // namespace mp
