// GPU tests of the KD kernels: the CUDA kd_loss (both kernel shapes) and linear_kd against the ATen + autograd
// reference (kd_reference.h) computed on the GPU in float32 from the same bf16/fp16/fp32 inputs, in row chunks.
// Without a CUDA device it prints why it did not run and exits 77, which ctest reports as "Skipped" (not passed).
//
// Tolerances (stated, and printed with every result):
//   loss:     |loss - ref| <= 1e-4 * max(1, |ref|)           (float32 sums in another order, fast exp/log)
//   gradient: max |g - ref| <= 2^-7 * max |ref|  for bf16      (bf16 output rounding is 2^-9 of each element)
//             max |g - ref| <= 2^-9 * max |ref|  for fp16, 1e-5 for fp32
//   linear_kd bf16 (logits and d W accumulation rounded to bf16 like eager PyTorch): 2^-5 for d hidden / d W.
// Usage: test_kd_gpu [out.json]  (JSON results also on stdout); exit 0 all passed, 1 a failure, 77 no GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "kd_reference.h"
#include "kernels/kd_internal.h"
#include "minipuzzle/json.h"
#include "minipuzzle/kd.h"

namespace {

using mp::json;
using KdRowsVariant = mp::KdKernel;

// KdOptions::tma_workers for the checks below that run cluster_tma (the 256-worker pass sets it).
int g_tma_workers = 0;

const char* variant_name(KdRowsVariant v) {
  return v == KdRowsVariant::automatic ? "automatic" : mp::kd_kernel_name(v);
}

double grad_tolerance(at::ScalarType t) {
  return t == at::kBFloat16 ? 1.0 / 128 : t == at::kHalf ? 1.0 / 512 : 1e-5;
}

struct Inputs {
  at::Tensor student, teacher, labels;
};

Inputs make_inputs(int64_t n, int64_t v, at::ScalarType dtype, uint64_t seed, bool labels, bool minus_inf) {
  at::manual_seed(seed);
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  Inputs in;
  // Made in the target dtype directly: float32 temporaries of 16384 x 256000 would take 17 GB each.
  in.student = at::randn({n, v}, cuda.dtype(dtype)).mul_(3.0);
  in.teacher = at::randn({n, v}, cuda.dtype(dtype)).mul_(3.0).add_(in.student, 0.5);
  if (minus_inf) in.teacher.index_put_({at::indexing::Slice(), at::indexing::Slice(1000, 5000)}, -INFINITY);
  if (labels) {
    in.labels = at::randint(0, v, {n}, cuda.dtype(at::kLong));
    in.labels.masked_fill_(at::rand({n}, cuda) < 0.25, -100);
  }
  return in;
}

// Compares the CUDA kernel with the reference chunk by chunk (the reference needs float32 copies and autograd
// buffers; whole 16384 x 256000 tensors would not fit beside each other).
json check_kd(const std::string& name, const Inputs& in, mp::KdOptions o, KdRowsVariant variant) {
  const int64_t n = in.student.size(0), v = in.student.size(1);
  json r = {{"test", name}, {"tokens", n}, {"vocab", v}, {"dtype", std::string(c10::toString(in.student.scalar_type()))},
            {"variant", variant_name(variant)}, {"divergence", int(o.divergence)}, {"temperature", o.temperature},
            {"ce_weight", o.ce_weight}};
  try {
    o.kernel = variant;
    o.tma_workers = g_tma_workers;
    const auto got = mp::detail::kd_loss_and_grad(in.student, in.teacher, in.labels, o, true);
    r["kernel_ran"] = mp::detail::kd_rows_last_kernel();
    const double count = in.labels.defined() ? std::max<double>(1, in.labels.ne(o.ignore_index).sum().item<double>()) : n;
    mp::KdOptions summed = o;
    summed.reduction = mp::KdReduction::sum;
    const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 28) / v);
    double ref_loss = 0, max_err = 0, max_ref = 0;
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t r1 = std::min(n, r0 + chunk);
      const auto ref = kd_test::reference_kd(in.student.slice(0, r0, r1), in.teacher.slice(0, r0, r1),
                                             in.labels.defined() ? in.labels.slice(0, r0, r1) : at::Tensor(), summed,
                                             at::kFloat);
      ref_loss += ref.loss.item<double>();
      const at::Tensor mine = got.grad_student_logits.slice(0, r0, r1).to(at::kFloat) * float(count);
      max_err = std::max(max_err, (mine - ref.grad).abs().max().item<double>());
      max_ref = std::max(max_ref, ref.grad.abs().max().item<double>());
    }
    ref_loss /= count;
    const double loss = got.loss.item<double>();
    const double loss_err = std::abs(loss - ref_loss) / std::max(1.0, std::abs(ref_loss));
    const double grad_err = max_ref > 0 ? max_err / max_ref : max_err;
    const bool pass = std::isfinite(loss) && loss_err <= 1e-4 && grad_err <= grad_tolerance(in.student.scalar_type());
    r.update({{"loss", loss}, {"reference_loss", ref_loss}, {"loss_relative_error", loss_err}, {"loss_tolerance", 1e-4},
              {"grad_max_error_over_max", grad_err}, {"grad_tolerance", grad_tolerance(in.student.scalar_type())},
              {"pass", pass}});
  } catch (const std::exception& e) {
    r.update({{"pass", false}, {"error", e.what()}});
  }
  return r;
}

// In-place gradient equals the out-of-place one, through the automatic kernel choice for these options.
json check_in_place(int64_t n, int64_t v, double temperature = 2.0) {
  json r = {{"test", "in_place_equals_out_of_place"}, {"tokens", n}, {"vocab", v}, {"temperature", temperature}};
  try {
    const Inputs in = make_inputs(n, v, at::kBFloat16, 77, true, false);
    mp::KdOptions o;
    o.temperature = temperature;
    o.ce_weight = 0.1;
    o.tma_workers = g_tma_workers;
    const auto out_of_place = mp::kd_loss_and_grad(in.student, in.teacher, in.labels, o);
    at::Tensor buffer = in.student.clone();
    o.gradient_in_place = true;
    const auto in_place = mp::kd_loss_and_grad(buffer, in.teacher, in.labels, o);
    const bool same = at::equal(buffer, out_of_place.grad_student_logits) &&
                      in_place.loss.item<double>() == out_of_place.loss.item<double>();
    r.update({{"bitwise_equal", same}, {"pass", same}});
  } catch (const std::exception& e) {
    r.update({{"pass", false}, {"error", e.what()}});
  }
  return r;
}

// Backward through autograd hands out the forward's gradient scaled by the incoming gradient, compared with 1 on
// the device (kd_scale_grad.cu): bit for bit the direct gradient for loss.backward(), and exactly the direct
// gradient times s, rounded once to the dtype (what ATen's mul computes), for (s * loss).backward().
json check_autograd_scale(at::ScalarType dtype, double s) {
  json r = {{"test", "autograd_backward_scale"}, {"dtype", std::string(c10::toString(dtype))}, {"scale", s}};
  try {
    const Inputs in = make_inputs(256, 32000, dtype, 78, true, false);
    mp::KdOptions o;
    o.temperature = 2.0;
    const at::Tensor direct = mp::kd_loss_and_grad(in.student, in.teacher, in.labels, o).grad_student_logits;
    at::Tensor leaf = in.student.clone().requires_grad_(true);
    at::Tensor loss = mp::kd_loss(leaf, in.teacher, in.labels, o);
    (s == 1.0 ? loss : loss * s).backward();
    const at::Tensor expected = s == 1.0 ? direct : (direct.to(at::kFloat) * s).to(dtype);
    const bool same = leaf.grad().defined() && at::equal(leaf.grad(), expected);
    r.update({{"bitwise_equal", same}, {"pass", same}});
  } catch (const std::exception& e) {
    r.update({{"pass", false}, {"error", e.what()}});
  }
  return r;
}

json check_linear(int64_t n, int64_t h, int64_t v) {
  json r = {{"test", "linear_kd_bf16"}, {"tokens", n}, {"hidden", h}, {"vocab", v}};
  try {
    at::manual_seed(99);
    const auto cuda = at::TensorOptions().device(at::kCUDA);
    const at::Tensor hs = at::randn({n, h}, cuda).to(at::kBFloat16);
    const at::Tensor w = (at::randn({v, h}, cuda) * (3.0 / std::sqrt(double(h)))).to(at::kBFloat16);
    const at::Tensor ht = at::randn({n, h}, cuda).to(at::kBFloat16);
    const at::Tensor wt = (at::randn({v, h}, cuda) * (3.0 / std::sqrt(double(h)))).to(at::kBFloat16);
    at::Tensor labels = at::randint(0, v, {n}, cuda.dtype(at::kLong));
    labels.masked_fill_(at::rand({n}, cuda) < 0.2, -100);
    mp::LinearKdOptions o;
    o.temperature = 2.0;
    o.ce_weight = 0.1;
    o.token_chunk = 1024;  // several chunks: exercises the d W accumulation
    const auto got = mp::linear_kd_loss_and_grads(hs, w, ht, wt, {}, labels, o);
    // Reference: float32 logits from the bf16 inputs, the autograd KD reference, the chain rule in float32.
    const at::Tensor hf = hs.to(at::kFloat), wf = w.to(at::kFloat);
    const auto ref = kd_test::reference_kd(at::matmul(hf, wf.t()), at::matmul(ht.to(at::kFloat), wt.to(at::kFloat).t()),
                                           labels, o, at::kFloat);
    const at::Tensor ref_gh = at::matmul(ref.grad, wf), ref_gw = at::matmul(ref.grad.t(), hf);
    const double loss = got.loss.item<double>(), ref_loss = ref.loss.item<double>();
    const double loss_err = std::abs(loss - ref_loss) / std::max(1.0, std::abs(ref_loss));
    const double eh = kd_test::relative_max_error(got.grad_student_hidden, ref_gh);
    const double ew = kd_test::relative_max_error(got.grad_student_weight, ref_gw);
    const double tol = 1.0 / 32;
    r.update({{"loss", loss}, {"reference_loss", ref_loss}, {"loss_relative_error", loss_err},
              {"grad_hidden_max_error_over_max", eh}, {"grad_weight_max_error_over_max", ew},
              {"loss_tolerance", 1e-2}, {"grad_tolerance", tol},
              {"pass", loss_err <= 1e-2 && eh <= tol && ew <= tol}});
  } catch (const std::exception& e) {
    r.update({{"pass", false}, {"error", e.what()}});
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (c10::cuda::device_count() == 0) {
    const json skipped = {{"ran", false}, {"reason", "no CUDA device: the GPU tests of the KD kernels were NOT run"}};
    std::cout << skipped.dump() << std::endl;
    if (argc > 1) std::ofstream(argv[1]) << skipped.dump() << std::endl;
    return 77;
  }
  json results = json::array();
  auto add = [&](json r) {
    std::cerr << r.dump() << std::endl;
    results.push_back(std::move(r));
  };
  const KdRowsVariant variants[] = {KdRowsVariant::automatic, KdRowsVariant::cluster_smem, KdRowsVariant::two_pass,
                                    KdRowsVariant::cluster_pipelined};
  // cluster_tma applies to forward KL on 16-bit logits (CE only at T = 1), V a multiple of 8 up to 16 x 16384:
  // its own cases beside the automatic choice above (which takes it for the plain forward-KL ones), with its
  // own choice of block (512 workers) and with 256 workers asked for (V up to 131072; 512 beyond).
  for (const char* workers : {"auto", "256"}) {
    g_tma_workers = std::string(workers) == "256" ? 256 : 0;
    mp::KdOptions plain, hot, ce_t1;
    hot.temperature = 2.0;
    ce_t1.ce_weight = 0.25;
    ce_t1.kd_weight = 0.75;
    // A whole number of blocks, a last block partly past V, two blocks, one block, a 16-block cluster.
    for (int64_t v : {int64_t(131072), int64_t(50264), int64_t(32000), int64_t(4096), int64_t(256000)}) {
      add(check_kd("tma_forward_kl", make_inputs(512, v, at::kBFloat16, 11, true, false), hot, KdRowsVariant::cluster_tma));
      add(check_kd("tma_ce_t1_mask", make_inputs(512, v, at::kBFloat16, 12, true, false), ce_t1, KdRowsVariant::cluster_tma));
    }
    // Fewer rows than resident clusters, and many rows per cluster (the ring of buffers wraps many times).
    add(check_kd("tma_few_rows", make_inputs(3, 131072, at::kBFloat16, 16, true, false), ce_t1, KdRowsVariant::cluster_tma));
    add(check_kd("tma_many_rows", make_inputs(16384, 32000, at::kBFloat16, 17, true, false), ce_t1, KdRowsVariant::cluster_tma));
    add(check_kd("tma_teacher_minus_inf", make_inputs(512, 131072, at::kBFloat16, 13, true, true), ce_t1, KdRowsVariant::cluster_tma));
    add(check_kd("tma_fp16", make_inputs(1024, 131072, at::kHalf, 14, false, false), plain, KdRowsVariant::cluster_tma));
    add(check_in_place(2048, 131072, 1.0));  // T = 1 with CE: the automatic choice is cluster_tma
    results.back()["kernel_ran"] = mp::detail::kd_rows_last_kernel();
    results.back()["tma_workers"] = workers;
  }
  g_tma_workers = 0;
  mp::KdOptions fkl;
  fkl.temperature = 2.0;
  // The shapes: N up to 16384, V = 131072 and 256000, bf16.
  add(check_kd("forward_kl_large", make_inputs(16384, 131072, at::kBFloat16, 1, true, false), fkl, KdRowsVariant::automatic));
  add(check_kd("forward_kl_large", make_inputs(16384, 256000, at::kBFloat16, 2, true, false), fkl, KdRowsVariant::automatic));
  // Every divergence, CE mixing, masking and -inf teacher logits, through each kernel shape.
  for (int64_t v : {int64_t(131072), int64_t(256000)}) {
    for (auto variant : variants) {
      for (auto d : {mp::KdDivergence::forward_kl, mp::KdDivergence::reverse_kl, mp::KdDivergence::jsd}) {
        mp::KdOptions o;
        o.divergence = d;
        o.temperature = d == mp::KdDivergence::jsd ? 1.0 : 1.5;
        o.ce_weight = 0.25;
        add(check_kd("divergence_ce_mask", make_inputs(512, v, at::kBFloat16, 3, true, false), o, variant));
      }
      add(check_kd("teacher_minus_inf", make_inputs(512, v, at::kBFloat16, 4, true, true), fkl, variant));
    }
  }
  // Other dtypes and a vocabulary that is not a multiple of the vector width (unaligned rows).
  for (auto dtype : {at::kHalf, at::kFloat})
    for (auto variant : variants) add(check_kd("dtype", make_inputs(1024, 131072, dtype, 5, true, false), fkl, variant));
  for (auto variant : variants) add(check_kd("odd_vocab", make_inputs(333, 50257, at::kBFloat16, 6, true, false), fkl, variant));
  add(check_kd("fp32_256k_two_pass_fallback", make_inputs(256, 256000, at::kFloat, 7, false, false), fkl, KdRowsVariant::automatic));
  add(check_in_place(2048, 131072));
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat})
    for (double s : {1.0, 2.5, 0.125}) add(check_autograd_scale(dtype, s));
  add(check_linear(4096, 1024, 131072));

  int failed = 0;
  for (const auto& r : results) failed += r.value("pass", false) ? 0 : 1;
  json summary = {{"ran", true}, {"device", c10::cuda::device_count()}, {"tests", results.size()},
                  {"failed", failed}, {"results", results}};
  std::cout << summary.dump(1) << std::endl;
  if (argc > 1) std::ofstream(argv[1]) << summary.dump(1) << std::endl;
  return failed ? 1 : 0;
}
