// causal_conv1d_silu (include/minipuzzle/kernels.h): shape/dtype checks, dispatch to the CUDA launchers of
// causal_conv1d.cu or to the ATen twin (conv_norm_cpu.cpp), and the autograd Function. The Function saves only its
// inputs; the backward kernel recomputes what it needs.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/mamba_binding_common.h"
#include "kernels/mamba_internal.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/causal_conv1d_cuda.h"
#endif

namespace mp::kernels {
namespace {

using namespace binding;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool conv_uses_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
#ifdef MINIPUZZLE_WITH_CUDA
  return x.is_cuda() && is_f32_or_bf16(x) && is_f32_or_bf16(w) &&
         (!b.defined() || b.scalar_type() == w.scalar_type()) &&
         w.size(-1) <= 8 && x.stride(2) == 1;
#else
  return false;
#endif
}

#ifdef MINIPUZZLE_WITH_CUDA
CausalConv1dParams conv_params(const at::Tensor& x, const at::Tensor& w2, const at::Tensor& b) {
  CausalConv1dParams p;
  p.x = x.data_ptr();
  p.x_stride_b = x.stride(0);
  p.x_stride_t = x.stride(1);
  p.x_type = elem_type(x);
  p.weight = w2.data_ptr();
  p.bias = b.defined() ? b.data_ptr() : nullptr;
  p.w_type = elem_type(w2);
  p.batch = x.size(0);
  p.seqlen = x.size(1);
  p.channels = x.size(2);
  p.kernel_size = w2.size(1);
  return p;
}
#endif

struct CausalConv1dSiluFunction : public torch::autograd::Function<CausalConv1dSiluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) {
    ctx->save_for_backward({x, weight, bias});
    if (!conv_uses_cuda(x, weight, bias)) return detail::conv1d_silu_forward_aten(x, weight, bias);
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor w2 = weight.reshape({x.size(2), weight.size(-1)}).contiguous();
    const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
    at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
    check_cuda(causal_conv1d_silu_forward_launch(conv_params(x, w2, b), out.data_ptr(), elem_type(out),
                                                 at::cuda::getCurrentCUDAStream()),
               "causal_conv1d_silu forward", x);
    return out;
#else
    return {};
#endif
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    detail::Conv1dGrads g;
    if (!conv_uses_cuda(x, weight, bias)) {
      g = detail::conv1d_silu_backward_aten(x, weight, bias, grad_outputs[0]);
    } else {
#ifdef MINIPUZZLE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      const at::Tensor w2 = weight.reshape({x.size(2), weight.size(-1)}).contiguous();
      const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
      const at::Tensor go = kernel_grad(grad_outputs[0]);
      const CausalConv1dParams p = conv_params(x, w2, b);
      const int64_t tiles = causal_conv1d_backward_tiles(p);
      const auto f32 = x.options().dtype(at::kFloat);
      g.dx = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
      at::Tensor dw_partial = at::empty({tiles, p.channels, p.kernel_size}, f32);
      at::Tensor db_partial = at::empty({tiles, p.channels}, f32);
      check_cuda(causal_conv1d_silu_backward_launch(p, go.data_ptr(), elem_type(go), g.dx.data_ptr(),
                                                    dw_partial.data_ptr<float>(), db_partial.data_ptr<float>(),
                                                    at::cuda::getCurrentCUDAStream()),
                 "causal_conv1d_silu backward", x);
      g.dweight = dw_partial.sum(0);
      g.dbias = db_partial.sum(0);
#endif
    }
    return {g.dx, g.dweight.view(weight.sizes()).to(weight.scalar_type()),
            bias.defined() ? cast_like(g.dbias, bias) : at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_conv1d_silu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  MP_CHECK(x.defined() && x.dim() == 3, "causal_conv1d_silu: x must be [batch, seqlen, channels], got ",
           x.defined() ? x.sizes() : at::IntArrayRef{});
  const int64_t C = x.size(2);
  MP_CHECK(weight.defined() && (weight.dim() == 2 || (weight.dim() == 3 && weight.size(1) == 1)) &&
               weight.size(0) == C,
           "causal_conv1d_silu: weight must be [", C, ", 1, K] or [", C, ", K] for ", C, " channels, got ",
           weight.sizes());
  MP_CHECK(weight.size(-1) >= 1, "causal_conv1d_silu: empty kernel");
  MP_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == C), "causal_conv1d_silu: bias must be [", C,
           "], got ", bias.sizes());
  MP_CHECK(weight.device() == x.device() && (!bias.defined() || bias.device() == x.device()),
           "causal_conv1d_silu: x on ", x.device(), " but weight on ", weight.device());
  // Autograd Functions take no undefined tensors; a zero bias is the same convolution (its gradient is dropped).
  const at::Tensor b = bias.defined() ? bias : at::zeros({C}, weight.options());
  return CausalConv1dSiluFunction::apply(x, weight, b);
}

}  // namespace mp::kernels
