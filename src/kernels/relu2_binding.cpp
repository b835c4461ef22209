// relu_squared (include/minipuzzle/kernels.h): dispatch to the CUDA launchers of relu2.cu or to ATen's
// relu(x)^2, and the autograd Function (it saves only x).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/mamba_binding_common.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/relu2_cuda.h"
#endif

namespace mp::kernels {
namespace {

using namespace binding;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool relu2_uses_cuda(const at::Tensor& x) {
#ifdef MINIPUZZLE_WITH_CUDA
  return x.is_cuda() && is_f32_or_bf16(x);
#else
  return false;
#endif
}

struct ReluSquaredFunction : public torch::autograd::Function<ReluSquaredFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    ctx->save_for_backward({x});
    if (!relu2_uses_cuda(x)) {
      const at::Tensor a = at::relu(x);
      return a * a;
    }
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options());
    check_cuda(relu_squared_forward_launch(xc.data_ptr(), out.data_ptr(), xc.numel(), elem_type(xc),
                                           at::cuda::getCurrentCUDAStream()),
               "relu_squared forward", x);
    return out;
#else
    return {};
#endif
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    if (!relu2_uses_cuda(x)) return {2 * at::relu(x) * grad_outputs[0]};
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous();
    const at::Tensor g = grad_outputs[0].to(x.scalar_type()).contiguous();
    at::Tensor dx = at::empty(x.sizes(), x.options());
    check_cuda(relu_squared_backward_launch(xc.data_ptr(), g.data_ptr(), dx.data_ptr(), xc.numel(), elem_type(xc),
                                            at::cuda::getCurrentCUDAStream()),
               "relu_squared backward", x);
    return {dx};
#else
    return {at::Tensor()};
#endif
  }
};

}  // namespace

at::Tensor relu_squared(const at::Tensor& x) {
  MP_CHECK(x.defined(), "relu_squared: undefined input");
  return ReluSquaredFunction::apply(x);
}

}  // namespace mp::kernels
