// The CUDA kernel's own formulas (src/kernels/kd_row_math.h, compiled here for the host) against the ATen +
// autograd reference, on a machine without a GPU. The kernel's plumbing (cp.async, shared memory, cluster
// reductions) is emulated plainly: each row is cut into the kernel's slices, each slice accumulates its partial
// sums, and the slices are combined in rank order, as the cluster does. Tolerance as the CPU tests: 1e-5.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "catch.h"
#include "kd_reference.h"
#include "kernels/kd_row_math.h"
#include "minipuzzle/kd.h"

namespace {

using mp::kernels::KdRowMath;

struct Emulated {
  double loss;
  at::Tensor grad;
};

// One row the way kd_loss_tma.cu computes it: parts of 32 elements (a thread's) take exps at their own maxima
// (KdOnlinePart), merge in order into the row's statistics, and the gradient uses the kept exps rescaled.
void emulate_online_row(KdRowMath<mp::kernels::kKindForwardKl>& math, const float* zs, const float* zt, int64_t v,
                        const mp::KdOptions& o, float max_s, float max_t, bool has_ce, int64_t label, float scale,
                        double& loss_sum, float* grad) {
  using mp::kernels::KdOnlinePart;
  constexpr int64_t kPart = 32;
  const float c = math.c;  // the row math was begun with the row maxima: same temperature, same rounding
  std::vector<float> es(v), et(v);
  std::vector<KdOnlinePart> parts;
  for (int64_t begin = 0; begin < v; begin += kPart) {
    KdOnlinePart part;
    for (int64_t i = begin; i < std::min(v, begin + kPart); ++i) {
      part.max_s = std::fmax(part.max_s, zs[i]);
      part.max_t = std::fmax(part.max_t, zt[i]);
    }
    KdRowMath<mp::kernels::kKindForwardKl> local;
    local.begin(float(o.temperature), 0.5f, part.max_s == -INFINITY ? 0.f : part.max_s,
                part.max_t == -INFINITY ? 0.f : part.max_t, has_ce);
    float sums[4] = {0, 0, 0, 0};
    for (int64_t i = begin; i < std::min(v, begin + kPart); ++i) local.accumulate_sums_keeping_exps(zs[i], zt[i], sums, es[i], et[i]);
    part.sum_s = sums[0];
    part.sum_t = sums[1];
    part.cross = sums[2];
    parts.push_back(part);
  }
  float sums[4] = {0, 0, 0, 0};
  for (KdOnlinePart part : parts) {  // merged at the row maxima, in order
    part.rescale_to(max_s, max_t, c);
    sums[0] += part.sum_s;
    sums[1] += part.sum_t;
    sums[2] += part.cross;
  }
  math.finish_sums(sums);
  loss_sum += math.row_loss(float(o.kd_weight), float(o.ce_weight), has_ce, has_ce ? zs[label] : 0.f);
  const float kd_factor = scale * float(o.kd_weight * o.temperature), ce_factor = scale * float(o.ce_weight);
  for (size_t k = 0; k < parts.size(); ++k) {
    const float q_scale = KdOnlinePart::factor(parts[k].max_s, max_s, c) * math.inv_sum_s;
    const float p_scale = KdOnlinePart::factor(parts[k].max_t, max_t, c) * math.inv_sum_t;
    for (int64_t i = int64_t(k) * kPart; i < std::min(v, int64_t(k + 1) * kPart); ++i)
      grad[i] = math.forward_kl_gradient_from_exps(es[i], et[i], i == label, has_ce, kd_factor, ce_factor, q_scale, p_scale);
  }
}

template <int KIND>
Emulated emulate_kernel(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                        const mp::KdOptions& o, int cluster_size, bool keep_exps) {
  const int64_t n = student.size(0), v = student.size(1);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const float* zs_all = s.data_ptr<float>();
  const float* zt_all = t.data_ptr<float>();
  at::Tensor grad = at::zeros({n, v});
  float* g_all = grad.data_ptr<float>();
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) valid += !labels.defined() || labels[r].item<int64_t>() != o.ignore_index;
  const float scale = o.reduction == mp::KdReduction::mean ? 1.f / float(std::max<int64_t>(valid, 1)) : 1.f;
  const int64_t slice = (v + cluster_size - 1) / cluster_size;
  double loss_sum = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = labels.defined() ? labels[r].item<int64_t>() : -1;
    if (labels.defined() && label == o.ignore_index) continue;  // the kernel writes zeros and a zero loss
    const bool has_ce = labels.defined() && o.ce_weight != 0;
    const float* zs = zs_all + r * v;
    const float* zt = zt_all + r * v;
    float max_s = -INFINITY, max_t = -INFINITY;
    for (int64_t i = 0; i < v; ++i) {
      max_s = std::fmax(max_s, zs[i]);
      max_t = std::fmax(max_t, zt[i]);
    }
    KdRowMath<KIND> math;
    math.begin(float(o.temperature), float(o.jsd_beta), max_s, max_t, has_ce);
    float sums[4] = {0, 0, 0, 0};
    if constexpr (KIND == mp::kernels::kKindForwardKl) {
      if (keep_exps) {  // cluster_tma's online form: its own emulation, above
        emulate_online_row(math, zs, zt, v, o, max_s, max_t, has_ce, label, scale, loss_sum, g_all + r * v);
        continue;
      }
    }
    for (int rank = 0; rank < cluster_size; ++rank) {  // per-slice partials, combined in rank order
      float part[4] = {0, 0, 0, 0};
      for (int64_t i = rank * slice; i < std::min(v, (rank + 1) * slice); ++i) math.accumulate_sums(zs[i], zt[i], part);
      // The kernel pads each slice in shared memory to whole 16-byte vectors with -inf: they must add nothing.
      for (int pad = 0; pad < 7; ++pad) math.accumulate_sums(-INFINITY, -INFINITY, part);
      for (int k = 0; k < 4; ++k) sums[k] += part[k];
    }
    math.finish_sums(sums);
    if (KIND == mp::kernels::kKindJsd) {
      float kl[2] = {0, 0};
      for (int rank = 0; rank < cluster_size; ++rank) {
        float part[2] = {0, 0};
        for (int64_t i = rank * slice; i < std::min(v, (rank + 1) * slice); ++i) math.accumulate_jsd(zs[i], zt[i], part);
        for (int pad = 0; pad < 7; ++pad) math.accumulate_jsd(-INFINITY, -INFINITY, part);
        kl[0] += part[0];
        kl[1] += part[1];
      }
      math.finish_jsd(kl);
    }
    loss_sum += math.row_loss(float(o.kd_weight), float(o.ce_weight), has_ce, has_ce ? zs[label] : 0.f);
    const float kd_factor = scale * float(o.kd_weight * o.temperature), ce_factor = scale * float(o.ce_weight);
    for (int64_t i = 0; i < v; ++i)
      g_all[r * v + i] = math.gradient(zs[i], zt[i], i == label, has_ce, kd_factor, ce_factor);
  }
  return {loss_sum * scale, grad};
}

Emulated emulate(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels,
                 const mp::KdOptions& o, int cluster_size = 8, bool keep_exps = false) {
  switch (o.divergence) {
    case mp::KdDivergence::forward_kl:
      return emulate_kernel<mp::kernels::kKindForwardKl>(student, teacher, labels, o, cluster_size, keep_exps);
    case mp::KdDivergence::reverse_kl:
      return emulate_kernel<mp::kernels::kKindReverseKl>(student, teacher, labels, o, cluster_size, false);
    case mp::KdDivergence::jsd: return emulate_kernel<mp::kernels::kKindJsd>(student, teacher, labels, o, cluster_size, false);
  }
  return {};
}

// keep_exps: the cluster_tma kernel's path (forward KL; CE only at T = 1), gradient from the stage-2 exponentials.
void check(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& labels, const mp::KdOptions& o,
           bool keep_exps = false) {
  const auto ref = kd_test::reference_kd(student, teacher, labels, o);
  const auto got = emulate(student, teacher, labels, o, keep_exps ? 16 : 8, keep_exps);
  const double ref_loss = ref.loss.item<double>();
  INFO("divergence " << int(o.divergence) << " T " << o.temperature << " ce " << o.ce_weight << " loss " << got.loss
                     << " reference " << ref_loss);
  CHECK(std::abs(got.loss - ref_loss) <= 1e-5 * std::max(1.0, std::abs(ref_loss)));
  const double err = kd_test::relative_max_error(got.grad, ref.grad);
  INFO("gradient relative max error " << err);
  CHECK(err <= 1e-5);
}

}  // namespace

TEST_CASE("the CUDA kernel's formulas equal the reference", "[kd][kernel_math]") {
  at::manual_seed(5);
  const int64_t n = 12, v = 2053;
  const at::Tensor student = at::randn({n, v}) * 3.0;
  const at::Tensor teacher = student * 0.5 + at::randn({n, v}) * 3.0;
  at::Tensor labels = at::randint(0, v, {n}, at::kLong);
  labels[2] = -100;
  for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
    for (double t : {1.0, 2.5, 0.6}) {
      for (double ce : {0.0, 0.3}) {
        mp::KdOptions o;
        o.divergence = d;
        o.temperature = t;
        o.ce_weight = ce;
        o.kd_weight = ce == 0 ? 1.0 : 0.7;
        o.jsd_beta = 0.3;
        check(student, teacher, labels, o);
      }
    }
  }
  mp::KdOptions no_labels;
  check(student, teacher, at::Tensor(), no_labels);
}

TEST_CASE("the CUDA kernel's formulas at logits of +-1e4 and teacher logits of -inf", "[kd][kernel_math]") {
  at::manual_seed(6);
  const int64_t n = 10, v = 1031;
  at::Tensor student = at::randn({n, v}) * 3.0;
  at::Tensor teacher = student * 0.5 + at::randn({n, v}) * 3.0;
  student.index_put_({at::indexing::Slice(), 5}, 1e4);
  student.index_put_({at::indexing::Slice(), 6}, -1e4);
  teacher.index_put_({at::indexing::Slice(), 7}, 1e4);
  teacher.index_put_({at::indexing::Slice(0, 5), 5}, 1e4 - 2);
  const at::Tensor labels = at::randint(0, v, {n}, at::kLong);
  for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
    for (double t : {1.0, 3.0}) {
      mp::KdOptions o;
      o.divergence = d;
      o.temperature = t;
      o.ce_weight = 0.25;
      check(student, teacher, labels, o);
    }
  }
  at::Tensor masked_teacher = at::randn({n, v}) * 3.0;
  masked_teacher.index_put_({at::indexing::Slice(), at::indexing::Slice(100, 400)}, -INFINITY);
  const at::Tensor plain_student = at::randn({n, v}) * 3.0;
  for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::jsd}) {
    mp::KdOptions o;
    o.divergence = d;
    o.temperature = 2.0;
    o.ce_weight = 0.5;
    check(plain_student, masked_teacher, labels, o);
  }
}

TEST_CASE("the cluster_tma kernel's forward-KL gradient from kept exponentials equals the reference", "[kd][kernel_math]") {
  at::manual_seed(7);
  const int64_t n = 10, v = 2053;
  at::Tensor student = at::randn({n, v}) * 3.0;
  at::Tensor teacher = student * 0.5 + at::randn({n, v}) * 3.0;
  at::Tensor labels = at::randint(0, v, {n}, at::kLong);
  labels[3] = -100;
  for (double t : {1.0, 2.5, 0.6}) {
    mp::KdOptions o;
    o.temperature = t;
    check(student, teacher, labels, o, true);
  }
  mp::KdOptions with_ce;  // CE shares the student softmax only at T = 1: the kernel takes that case alone
  with_ce.ce_weight = 0.3;
  with_ce.kd_weight = 0.7;
  check(student, teacher, labels, with_ce, true);
  // Extreme logits and masked teacher entries, as the other kernels.
  student.index_put_({at::indexing::Slice(), 5}, 1e4);
  student.index_put_({at::indexing::Slice(), 6}, -1e4);
  teacher.index_put_({at::indexing::Slice(), 7}, 1e4);
  teacher.index_put_({at::indexing::Slice(), at::indexing::Slice(100, 400)}, -INFINITY);
  check(student, teacher, labels, with_ce, true);
  mp::KdOptions hot;
  hot.temperature = 3.0;
  check(student, teacher, at::Tensor(), hot, true);
}
