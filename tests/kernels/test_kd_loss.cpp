// CPU tests of mp::kd_loss against the plain ATen + autograd reference (kd_reference.h, float64).
// Tolerance: float32 logits give the loss within 1e-5 (relative to max(1, |loss|)) and the gradient within 1e-5
// of the gradient's largest magnitude (max |g - g_ref| <= 1e-5 * max |g_ref|).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>

#include "catch.h"
#include "kd_reference.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kd.h"

namespace {

using kd_test::reference_kd;
using kd_test::relative_max_error;

struct Case {
  at::Tensor student, teacher, labels;
};

// Logits with spread like a language model's (a few large ones), labels with ~25% ignored.
Case make_case(int64_t tokens, int64_t vocab, uint64_t seed, bool with_labels, double spread = 3.0) {
  at::manual_seed(seed);
  Case c;
  c.student = at::randn({tokens, vocab}) * spread;
  c.teacher = c.student * 0.5 + at::randn({tokens, vocab}) * spread;
  if (with_labels) {
    c.labels = at::randint(0, vocab, {tokens}, at::kLong);
    c.labels.masked_fill_(at::rand({tokens}) < 0.25, -100);
    c.labels[0] = 3;  // at least one valid token
  }
  return c;
}

void check_against_reference(const Case& c, const mp::KdOptions& o, double tol = 1e-5) {
  const auto ref = reference_kd(c.student, c.teacher, c.labels, o);
  const auto got = mp::kd_loss_and_grad(c.student, c.teacher, c.labels, o);
  const double ref_loss = ref.loss.item<double>(), loss = got.loss.item<double>();
  INFO("loss " << loss << " reference " << ref_loss);
  REQUIRE(std::isfinite(loss));
  CHECK(std::abs(loss - ref_loss) <= tol * std::max(1.0, std::abs(ref_loss)));
  REQUIRE(got.grad_student_logits.sizes() == c.student.sizes());
  REQUIRE(got.grad_student_logits.scalar_type() == c.student.scalar_type());
  REQUIRE(!at::isnan(got.grad_student_logits).any().item<bool>());
  const double err = relative_max_error(got.grad_student_logits, ref.grad);
  INFO("gradient relative max error " << err);
  CHECK(err <= tol);
}

mp::KdOptions options(mp::KdDivergence d, double t = 1.0) {
  mp::KdOptions o;
  o.divergence = d;
  o.temperature = t;
  return o;
}

}  // namespace

TEST_CASE("forward KL equals log_softmax + kl_div, T = 1 and T != 1, vocab not a multiple of 8", "[kd]") {
  for (int64_t vocab : {1003, 4099}) {
    for (double t : {1.0, 2.5, 0.7}) {
      INFO("vocab " << vocab << " T " << t);
      check_against_reference(make_case(37, vocab, 1 + vocab, false), options(mp::KdDivergence::forward_kl, t));
    }
  }
}

TEST_CASE("masked tokens (ignore_index) leave the mean and get zero gradient", "[kd]") {
  Case c = make_case(64, 1003, 7, true);
  mp::KdOptions o = options(mp::KdDivergence::forward_kl, 2.0);
  check_against_reference(c, o);
  const auto got = mp::kd_loss_and_grad(c.student, c.teacher, c.labels, o);
  const at::Tensor ignored = c.labels == -100;
  REQUIRE(ignored.any().item<bool>());
  CHECK(got.grad_student_logits.index({ignored}).abs().max().item<double>() == 0.0);
  o.ignore_index = 5;  // another padding id
  c.labels.masked_fill_(c.labels == -100, 5);
  check_against_reference(c, o);
}

TEST_CASE("reverse KL and JSD equal their references", "[kd]") {
  const Case c = make_case(41, 2051, 11, true);
  check_against_reference(c, options(mp::KdDivergence::reverse_kl, 1.0));
  check_against_reference(c, options(mp::KdDivergence::reverse_kl, 1.7));
  for (double beta : {0.5, 0.1, 0.9}) {
    mp::KdOptions o = options(mp::KdDivergence::jsd, 2.0);
    o.jsd_beta = beta;
    INFO("beta " << beta);
    check_against_reference(c, o);
  }
}

TEST_CASE("cross-entropy mixing, CE alone, and sum reduction", "[kd]") {
  const Case c = make_case(33, 1003, 13, true);
  for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
    for (double t : {1.0, 3.0}) {
      mp::KdOptions o = options(d, t);
      o.kd_weight = 0.7;
      o.ce_weight = 0.3;
      INFO("divergence " << int(d) << " T " << t);
      check_against_reference(c, o);
    }
  }
  mp::KdOptions ce_only = options(mp::KdDivergence::forward_kl, 2.0);
  ce_only.kd_weight = 0;
  ce_only.ce_weight = 1;
  check_against_reference(c, ce_only);
  // CE alone must equal ATen's cross_entropy exactly as the trainer would compute it.
  const double ce = at::cross_entropy_loss(c.student.to(at::kDouble), c.labels).item<double>();
  CHECK(std::abs(mp::kd_loss(c.student, c.teacher, c.labels, ce_only).item<double>() - ce) <= 1e-5 * std::max(1.0, ce));
  mp::KdOptions summed = options(mp::KdDivergence::jsd, 1.5);
  summed.reduction = mp::KdReduction::sum;
  summed.ce_weight = 0.5;
  check_against_reference(c, summed);
}

TEST_CASE("logits of +-1e4 stay finite and exact", "[kd]") {
  Case c = make_case(24, 1003, 17, true);
  // A few extreme logits per row: the softmax saturates, nothing may overflow.
  c.student.index_put_({at::indexing::Slice(), 5}, 1e4);
  c.student.index_put_({at::indexing::Slice(), 6}, -1e4);
  c.teacher.index_put_({at::indexing::Slice(), 7}, 1e4);
  c.teacher.index_put_({at::indexing::Slice(), 8}, -1e4);
  c.teacher.index_put_({at::indexing::Slice(0, 12), 5}, 1e4 - 3);  // half the rows nearly agree on the top token
  for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
    for (double t : {1.0, 4.0}) {
      mp::KdOptions o = options(d, t);
      o.ce_weight = 0.25;
      INFO("divergence " << int(d) << " T " << t);
      check_against_reference(c, o);
    }
  }
}

TEST_CASE("teacher logits of -inf: zero probability contributes 0, no NaN", "[kd]") {
  Case c = make_case(19, 1003, 19, true);
  c.teacher.index_put_({at::indexing::Slice(), at::indexing::Slice(100, 300)}, -INFINITY);
  c.teacher.index_put_({3, at::indexing::Slice(0, 1000)}, -INFINITY);  // a row with only 3 possible tokens
  for (double t : {1.0, 2.0}) {
    check_against_reference(c, options(mp::KdDivergence::forward_kl, t));
    mp::KdOptions o = options(mp::KdDivergence::jsd, t);
    o.ce_weight = 0.5;
    check_against_reference(c, o);
  }
  // Reverse KL puts student mass where the teacher has none: infinite, as the math says (and as kl_div says).
  const auto reverse = mp::kd_loss_and_grad(c.student, c.teacher, c.labels, options(mp::KdDivergence::reverse_kl));
  CHECK(std::isinf(reverse.loss.item<double>()));
  CHECK(std::isinf(reference_kd(c.student, c.teacher, c.labels, options(mp::KdDivergence::reverse_kl)).loss.item<double>()));
}

TEST_CASE("the gradient written in place into the student logits", "[kd]") {
  const Case c = make_case(16, 1003, 23, true);
  mp::KdOptions o = options(mp::KdDivergence::forward_kl, 2.0);
  o.ce_weight = 0.1;
  o.gradient_in_place = true;
  const auto ref = reference_kd(c.student, c.teacher, c.labels, o);
  at::Tensor buffer = c.student.clone();
  const void* storage = buffer.data_ptr();
  const auto version = buffer.unsafeGetTensorImpl()->version_counter().current_version();
  const auto got = mp::kd_loss_and_grad(buffer, c.teacher, c.labels, o);
  CHECK(got.grad_student_logits.data_ptr() == storage);
  CHECK(buffer.unsafeGetTensorImpl()->version_counter().current_version() > version);
  CHECK(relative_max_error(buffer, ref.grad) <= 1e-5);
  CHECK(std::abs(got.loss.item<double>() - ref.loss.item<double>()) <= 1e-5 * std::max(1.0, ref.loss.abs().item<double>()));
  // Non-contiguous logits cannot hold the gradient in place.
  at::Tensor wide = at::zeros({16, 2006});
  CHECK_THROWS_AS(mp::kd_loss_and_grad(wide.slice(1, 0, 1003), c.teacher, c.labels, o), mp::Error);
}

TEST_CASE("autograd: backward gives the reference gradient, scaled by the loss gradient", "[kd]") {
  const Case c = make_case(3 * 5, 1003, 29, true);
  mp::KdOptions o = options(mp::KdDivergence::jsd, 1.5);
  o.ce_weight = 0.2;
  const auto ref = reference_kd(c.student, c.teacher, c.labels, o);
  // [B, S, V] logits and [B, S] labels, as the trainer has them.
  at::Tensor student = c.student.reshape({3, 5, 1003}).clone().requires_grad_(true);
  at::Tensor loss = mp::kd_loss(student, c.teacher.reshape({3, 5, 1003}), c.labels.reshape({3, 5}), o);
  REQUIRE(loss.requires_grad());
  (loss * 3.0).backward();
  CHECK(relative_max_error(student.grad().reshape({15, 1003}), ref.grad * 3.0) <= 1e-5);
  CHECK(std::abs(loss.item<double>() - ref.loss.item<double>()) <= 1e-5 * std::max(1.0, std::abs(ref.loss.item<double>())));

  // Through a producer: logits = h @ W^T, the gradient must reach h (the in-place buffer is the matmul output).
  at::manual_seed(3);
  at::Tensor h = at::randn({15, 24}).requires_grad_(true);
  const at::Tensor w = at::randn({1003, 24});
  o.gradient_in_place = true;
  mp::kd_loss(at::matmul(h, w.t()), c.teacher, c.labels, o).backward();
  const at::Tensor logits = at::matmul(h.detach(), w.t());
  const auto ref2 = reference_kd(logits, c.teacher, c.labels, o);
  CHECK(relative_max_error(h.grad(), at::matmul(ref2.grad, w.to(at::kDouble))) <= 1e-5);

  // Without grad mode nothing is stored and nothing is overwritten.
  const at::AutoGradMode no_grad(false);
  at::Tensor untouched = c.student.clone();
  mp::kd_loss(untouched, c.teacher, c.labels, o);
  CHECK(at::equal(untouched, c.student));
}

TEST_CASE("half-precision logits on CPU match the reference to their precision", "[kd]") {
  for (auto dtype : {at::kBFloat16, at::kHalf}) {
    Case c = make_case(20, 1003, 31, true);
    c.student = c.student.to(dtype);
    c.teacher = c.teacher.to(dtype);
    mp::KdOptions o = options(mp::KdDivergence::forward_kl, 2.0);
    o.ce_weight = 0.3;
    const auto ref = reference_kd(c.student, c.teacher, c.labels, o);  // from the same rounded inputs
    const auto got = mp::kd_loss_and_grad(c.student, c.teacher, c.labels, o);
    CHECK(got.grad_student_logits.scalar_type() == dtype);
    CHECK(std::abs(got.loss.item<double>() - ref.loss.item<double>()) <= 1e-5 * std::max(1.0, ref.loss.abs().item<double>()));
    // Only the final rounding of the gradient to 8 (bf16) or 11 (fp16) significant bits differs.
    CHECK(relative_max_error(got.grad_student_logits, ref.grad) <= (dtype == at::kBFloat16 ? 1.0 / 256 : 1.0 / 2048));
  }
}

TEST_CASE("edge cases: every token ignored, one token, bad inputs", "[kd]") {
  Case c = make_case(8, 1003, 37, true);
  c.labels.fill_(-100);
  const auto none = mp::kd_loss_and_grad(c.student, c.teacher, c.labels, options(mp::KdDivergence::forward_kl));
  CHECK(none.loss.item<double>() == 0.0);
  CHECK(none.grad_student_logits.abs().max().item<double>() == 0.0);

  const Case one = make_case(1, 7, 41, false);
  check_against_reference(one, options(mp::KdDivergence::jsd, 2.0));

  const Case ok = make_case(8, 1003, 43, true);
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher.slice(1, 0, 1000), ok.labels), mp::Error);
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher.to(at::kDouble), ok.labels), mp::Error);
  mp::KdOptions ce = options(mp::KdDivergence::forward_kl);
  ce.ce_weight = 1;
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher, at::Tensor(), ce), mp::Error);
  at::Tensor bad_labels = ok.labels.clone();
  bad_labels[1] = 1003;
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher, bad_labels, ce), mp::Error);
  mp::KdOptions bad_t = options(mp::KdDivergence::forward_kl, 0.0);
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher, ok.labels, bad_t), mp::Error);
  mp::KdOptions bad_beta = options(mp::KdDivergence::jsd);
  bad_beta.jsd_beta = 1.0;
  CHECK_THROWS_AS(mp::kd_loss(ok.student, ok.teacher, ok.labels, bad_beta), mp::Error);
}
