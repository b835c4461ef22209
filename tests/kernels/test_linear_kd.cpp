// CPU tests of mp::linear_kd (fused lm_head + KD loss, chunked over tokens) against the reference: full logits
// made in float64, the KD reference of kd_reference.h (ATen + autograd), and the chain rule for d hidden and d W.
// Tolerance as for kd_loss: float32 within 1e-5 (loss relative to max(1, |loss|), gradients relative to their
// largest magnitude).
#include <ATen/ATen.h>

#include <cmath>

#include "catch.h"
#include "kd_reference.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kd.h"

namespace {

using kd_test::reference_kd;
using kd_test::relative_max_error;

struct LinearCase {
  at::Tensor h, w, th, tw, labels;
};

LinearCase make_linear_case(int64_t tokens, int64_t hs, int64_t ht, int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  LinearCase c;
  c.h = at::randn({tokens, hs});
  c.w = at::randn({vocab, hs}) * (2.0 / std::sqrt(double(hs)));
  c.th = at::randn({tokens, ht});
  c.tw = at::randn({vocab, ht}) * (2.0 / std::sqrt(double(ht)));
  c.labels = at::randint(0, vocab, {tokens}, at::kLong);
  c.labels.masked_fill_(at::rand({tokens}) < 0.2, -100);
  return c;
}

struct LinearReference {
  double loss;
  at::Tensor grad_h, grad_w;
};

LinearReference reference_linear(const LinearCase& c, const at::Tensor& teacher_logits, const mp::KdOptions& o) {
  const at::Tensor h = c.h.to(at::kDouble), w = c.w.to(at::kDouble);
  const auto ref = reference_kd(at::matmul(h, w.t()), teacher_logits, c.labels, o);
  return {ref.loss.item<double>(), at::matmul(ref.grad, w), at::matmul(ref.grad.t(), h)};
}

at::Tensor teacher_logits_of(const LinearCase& c) { return at::matmul(c.th.to(at::kDouble), c.tw.to(at::kDouble).t()); }

void check_close(double loss, const at::Tensor& grad_h, const at::Tensor& grad_w, const LinearReference& ref,
                 double tol = 1e-5) {
  INFO("loss " << loss << " reference " << ref.loss);
  CHECK(std::abs(loss - ref.loss) <= tol * std::max(1.0, std::abs(ref.loss)));
  const double eh = relative_max_error(grad_h, ref.grad_h), ew = relative_max_error(grad_w, ref.grad_w);
  INFO("d hidden error " << eh << ", d weight error " << ew);
  CHECK(eh <= tol);
  CHECK(ew <= tol);
}

}  // namespace

TEST_CASE("linear_kd with a teacher lm_head equals full-logits KD, over uneven chunks", "[kd][linear]") {
  const LinearCase c = make_linear_case(50, 32, 48, 1003, 5);
  for (int64_t chunk : {16, 7, 50, 64}) {
    for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
      mp::LinearKdOptions o;
      o.divergence = d;
      o.temperature = 2.0;
      o.ce_weight = 0.2;
      o.token_chunk = chunk;
      INFO("chunk " << chunk << " divergence " << int(d));
      // The teacher's float32 logits are what the fused path sees; the reference gets them in float64 from the
      // float32 product so that only the fused path's own error is measured.
      const auto ref = reference_linear(c, at::matmul(c.th, c.tw.t()), o);
      const auto got = mp::linear_kd_loss_and_grads(c.h, c.w, c.th, c.tw, at::Tensor(), c.labels, o);
      check_close(got.loss.item<double>(), got.grad_student_hidden, got.grad_student_weight, ref);
    }
  }
}

TEST_CASE("linear_kd from teacher logits, and automatic chunking from the buffer budget", "[kd][linear]") {
  const LinearCase c = make_linear_case(40, 24, 24, 517, 9);
  const at::Tensor teacher = teacher_logits_of(c).to(at::kFloat);
  mp::LinearKdOptions o;
  o.divergence = mp::KdDivergence::jsd;
  o.jsd_beta = 0.3;
  o.temperature = 1.5;
  o.logits_buffer_bytes = 9 * 517 * 4;  // 9 tokens per chunk
  const auto ref = reference_linear(c, teacher, o);
  const auto got = mp::linear_kd_loss_and_grads(c.h, c.w, {}, {}, teacher, c.labels, o);
  check_close(got.loss.item<double>(), got.grad_student_hidden, got.grad_student_weight, ref);
}

TEST_CASE("linear_kd autograd: gradients reach hidden states and lm_head, scaled by the loss gradient", "[kd][linear]") {
  const LinearCase c = make_linear_case(2 * 9, 16, 20, 301, 13);
  mp::LinearKdOptions o;
  o.temperature = 3.0;
  o.kd_weight = 0.8;
  o.ce_weight = 0.2;
  o.token_chunk = 5;
  const auto ref = reference_linear(c, at::matmul(c.th, c.tw.t()), o);
  at::Tensor h = c.h.reshape({2, 9, 16}).clone().requires_grad_(true);
  at::Tensor w = c.w.clone().requires_grad_(true);
  at::Tensor loss = mp::linear_kd(h, w, c.th.reshape({2, 9, 20}), c.tw, c.labels.reshape({2, 9}), o);
  (loss * 0.5).backward();
  check_close(loss.item<double>(), h.grad().reshape({18, 16}) * 2.0, w.grad() * 2.0, ref);

  // A frozen lm_head gets no gradient and costs no d W GEMM.
  at::Tensor h2 = c.h.clone().requires_grad_(true);
  mp::linear_kd(h2, c.w, c.th, c.tw, c.labels, o).backward();
  CHECK(relative_max_error(h2.grad(), ref.grad_h) <= 1e-5);
  CHECK(!c.w.grad().defined());
}

TEST_CASE("linear_kd in bfloat16 on CPU matches to bfloat16 precision", "[kd][linear]") {
  const LinearCase c = make_linear_case(24, 32, 32, 257, 17);
  mp::LinearKdOptions o;
  o.token_chunk = 8;
  LinearCase b = c;
  b.h = c.h.to(at::kBFloat16);
  b.w = c.w.to(at::kBFloat16);
  b.th = c.th.to(at::kBFloat16);
  b.tw = c.tw.to(at::kBFloat16);
  // Reference from the same rounded inputs; the fused path also rounds logits and gradients to bfloat16.
  const auto ref = reference_linear(b, at::matmul(b.th.to(at::kDouble), b.tw.to(at::kDouble).t()), o);
  const auto got = mp::linear_kd_loss_and_grads(b.h, b.w, b.th, b.tw, {}, b.labels, o);
  CHECK(got.grad_student_weight.scalar_type() == at::kBFloat16);
  check_close(got.loss.item<double>(), got.grad_student_hidden, got.grad_student_weight, ref, 3e-2);
}

TEST_CASE("linear_kd rejects an ambiguous or mismatched teacher", "[kd][linear]") {
  const LinearCase c = make_linear_case(8, 16, 16, 64, 19);
  const mp::LinearKdOptions o;
  const at::Tensor logits = at::matmul(c.th, c.tw.t());
  CHECK_THROWS_AS(mp::linear_kd_loss_and_grads(c.h, c.w, c.th, c.tw, logits, c.labels, o), mp::Error);
  CHECK_THROWS_AS(mp::linear_kd_loss_and_grads(c.h, c.w, {}, {}, {}, c.labels, o), mp::Error);
  CHECK_THROWS_AS(mp::linear_kd(c.h, c.w, c.th, c.tw.slice(0, 0, 63), c.labels, o), mp::Error);
  CHECK_THROWS_AS(mp::linear_kd(c.h.slice(0, 0, 7), c.w, c.th, c.tw, c.labels, o), mp::Error);
  CHECK_THROWS_AS(mp::linear_kd_from_teacher_logits(c.h, c.w, logits.slice(1, 0, 60), c.labels, o), mp::Error);
}
