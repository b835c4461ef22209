// Activation checkpointing as a custom autograd function: forward without saving activations, recompute in
// backward. The function object travels to backward inside the autograd context as a capsule.
//
// What recomputation must reproduce, and how it does:
//   - randomness: none to restore. The model has no dropout and no other random op, so a layer run twice on the
//     same input gives the same output (on CPU bit for bit at a fixed thread count; the CUDA kernels are
//     deterministic too), and no RNG state is saved or replayed.
//   - autocast: the enabled flags, lower-precision dtypes and cast-cache flag of CPU and CUDA autocast are
//     captured in forward and put back around the recomputation (backward usually runs outside the caller's
//     autocast region, and on CUDA in the engine's device thread), as torch.utils.checkpoint does. minipuzzle's
//     own trainer uses bf16 weights rather than autocast; the tests run the student under CPU bf16 autocast with
//     backward outside and inside the region (where the forward's cached weight casts are still there).
//   - kernels: the recomputation calls the same fn, so the CUDA Mamba kernels and their own autograd functions
//     (causal conv1d, SSD scan, gated norm) run again, now recording their graph.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {
namespace {

using LayerFn = std::function<at::Tensor(const at::Tensor&)>;

// Autocast settings of the devices the model runs on.
struct AutocastState {
  bool cpu_enabled = false, cuda_enabled = false, cache_enabled = true;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
  static AutocastState current() {
    AutocastState s;
    s.cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
    s.cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    s.cache_enabled = at::autocast::is_autocast_cache_enabled();
    return s;
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu_enabled);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda_enabled);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
    at::autocast::set_autocast_cache_enabled(cache_enabled);
  }
};

// Sets `state` for its lifetime; restores what was there before.
class AutocastGuard {
 public:
  explicit AutocastGuard(const AutocastState& state) : saved_(AutocastState::current()) { state.apply(); }
  ~AutocastGuard() { saved_.apply(); }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  AutocastState saved_;
};

struct FnHolder : torch::CustomClassHolder {
  LayerFn fn;
  AutocastState autocast;
  FnHolder(LayerFn f, AutocastState a) : fn(std::move(f)), autocast(a) {}
};

struct Recompute : torch::autograd::Function<Recompute> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, at::TensorList params,
                            const LayerFn& fn) {
    const AutocastState autocast = AutocastState::current();
    ctx->saved_data["fn"] = at::IValue::make_capsule(c10::make_intrusive<FnHolder>(fn, autocast));
    ctx->saved_data["params"] = params.vec();
    ctx->save_for_backward({input});
    return fn(input);  // grad mode is off inside forward: nothing is kept
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<FnHolder>(ctx->saved_data["fn"].toCapsule());
    std::vector<at::Tensor> params = ctx->saved_data["params"].toTensorVector();
    at::Tensor saved = ctx->get_saved_variables()[0];
    at::Tensor x = saved.detach().requires_grad_(saved.requires_grad());
    at::Tensor y;
    {
      at::AutoGradMode enable(true);
      AutocastGuard guard(holder->autocast);
      y = holder->fn(x);
    }
    std::vector<at::Tensor> wrt;
    if (x.requires_grad()) wrt.push_back(x);
    for (auto& p : params)
      if (p.requires_grad()) wrt.push_back(p);
    std::vector<at::Tensor> grads =
        wrt.empty() ? std::vector<at::Tensor>() : torch::autograd::grad({y}, wrt, {grad_outputs[0]}, false, false, true);
    torch::autograd::variable_list out;
    size_t k = 0;
    out.push_back(x.requires_grad() ? grads[k++] : at::Tensor());
    for (auto& p : params) out.push_back(p.requires_grad() ? grads[k++] : at::Tensor());
    out.push_back(at::Tensor());  // fn
    return out;
  }
};

}  // namespace

at::Tensor checkpointed(const LayerFn& fn, const at::Tensor& input, const std::vector<at::Tensor>& params) {
  return Recompute::apply(input, at::TensorList(params), fn);
}

at::Tensor checkpointed_forward_hidden(const NemotronH& model, const at::Tensor& input_ids, int64_t layers_per_segment,
                                       ActivationObserver* observer) {
  MP_CHECK(layers_per_segment > 0, "distill: activation checkpointing needs at least 1 layer per segment, found ",
           layers_per_segment);
  const int64_t n = model.config().num_layers();
  at::Tensor h = model.embed(input_ids);
  for (int64_t first = 0; first < n; first += layers_per_segment) {
    const int64_t last = std::min(n, first + layers_per_segment);
    std::vector<at::Tensor> params;
    for (int64_t i = first; i < last; ++i)
      for (auto& p : model.layer_parameters(i)) params.push_back(p);
    // The model outlives backward (the caller holds it across micro_batch_loss and backward); nothing else is
    // captured by reference.
    const NemotronH* m = &model;
    h = checkpointed(
        [m, first, last, observer](const at::Tensor& x) {
          // The forward runs with gradients off, the recomputation in backward with them on: only the first is
          // observed.
          ForwardOptions fo;
          if (!at::GradMode::is_enabled()) fo.observer = observer;
          at::Tensor y = x;
          for (int64_t i = first; i < last; ++i) y = m->forward_layer(i, y, fo);
          return y;
        },
        h, params);
  }
  return model.final_norm(h);
}

}  // namespace mp::distill
