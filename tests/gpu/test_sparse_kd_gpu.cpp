// GPU host only (label "gpu"): the CUDA sparse-teacher KD kernel (src/kernels/sparse_kd.cu) against its CPU twin
// (sparse_kd_cpu.cpp, itself tested against a float64 dense reference in tests/kernels/test_sparse_kd.cpp) on the
// same inputs, over vocabularies whose k-bitmask fits the default shared memory (1024, 131072) and needs the opt-in
// (1048576: 128 KiB), k from 1 to V, float32 and bfloat16 logits, int32 and int64 ids, T = 1 and 2, CE mixing with
// ignored labels; and through autograd. Also prints the kernel's time against the dense kd_loss at one large shape.
//
// Tolerances: loss |cuda - cpu| <= 1e-4 * max(1, |cpu|) (float32 sums in another order, fast exp/log);
// gradient max |cuda - cpu| <= 1e-5 * max |cpu| + 1e-7 for float32 logits, 2^-7 * max |cpu| for bfloat16 (output
// rounding of 2^-9 of each element, plus the bf16 inputs' rounding of the exponentials).
#include <ATen/ATen.h>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <chrono>
#include <cmath>
#include <cstdio>

#include "catch.h"
#include "minipuzzle/kd.h"
#include "minipuzzle/sparse_kd.h"

using namespace mp;

namespace {

void sync() {
#ifdef MINIPUZZLE_WITH_CUDA
  c10::cuda::device_synchronize();
#endif
}

struct Case {
  int64_t n, vocab, k;
  at::ScalarType dtype;
  at::ScalarType id_type;
  double T, ce;
};

void compare(const Case& c) {
  at::manual_seed(c.n * 7 + c.vocab + c.k);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const at::Tensor student = (at::randn({c.n, c.vocab}, cuda) * 3).to(c.dtype);
  const at::Tensor teacher = at::randn({c.n, c.vocab}, cuda) * 3 + 0.5 * student.to(at::kFloat);
  auto top = at::topk(teacher, c.k, 1);
  const at::Tensor ids = std::get<1>(top).to(c.id_type), logits = std::get<0>(top).contiguous();
  const at::Tensor lse = at::logsumexp(teacher / c.T, {1});
  at::Tensor labels = at::randint(0, c.vocab, {c.n}, cuda.dtype(at::kLong));
  labels.masked_fill_(at::rand({c.n}, cuda) < 0.25, -100);
  KdOptions o;
  o.temperature = c.T;
  o.kd_weight = 1.0 - c.ce;
  o.ce_weight = c.ce;
  const KdLossAndGrad g = sparse_kd_loss_and_grad(student, ids, logits, lse, labels, o);
  const KdLossAndGrad r = sparse_kd_loss_and_grad(student.cpu(), ids.cpu(), logits.cpu(), lse.cpu(), labels.cpu(), o);
  const double loss = g.loss.item<double>(), ref = r.loss.item<double>();
  const double gmax = r.grad_student_logits.to(at::kFloat).abs().max().item<double>();
  const double gerr = (g.grad_student_logits.cpu().to(at::kFloat) - r.grad_student_logits.to(at::kFloat)).abs().max().item<double>();
  const double gtol = c.dtype == at::kBFloat16 ? gmax / 128 : 1e-5 * gmax + 1e-7;
  std::printf("{\"n\": %lld, \"vocab\": %lld, \"k\": %lld, \"dtype\": \"%s\", \"ids\": \"%s\", \"T\": %g, \"ce\": %g, "
              "\"loss\": %.8g, \"ref\": %.8g, \"grad_err\": %.3g, \"grad_tol\": %.3g}\n",
              (long long)c.n, (long long)c.vocab, (long long)c.k, c10::toString(c.dtype), c10::toString(c.id_type), c.T,
              c.ce, loss, ref, gerr, gtol);
  INFO("vocab " << c.vocab << " k " << c.k << " dtype " << c.dtype << " T " << c.T << " ce " << c.ce);
  CHECK(std::abs(loss - ref) <= 1e-4 * std::max(1.0, std::abs(ref)));
  CHECK(gerr <= gtol);
}

}  // namespace

TEST_CASE("sparse KD: the CUDA kernel equals the CPU twin", "[gpu]") {
  REQUIRE(at::hasCUDA());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
    for (double T : {1.0, 2.0})
      for (double ce : {0.0, 0.3}) {
        compare({32, 1024, 1, dtype, at::kLong, T, ce});
        compare({32, 1024, 100, dtype, at::kInt, T, ce});
        compare({32, 1024, 1024, dtype, at::kLong, T, ce});  // k = V: no tail
        compare({16, 131072, 128, dtype, at::kInt, T, ce});
      }
  compare({4, 1 << 20, 512, at::kBFloat16, at::kLong, 1.0, 0.3});  // 128 KiB bitmask: the shared-memory opt-in
}

TEST_CASE("sparse KD on CUDA through autograd, and at k = V equal to the dense kd_loss", "[gpu]") {
  REQUIRE(at::hasCUDA());
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  at::manual_seed(3);
  const at::Tensor student = (at::randn({64, 4096}, cuda) * 2).requires_grad_(true);
  const at::Tensor teacher = at::randn({64, 4096}, cuda) * 2;
  auto top = at::topk(teacher, 4096, 1);
  const at::Tensor lse = at::logsumexp(teacher, {1});
  (2.0 * sparse_kd_loss(student, std::get<1>(top), std::get<0>(top), lse)).backward();
  const KdLossAndGrad dense = kd_loss_and_grad(student.detach(), teacher);
  CHECK((student.grad() - 2.0 * dense.grad_student_logits).abs().max().item<double>() <= 1e-6);
  CHECK(std::abs(sparse_kd_loss(student.detach(), std::get<1>(top), std::get<0>(top), lse).item<double>() -
                 dense.loss.item<double>()) <= 1e-5 * dense.loss.item<double>());
}

TEST_CASE("sparse KD kernel time against the dense kd_loss (printed)", "[gpu]") {
  REQUIRE(at::hasCUDA());
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t n = 8192, V = 131072, k = 128;
  const at::Tensor student = (at::randn({n, V}, cuda) * 3).to(at::kBFloat16);
  const at::Tensor teacher = (at::randn({n, V}, cuda) * 3).to(at::kBFloat16);
  auto top = at::topk(teacher.to(at::kFloat), k, 1);
  const at::Tensor ids = std::get<1>(top).to(at::kInt), logits = std::get<0>(top).contiguous();
  const at::Tensor lse = at::logsumexp(teacher.to(at::kFloat), {1});
  auto time = [&](auto fn) {
    fn();
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) fn();
    sync();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 5;
  };
  const double sparse_s = time([&] { sparse_kd_loss_and_grad(student, ids, logits, lse); });
  const double dense_s = time([&] { kd_loss_and_grad(student, teacher); });
  std::printf("{\"timing\": \"sparse_kd vs kd_loss\", \"rows\": %lld, \"vocab\": %lld, \"k\": %lld, \"sparse_ms\": %.3f, "
              "\"dense_ms\": %.3f, \"sparse_gbps\": %.1f}\n",
              (long long)n, (long long)V, (long long)k, sparse_s * 1e3, dense_s * 1e3,
              3.0 * n * V * 2 / sparse_s / 1e9);  // two reads and one write of the bf16 row
  CHECK(sparse_s > 0);
}

TEST_CASE("linear_sparse_kd on CUDA (bf16, gradient written over the logits) equals sparse_kd_loss on the logits",
          "[gpu]") {
  REQUIRE(at::hasCUDA());
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  at::manual_seed(5);
  const int64_t n = 1000, H = 256, V = 32000, k = 64;
  const at::Tensor h = at::randn({n, H}, cuda).to(at::kBFloat16), w = (at::randn({V, H}, cuda) * 0.1).to(at::kBFloat16);
  const at::Tensor teacher = at::randn({n, V}, cuda) * 3;
  auto top = at::topk(teacher, k, 1);
  const at::Tensor lse = at::logsumexp(teacher / 2.0, {1});
  at::Tensor labels = at::randint(0, V, {n}, cuda.dtype(at::kLong));
  labels.masked_fill_(at::rand({n}, cuda) < 0.2, -100);
  LinearKdOptions o;
  o.temperature = 2.0;
  o.kd_weight = 0.7;
  o.ce_weight = 0.3;
  o.token_chunk = 300;
  const LinearKdLossAndGrads fused =
      linear_sparse_kd_loss_and_grads(h, w, std::get<1>(top), std::get<0>(top), lse, labels, o);
  const KdLossAndGrad plain = sparse_kd_loss_and_grad(at::mm(h, w.t()), std::get<1>(top), std::get<0>(top), lse, labels, o);
  const at::Tensor g = plain.grad_student_logits.to(at::kFloat);
  const at::Tensor gh = at::mm(g, w.to(at::kFloat)), gw = at::mm(g.t(), h.to(at::kFloat));
  auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kFloat) - b).abs().max().item<double>() / b.abs().max().item<double>();
  };
  const double loss_err = std::abs(fused.loss.item<double>() - plain.loss.item<double>()) / std::abs(plain.loss.item<double>());
  std::printf("{\"linear_sparse_kd\": {\"loss_rel_err\": %.3g, \"grad_hidden_rel_err\": %.3g, \"grad_weight_rel_err\": %.3g}}\n",
              loss_err, rel(fused.grad_student_hidden, gh), rel(fused.grad_student_weight, gw));
  CHECK(loss_err <= 1e-4);
  CHECK(rel(fused.grad_student_hidden, gh) <= 1.0 / 64);
  CHECK(rel(fused.grad_student_weight, gw) <= 1.0 / 64);
}
