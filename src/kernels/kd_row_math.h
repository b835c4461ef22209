// The per-element and per-row arithmetic of the CUDA KD kernel (kd_loss.cu), written once for device and host so
// the CPU test test_kd_row_math.cpp can check the kernel's own formulas against the ATen reference on a machine
// without a GPU. No torch here. The kernel supplies the slicing, reductions and memory traffic; this file only
// says what is accumulated per element and how row statistics turn into the loss and the gradient.
//
// Notation: z raw logits, c = log2(e) / T, so z c = (z / T) log2(e): exponents are taken in base 2 with one FMA.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MP_KD_HD __host__ __device__ __forceinline__
#else
#define MP_KD_HD inline
#endif

namespace mp::kernels {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kKindForwardKl = 0, kKindReverseKl = 1, kKindJsd = 2;  // KdKind's values

MP_KD_HD float kd_exp2(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);  // ex2.approx under --use_fast_math
#else
  return std::exp2(x);
#endif
}
MP_KD_HD float kd_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
MP_KD_HD float kd_log2(float x) {
#if defined(__CUDA_ARCH__)
  return __log2f(x);
#else
  return std::log2(x);
#endif
}

template <int KIND>
struct KdRowMath {
  // Set by begin() from the row maxima (stage 1).
  float temperature, inv_t, c, beta;
  float max_zs, max_s2, max_t2, max_z2;  // maxima; base-2 shifts of the exponents
  bool ce_own_sum;                       // CE needs its own sum of exps (T != 1)
  // Set by finish_sums() / finish_jsd().
  float log2_sum_s = 0, log2_sum_t = 0, log2_sum_z = 0, divergence = 0, kl_q_m = 0;
  float reverse_kl2 = 0;  // reverse KL in base-2 units
  float inv_sum_s = 0, inv_sum_t = 0;  // 1 / sums of exps: q = es inv_sum_s, p = et inv_sum_t

  MP_KD_HD void begin(float temperature_, float jsd_beta, float max_student, float max_teacher, bool has_ce) {
    temperature = temperature_;
    inv_t = 1.f / temperature;
    c = inv_t * kLog2e;
    beta = jsd_beta;
    max_zs = max_student;
    max_s2 = max_student * c;
    max_t2 = max_teacher * c;
    max_z2 = max_student * kLog2e;
    ce_own_sum = has_ce && temperature != 1.f;
  }

  // Stage 2, per element: sums of exps and the divergence's cross term (raw logit units).
  MP_KD_HD void accumulate_sums(float zs, float zt, float* sums) const {
    float es, et;
    accumulate_sums_keeping_exps(zs, zt, sums, es, et);
  }
  // The same, handing back the two exponentials: es = 2^(zs c - max_s2), et = 2^(zt c - max_t2). A kernel that
  // keeps them (kd_loss_tma.cu) writes the forward-KL gradient without exponentiating again.
  MP_KD_HD void accumulate_sums_keeping_exps(float zs, float zt, float* sums, float& es, float& et) const {
    const float a = kd_fma(zs, c, -max_s2), b = kd_fma(zt, c, -max_t2);
    es = kd_exp2(a);
    et = kd_exp2(b);
    sums[0] += es;
    sums[1] += et;
    // A zero weight times an infinite logit difference (teacher -inf) is a zero term, not NaN.
    if (KIND == kKindForwardKl) sums[2] += (et == 0.f) ? 0.f : et * (zt - zs);
    // Reverse KL in base-2 units with exactly the (a - b) the gradient uses, so that the gradient's
    // (log q - log p - D) cancels to the bit where the math says it does (e.g. a one-hot student).
    if (KIND == kKindReverseKl) sums[2] += (es == 0.f) ? 0.f : es * (a - b);
    if (ce_own_sum) sums[3] += kd_exp2(kd_fma(zs, kLog2e, -max_z2));
  }

  // After stage 2's reduction over the row. log2 q = (z c - max_s2) - log2 sum_s: the FMA is exact up to one
  // rounding of a small number, and the rounding of max_s2 is a shift shared by every exponent and by the sum,
  // so it cancels; folding max and log-sum into one offset would round away (z - max) at |logits| ~ 1e4.
  // ln sum exp(z c ln2) = ln2 (max_s2 + log2 sum_s), with the same rounded shift the sums used.
  MP_KD_HD void finish_sums(const float* sums) {
    inv_sum_s = 1.f / sums[0];
    inv_sum_t = 1.f / sums[1];
    log2_sum_s = kd_log2(sums[0]);
    log2_sum_t = kd_log2(sums[1]);
    log2_sum_z = ce_own_sum ? kd_log2(sums[3]) : log2_sum_s;  // CE at T = 1 (z = s when T = 1)
    if (KIND == kKindForwardKl)
      divergence = inv_t * (sums[2] / sums[1]) + kLn2 * ((max_s2 - max_t2) + (log2_sum_s - log2_sum_t));
    if (KIND == kKindReverseKl) {
      reverse_kl2 = ((sums[2] / sums[0]) - log2_sum_s) + log2_sum_t;
      divergence = kLn2 * reverse_kl2;
    }
  }

  MP_KD_HD float log2_q(float zs) const { return kd_fma(zs, c, -max_s2) - log2_sum_s; }
  MP_KD_HD float log2_p(float zt) const { return kd_fma(zt, c, -max_t2) - log2_sum_t; }

  // Stage 3 (JSD only), per element: KL(p || m) and KL(q || m) terms in base 2, m = beta p + (1 - beta) q.
  MP_KD_HD void accumulate_jsd(float zs, float zt, float* kl) const {
    const float lq = log2_q(zs), lp = log2_p(zt);
    const float q = kd_exp2(lq), p = kd_exp2(lp);
    const float m = beta * p + (1.f - beta) * q;
    if (m > 0.f) {  // m can flush to 0 only when both terms are ~1e-38: their contribution is 0
      const float log2_m = kd_log2(m);
      if (p > 0.f) kl[0] += p * (lp - log2_m);
      if (q > 0.f) kl[1] += q * (lq - log2_m);
    }
  }
  MP_KD_HD void finish_jsd(const float* kl) {
    const float kl_p_m = kLn2 * kl[0];
    kl_q_m = kLn2 * kl[1];
    divergence = beta * kl_p_m + (1.f - beta) * kl_q_m;
  }

  // The row's loss: kd_weight T^2 D + ce_weight CE, CE = ln sum exp(z) - z_label. The CE sum used the rounded
  // shift max_z2, whose exact residual the FMA gives.
  MP_KD_HD float row_loss(float kd_weight, float ce_weight, bool has_ce, float label_logit) const {
    float loss = kd_weight * temperature * temperature * divergence;
    if (has_ce) {
      const float shift_residual = kd_fma(max_zs, kLog2e, -max_z2);
      loss += ce_weight * ((max_zs - label_logit) + kLn2 * (log2_sum_z - shift_residual));
    }
    return loss;
  }

  // Stage 4, per element: d loss / d z = kd_factor dD/ds + ce_factor (softmax(z) - [is label]), with
  // kd_factor = scale kd_weight T and ce_factor = scale ce_weight.
  MP_KD_HD float gradient(float zs, float zt, bool is_label, bool has_ce, float kd_factor, float ce_factor) const {
    const float lq = log2_q(zs), lp = log2_p(zt);
    const float q = kd_exp2(lq);
    float d = 0.f;
    if (KIND == kKindForwardKl) d = q - kd_exp2(lp);
    if (KIND == kKindReverseKl) {
      const float a = kd_fma(zs, c, -max_s2), b = kd_fma(zt, c, -max_t2);
      d = q > 0.f ? q * kLn2 * ((((a - b) - log2_sum_s) + log2_sum_t) - reverse_kl2) : 0.f;
    }
    if (KIND == kKindJsd) {
      const float m = beta * kd_exp2(lp) + (1.f - beta) * q;
      d = (q > 0.f && m > 0.f) ? (1.f - beta) * q * (kLn2 * (lq - kd_log2(m)) - kl_q_m) : 0.f;
    }
    float value = kd_factor * d;
    if (has_ce) {
      float softmax_z = ce_own_sum ? kd_exp2(kd_fma(zs, kLog2e, -max_z2) - log2_sum_z) : q;
      if (is_label) softmax_z -= 1.f;
      value += ce_factor * softmax_z;
    }
    return value;
  }

  // Stage 4 of forward KL from exponentials kept from stage 2 (no exp here): q = es q_scale, p = et p_scale,
  // d loss / d z = kd_factor (q - p) + ce_factor (q - [is label]). CE shares q only at T = 1 (no own sum).
  // q_scale = inv_sum_s for exps taken at the row maximum; exps taken at a part's own maximum (KdOnlinePart)
  // also carry that part's rescale factor.
  MP_KD_HD float forward_kl_gradient_from_exps(float es, float et, bool is_label, bool has_ce, float kd_factor,
                                                float ce_factor, float q_scale, float p_scale) const {
    const float q = es * q_scale;
    float value = kd_factor * (q - et * p_scale);
    if (has_ce) value += ce_factor * (is_label ? q - 1.f : q);
    return value;
  }
};

// Stage 2 of forward KL in online form (cluster_tma): a part of a row (one thread's elements, then a block's,
// then the cluster's) keeps its own maxima and its sums relative to them, so the row needs one round of
// reductions instead of two (maxima, then sums). Parts merge by rescaling to the larger maximum; the merged
// sums are those KdRowMath::finish_sums takes, with the row maxima given to begin().
struct KdOnlinePart {
  float max_s = -INFINITY, max_t = -INFINITY;  // raw-logit maxima of the part
  float sum_s = 0.f, sum_t = 0.f, cross = 0.f;  // sum 2^(zs c - shift(max_s)), the same for t, sum et (zt - zs)

  // The base-2 shift KdRowMath::begin uses for a maximum (max c, rounded once); 0 for an empty part (all -inf),
  // whose exponents are then -inf and exps 0, never -inf - -inf.
  MP_KD_HD static float shift(float max, float c) { return max == -INFINITY ? 0.f : max * c; }
  // Factor taking sums relative to maximum `from` to sums relative to `to` >= from; 0 for an empty part.
  MP_KD_HD static float factor(float from, float to, float c) {
    return from == -INFINITY ? 0.f : kd_exp2(shift(from, c) - shift(to, c));
  }
  MP_KD_HD void rescale_to(float new_max_s, float new_max_t, float c) {
    const float fs = factor(max_s, new_max_s, c), ft = factor(max_t, new_max_t, c);
    sum_s *= fs;
    sum_t *= ft;
    cross *= ft;
    max_s = new_max_s;
    max_t = new_max_t;
  }
};

}  // namespace mp::kernels
