// Activation checkpointing as a custom autograd function: forward without saving activations, recompute in
// backward. The function object travels to backward inside the autograd context as a capsule.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "minipuzzle/distill.h"

namespace mp::distill {
namespace {

using LayerFn = std::function<at::Tensor(const at::Tensor&)>;

struct FnHolder : torch::CustomClassHolder {
  LayerFn fn;
  explicit FnHolder(LayerFn f) : fn(std::move(f)) {}
};

struct Recompute : torch::autograd::Function<Recompute> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, at::TensorList params,
                            const LayerFn& fn) {
    ctx->saved_data["fn"] = at::IValue::make_capsule(c10::make_intrusive<FnHolder>(fn));
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

}  // namespace mp::distill
