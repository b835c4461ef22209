// The KD kernels as torch custom ops (issue 23): minipuzzle::kd_loss, minipuzzle::linear_kd and the backward's
// minipuzzle::scale_grad_, registered with TORCH_LIBRARY over the same sources the CLI links (src/kernels/
// kd_binding.cpp, linear_kd.cpp, kd_loss_cpu.cpp and, in CUDA builds, kd_loss*.cu, kd_scale_grad.cu).
//
// Each forward op returns the loss together with the gradient(s) for a loss gradient of 1, because the kernels
// make both in one pass (the same design as the C++ autograd functions). Autograd is a C++ kernel on the Autograd
// key (below); the fake (meta) kernels are registered from Python (minipuzzle_kernels/_ops.py, register_fake), so
// torch.compile traces the ops without graph breaks. Options travel as plain schema arguments (str, float, int,
// bool) so the ops need no custom classes.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "kernels/kd_internal.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kd.h"

#include <Python.h>

namespace {

mp::KdOptions kd_options(c10::string_view divergence, double temperature, double jsd_beta, double kd_weight,
                         double ce_weight, int64_t ignore_index, c10::string_view reduction) {
  mp::KdOptions o;
  const std::string d(divergence), r(reduction);
  if (d == "forward_kl")
    o.divergence = mp::KdDivergence::forward_kl;
  else if (d == "reverse_kl")
    o.divergence = mp::KdDivergence::reverse_kl;
  else if (d == "jsd")
    o.divergence = mp::KdDivergence::jsd;
  else
    mp::fail("minipuzzle kd: divergence is '", d, "'; expected forward_kl, reverse_kl or jsd");
  if (r == "mean")
    o.reduction = mp::KdReduction::mean;
  else if (r == "sum")
    o.reduction = mp::KdReduction::sum;
  else
    mp::fail("minipuzzle kd: reduction is '", r, "'; expected mean or sum");
  o.temperature = temperature;
  o.jsd_beta = jsd_beta;
  o.kd_weight = kd_weight;
  o.ce_weight = ce_weight;
  o.ignore_index = ignore_index;
  return o;
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// An op's outputs are always tensors; a gradient that was not asked for is an empty 1-D tensor (the fake kernels
// in _ops.py say the same).
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

std::tuple<at::Tensor, at::Tensor> kd_loss_op(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                              const std::optional<at::Tensor>& labels, c10::string_view divergence,
                                              double temperature, double jsd_beta, double kd_weight,
                                              double ce_weight, int64_t ignore_index, c10::string_view reduction,
                                              bool compute_grad) {
  const mp::KdOptions options =
      kd_options(divergence, temperature, jsd_beta, kd_weight, ce_weight, ignore_index, reduction);
  mp::KdLossAndGrad r =
      mp::detail::kd_loss_and_grad(student_logits, teacher_logits, or_undefined(labels), options, compute_grad);
  return {r.loss, or_empty(r.grad_student_logits, student_logits)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_kd_op(
    const at::Tensor& student_input, const at::Tensor& student_weight, const std::optional<at::Tensor>& teacher_input,
    const std::optional<at::Tensor>& teacher_weight, const std::optional<at::Tensor>& teacher_logits,
    const std::optional<at::Tensor>& labels, c10::string_view divergence, double temperature, double jsd_beta,
    double kd_weight, double ce_weight, int64_t ignore_index, c10::string_view reduction, int64_t token_chunk,
    int64_t logits_buffer_bytes, bool grad_input, bool grad_weight) {
  mp::LinearKdOptions options;
  static_cast<mp::KdOptions&>(options) =
      kd_options(divergence, temperature, jsd_beta, kd_weight, ce_weight, ignore_index, reduction);
  MP_CHECK(token_chunk >= 0 && logits_buffer_bytes > 0, "minipuzzle linear_kd: token_chunk must be >= 0 (0: auto) ",
           "and logits_buffer_bytes > 0, got ", token_chunk, " and ", logits_buffer_bytes);
  options.token_chunk = token_chunk;
  options.logits_buffer_bytes = logits_buffer_bytes;
  mp::LinearKdLossAndGrads r = mp::linear_kd_loss_and_grads(
      student_input, student_weight, or_undefined(teacher_input), or_undefined(teacher_weight),
      or_undefined(teacher_logits), or_undefined(labels), options, grad_input, grad_weight);
  return {r.loss, or_empty(r.grad_student_hidden, student_input), or_empty(r.grad_student_weight, student_weight)};
}

// grad *= grad_output unless grad_output == 1 (the usual loss.backward()), in place: the backward hands out the
// gradient the forward made without another pass over it. On CUDA the comparison runs on the device (no sync).
void scale_grad_op(at::Tensor& grad, const at::Tensor& grad_output) {
  MP_CHECK(grad_output.numel() == 1, "minipuzzle scale_grad_: the loss gradient must be a scalar, got ",
           grad_output.sizes());
  if (grad.numel() == 0) return;
  at::Tensor scaled = mp::detail::scale_by_grad_output(grad, grad_output);
  // scale_by_grad_output scales in place whenever it scales (mul_ or the CUDA kernel on grad's own buffer).
  MP_CHECK(scaled.is_same(grad), "minipuzzle scale_grad_: internal error, the gradient was not scaled in place");
}

// Autograd, in C++ on the Autograd key: the Python autograd route (register_autograd) cost ~10x the dispatcher's
// own overhead per call, which the GPU path cannot hide at ~2 ms a loss. Forward and backward call the ops through
// the dispatcher (never the functions above directly), so torch.compile's AOTAutograd traces them with the fake
// kernels and records minipuzzle::kd_loss / linear_kd / scale_grad_ in the forward and backward graphs.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor scaled(at::Tensor grad, const at::Tensor& grad_output) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("minipuzzle::scale_grad_", "").typed<void(
      at::Tensor&, const at::Tensor&)>();
  op.call(grad, grad_output);
  return grad;
}

struct KdLossAutograd : public torch::autograd::Function<KdLossAutograd> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student_logits,
                               const at::Tensor& teacher_logits, const std::optional<at::Tensor>& labels,
                               c10::string_view divergence, double temperature, double jsd_beta, double kd_weight,
                               double ce_weight, int64_t ignore_index, c10::string_view reduction,
                               bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("minipuzzle::kd_loss", "").typed<decltype(
        kd_loss_op)>();
    auto [loss, grad] = op.call(student_logits, teacher_logits, labels, divergence, temperature, jsd_beta, kd_weight,
                                ce_weight, ignore_index, reduction, compute_grad);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    return {loss, grad};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    MP_CHECK(ctx->saved_data["compute_grad"].toBool(), "minipuzzle::kd_loss was called with compute_grad=False, so ",
             "it has no gradient to hand out; call it with compute_grad=True (the Python wrappers decide from ",
             "requires_grad)");
    // Scaled in place: a second backward through the same graph then fails on the saved tensor's version.
    at::Tensor grad = scaled(ctx->get_saved_variables()[0], grad_outputs[0]);
    variable_list out(11);
    out[0] = grad;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> kd_loss_autograd_kernel(
    const at::Tensor& student_logits, const at::Tensor& teacher_logits, const std::optional<at::Tensor>& labels,
    c10::string_view divergence, double temperature, double jsd_beta, double kd_weight, double ce_weight,
    int64_t ignore_index, c10::string_view reduction, bool compute_grad) {
  variable_list r = KdLossAutograd::apply(student_logits, teacher_logits, labels, divergence, temperature, jsd_beta,
                                          kd_weight, ce_weight, ignore_index, reduction, compute_grad);
  return {r[0], r[1]};
}

struct LinearKdAutograd : public torch::autograd::Function<LinearKdAutograd> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student_input, const at::Tensor& student_weight,
                               const std::optional<at::Tensor>& teacher_input,
                               const std::optional<at::Tensor>& teacher_weight,
                               const std::optional<at::Tensor>& teacher_logits,
                               const std::optional<at::Tensor>& labels, c10::string_view divergence,
                               double temperature, double jsd_beta, double kd_weight, double ce_weight,
                               int64_t ignore_index, c10::string_view reduction, int64_t token_chunk,
                               int64_t logits_buffer_bytes, bool grad_input, bool grad_weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("minipuzzle::linear_kd", "").typed<decltype(
        linear_kd_op)>();
    auto [loss, gi, gw] = op.call(student_input, student_weight, teacher_input, teacher_weight, teacher_logits, labels,
                                  divergence, temperature, jsd_beta, kd_weight, ce_weight, ignore_index, reduction,
                                  token_chunk, logits_buffer_bytes, grad_input, grad_weight);
    ctx->saved_data["grad_input"] = grad_input;
    ctx->saved_data["grad_weight"] = grad_weight;
    ctx->save_for_backward({gi, gw});
    ctx->mark_non_differentiable({gi, gw});
    return {loss, gi, gw};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list saved = ctx->get_saved_variables();
    variable_list out(17);
    const char* names[2] = {"grad_input", "grad_weight"};
    for (int i = 0; i < 2; ++i) {
      if (!ctx->saved_data[names[i]].toBool()) {
        MP_CHECK(!ctx->needs_input_grad(i), "minipuzzle::linear_kd was called with ", names[i], "=False but autograd ",
                 "needs that gradient; the Python wrappers decide from requires_grad");
        continue;
      }
      out[i] = scaled(saved[i], grad_outputs[0]);
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_kd_autograd_kernel(
    const at::Tensor& student_input, const at::Tensor& student_weight, const std::optional<at::Tensor>& teacher_input,
    const std::optional<at::Tensor>& teacher_weight, const std::optional<at::Tensor>& teacher_logits,
    const std::optional<at::Tensor>& labels, c10::string_view divergence, double temperature, double jsd_beta,
    double kd_weight, double ce_weight, int64_t ignore_index, c10::string_view reduction, int64_t token_chunk,
    int64_t logits_buffer_bytes, bool grad_input, bool grad_weight) {
  variable_list r = LinearKdAutograd::apply(student_input, student_weight, teacher_input, teacher_weight,
                                            teacher_logits, labels, divergence, temperature, jsd_beta, kd_weight,
                                            ce_weight, ignore_index, reduction, token_chunk, logits_buffer_bytes,
                                            grad_input, grad_weight);
  return {r[0], r[1], r[2]};
}

}  // namespace

TORCH_LIBRARY(minipuzzle, m) {
  m.def(
      "kd_loss(Tensor student_logits, Tensor teacher_logits, Tensor? labels=None, str divergence='forward_kl', "
      "float temperature=1.0, float jsd_beta=0.5, float kd_weight=1.0, float ce_weight=0.0, int ignore_index=-100, "
      "str reduction='mean', bool compute_grad=True) -> (Tensor loss, Tensor grad_student_logits)");
  m.def(
      "linear_kd(Tensor student_input, Tensor student_weight, Tensor? teacher_input, Tensor? teacher_weight, "
      "Tensor? teacher_logits=None, Tensor? labels=None, str divergence='forward_kl', float temperature=1.0, "
      "float jsd_beta=0.5, float kd_weight=1.0, float ce_weight=0.0, int ignore_index=-100, str reduction='mean', "
      "int token_chunk=0, int logits_buffer_bytes=402653184, bool grad_input=True, bool grad_weight=True) "
      "-> (Tensor loss, Tensor grad_student_input, Tensor grad_student_weight)");
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_output) -> ()");
}

// The bindings pick the CPU twin or the CUDA kernel from the tensors' device, so one function serves both keys.
TORCH_LIBRARY_IMPL(minipuzzle, CPU, m) {
  m.impl("kd_loss", &kd_loss_op);
  m.impl("linear_kd", &linear_kd_op);
  m.impl("scale_grad_", &scale_grad_op);
}

TORCH_LIBRARY_IMPL(minipuzzle, Autograd, m) {
  m.impl("kd_loss", &kd_loss_autograd_kernel);
  m.impl("linear_kd", &linear_kd_autograd_kernel);
}

#ifdef MINIPUZZLE_WITH_CUDA
TORCH_LIBRARY_IMPL(minipuzzle, CUDA, m) {
  m.impl("kd_loss", &kd_loss_op);
  m.impl("linear_kd", &linear_kd_op);
  m.impl("scale_grad_", &scale_grad_op);
}
#endif

// Lets Python say whether CUDA kernels were compiled in (a CPU-only build raises a clear error on CUDA tensors).
TORCH_LIBRARY_FRAGMENT(minipuzzle, m) {
  m.def("built_with_cuda() -> bool", [] {
#ifdef MINIPUZZLE_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}

// Importing minipuzzle_kernels._C runs the registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
