// Sparse-teacher KD loss (issue 28, include/minipuzzle/sparse_kd.h) on CPU against an independent reference: the
// coarsened forward KL written out densely in float64 from the same stored rows (top-k ids and logits, full-row
// lse), element by element in plain loops, differentiated by autograd in float64. And at k = V against the dense
// kd_loss (the exact forward KL), to tight tolerance.
#include <ATen/ATen.h>

#include <cmath>
#include <set>
#include <vector>

#include "minipuzzle/kd.h"
#include "minipuzzle/sparse_kd.h"
#include "tests/catch.h"

using namespace mp;

namespace {

struct Stored {
  at::Tensor ids, logits, lse;  // [N, k] int64, [N, k] float, [N] float (at temperature T)
};

// What the store keeps of a teacher row: its k largest logits, their ids, and the full row's lse at T.
Stored store_rows(const at::Tensor& teacher, int64_t k, double T) {
  auto top = at::topk(teacher, k, 1);
  return {std::get<1>(top), std::get<0>(top).contiguous(), at::logsumexp(teacher.to(at::kDouble) / T, {1}).to(at::kFloat)};
}

// Reference loss (sum over valid rows of kd_weight T^2 D + ce_weight CE, then / valid rows) and its gradient, in
// float64: log q from a hand-written log-sum-exp, the tail by summing exp over the ids not in the row's set.
std::pair<double, at::Tensor> reference(const at::Tensor& student, const Stored& st, const at::Tensor& labels,
                                        const KdOptions& o) {
  const int64_t n = student.size(0), V = student.size(1), k = st.ids.size(1);
  at::Tensor s = student.to(at::kDouble).detach().requires_grad_(true);
  const auto ids = st.ids.accessor<int64_t, 2>();
  const auto tl = st.logits.to(at::kDouble);
  const auto lse_t = st.lse.to(at::kDouble);
  const double T = o.temperature;
  at::Tensor total = at::zeros({}, at::kDouble);
  int64_t valid = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = labels.defined() ? labels[r].item<int64_t>() : -1;
    if (labels.defined() && label == o.ignore_index) continue;
    ++valid;
    at::Tensor x = s[r] / T;
    at::Tensor lse_s = at::log(at::exp(x).sum());
    std::set<int64_t> in_top;
    double sum_p = 0;
    at::Tensor kl = at::zeros({}, at::kDouble);
    for (int64_t i = 0; i < k; ++i) {
      in_top.insert(ids[r][i]);
      const double log_p = tl[r][i].item<double>() / T - lse_t[r].item<double>();
      const double p = std::exp(log_p);
      sum_p += p;
      if (p > 0) kl = kl + p * (log_p - (x[ids[r][i]] - lse_s));
    }
    std::vector<int64_t> rest;
    for (int64_t v = 0; v < V; ++v)
      if (!in_top.count(v)) rest.push_back(v);
    const double p_tail = std::max(0.0, 1.0 - sum_p);
    if (p_tail > 0 && !rest.empty()) {
      at::Tensor q_tail = at::exp(x.index_select(0, at::tensor(rest, at::kLong)) - lse_s).sum();
      kl = kl + p_tail * (std::log(p_tail) - at::log(q_tail));
    }
    at::Tensor loss = o.kd_weight * T * T * kl;
    if (o.ce_weight != 0) loss = loss - o.ce_weight * (s[r][label] - at::log(at::exp(s[r]).sum()));
    total = total + loss;
  }
  at::Tensor mean = total / double(std::max<int64_t>(valid, 1));
  mean.backward();
  return {mean.item<double>(), s.grad()};
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

}  // namespace

TEST_CASE("sparse KD: loss and gradient equal the float64 dense reference built from the same stored rows") {
  at::manual_seed(7);
  const int64_t n = 12, V = 300;
  const at::Tensor student = at::randn({n, V}) * 2.0;
  const at::Tensor teacher = at::randn({n, V}) * 3.0 + 0.5 * student;
  at::Tensor labels = at::randint(0, V, {n}, at::kLong);
  labels[3] = -100;
  labels[8] = -100;
  for (int64_t k : {1, 7, 64, 299}) {
    for (double T : {1.0, 2.0}) {
      for (double ce : {0.0, 0.3}) {
        KdOptions o;
        o.temperature = T;
        o.kd_weight = 1.0 - ce;
        o.ce_weight = ce;
        const Stored st = store_rows(teacher, k, T);
        const auto [ref_loss, ref_grad] = reference(student, st, labels, o);
        const KdLossAndGrad got = sparse_kd_loss_and_grad(student, st.ids, st.logits, st.lse, labels, o);
        INFO("k " << k << " T " << T << " ce " << ce << " loss " << got.loss.item<double>() << " ref " << ref_loss);
        CHECK(std::abs(got.loss.item<double>() - ref_loss) <= 2e-5 * std::max(1.0, std::abs(ref_loss)));
        CHECK(max_abs(got.grad_student_logits.to(at::kDouble) - ref_grad) <= 1e-6 + 1e-5 * max_abs(ref_grad));
        // Ignored rows: no loss, no gradient.
        CHECK(max_abs(got.grad_student_logits[3]) == 0.0);
        // int32 ids give the same result.
        const KdLossAndGrad got32 = sparse_kd_loss_and_grad(student, st.ids.to(at::kInt), st.logits, st.lse, labels, o);
        CHECK(got32.loss.item<double>() == got.loss.item<double>());
      }
    }
  }
}

TEST_CASE("sparse KD at k = V equals the dense forward KL (kd_loss) of the same teacher") {
  at::manual_seed(8);
  const int64_t n = 10, V = 96;
  const at::Tensor student = at::randn({n, V}) * 2.0;
  const at::Tensor teacher = at::randn({n, V}) * 3.0;
  const at::Tensor labels = at::randint(0, V, {n}, at::kLong);
  for (double T : {1.0, 1.5}) {
    KdOptions o;
    o.temperature = T;
    o.kd_weight = 0.7;
    o.ce_weight = 0.3;
    const Stored st = store_rows(teacher, V, T);
    const KdLossAndGrad sparse = sparse_kd_loss_and_grad(student, st.ids, st.logits, st.lse, labels, o);
    const KdLossAndGrad dense = kd_loss_and_grad(student, teacher, labels, o);
    INFO("T " << T << " sparse " << sparse.loss.item<double>() << " dense " << dense.loss.item<double>());
    CHECK(std::abs(sparse.loss.item<double>() - dense.loss.item<double>()) <= 1e-6 * std::abs(dense.loss.item<double>()));
    CHECK(max_abs(sparse.grad_student_logits - dense.grad_student_logits) <= 1e-7);
  }
}

TEST_CASE("sparse KD: the tail term makes the loss exact for a teacher with no mass outside the top k") {
  // A teacher whose row is -inf outside 5 ids: top-5 + lse describe it fully, so the sparse loss at k = 5 must equal
  // the dense KL against the full row (the tail bucket has p_tail = 0 and contributes nothing).
  at::manual_seed(9);
  const int64_t n = 6, V = 50, k = 5;
  const at::Tensor student = at::randn({n, V});
  at::Tensor teacher = at::full({n, V}, -INFINITY);
  teacher.scatter_(1, at::randint(0, 10, {n, 1}, at::kLong) * 5 + at::arange(k).unsqueeze(0), at::randn({n, k}));
  const Stored st = store_rows(teacher, k, 1.0);
  const double sparse = sparse_kd_loss(student, st.ids, st.logits, st.lse).item<double>();
  const double dense = kd_loss(student, teacher).item<double>();
  CHECK(std::abs(sparse - dense) <= 1e-6 * std::abs(dense));
}

TEST_CASE("sparse KD: autograd hands out the forward's gradient, scaled by the loss gradient") {
  at::manual_seed(10);
  const at::Tensor student = (at::randn({4, 40}) * 2).requires_grad_(true);
  const Stored st = store_rows(at::randn({4, 40}) * 2, 8, 1.0);
  (3.0 * sparse_kd_loss(student, st.ids, st.logits, st.lse)).backward();
  const KdLossAndGrad ref = sparse_kd_loss_and_grad(student.detach(), st.ids, st.logits, st.lse);
  CHECK(max_abs(student.grad() - 3.0 * ref.grad_student_logits) <= 1e-6);
}

TEST_CASE("sparse KD refuses what it does not define") {
  const at::Tensor s = at::randn({2, 10});
  const Stored st = store_rows(at::randn({2, 10}), 3, 1.0);
  KdOptions o;
  o.divergence = KdDivergence::reverse_kl;
  CHECK_THROWS_WITH(sparse_kd_loss(s, st.ids, st.logits, st.lse, {}, o), MP_CONTAINS("forward KL"));
  CHECK_THROWS_WITH(sparse_kd_loss(s, st.ids, st.logits, st.lse.narrow(0, 0, 1)),
                    MP_CONTAINS("student rows"));
  CHECK_THROWS(sparse_kd_loss(s, st.ids.to(at::kFloat), st.logits, st.lse));
}

TEST_CASE("linear_sparse_kd equals sparse_kd_loss on hidden @ lm_head^T, in chunks, through autograd") {
  at::manual_seed(11);
  const int64_t n = 23, H = 16, V = 120, k = 10;
  const at::Tensor h0 = at::randn({n, H}), w0 = at::randn({V, H}) * 0.5;
  const Stored st = store_rows(at::randn({n, V}) * 2, k, 2.0);
  at::Tensor labels = at::randint(0, V, {n}, at::kLong);
  labels[4] = -100;
  LinearKdOptions o;
  o.temperature = 2.0;
  o.kd_weight = 0.6;
  o.ce_weight = 0.4;
  o.token_chunk = 5;  // five chunks, the last one partial
  const at::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
  const at::Tensor loss = linear_sparse_kd(h, w, st.ids, st.logits, st.lse, labels, o);
  loss.backward();
  const at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
  const at::Tensor ref = sparse_kd_loss(at::mm(h2, w2.t()), st.ids, st.logits, st.lse, labels, o);
  ref.backward();
  CHECK(std::abs(loss.item<double>() - ref.item<double>()) <= 1e-6 * std::abs(ref.item<double>()));
  CHECK(max_abs(h.grad() - h2.grad()) <= 1e-5 * max_abs(h2.grad()));
  CHECK(max_abs(w.grad() - w2.grad()) <= 1e-5 * max_abs(w2.grad()));
}
