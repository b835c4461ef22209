// gated_rms_norm (include/minipuzzle/kernels.h): shape/dtype checks, dispatch to the CUDA launchers of
// gated_rmsnorm.cu or to the ATen twin (conv_norm_cpu.cpp), and the autograd Function. The Function saves only its
// inputs (and the channel mask); the backward kernel recomputes the group statistics.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/mamba_binding_common.h"
#include "kernels/mamba_internal.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/gated_rmsnorm_cuda.h"
#endif

namespace mp::kernels {
namespace {

using namespace binding;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool norm_uses_cuda(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w) {
#ifdef MINIPUZZLE_WITH_CUDA
  return y.is_cuda() && is_f32_or_bf16(y) && is_f32_or_bf16(z) && is_f32_or_bf16(w);
#else
  return false;
#endif
}

// [..., C] -> [R, C] with a unit channel stride (a view when possible).
at::Tensor rows_of(const at::Tensor& t) {
  at::Tensor r = t.reshape({-1, t.size(-1)});
  return r.stride(1) == 1 ? r : r.contiguous();
}

#ifdef MINIPUZZLE_WITH_CUDA
GatedRmsNormParams norm_params(const at::Tensor& y2, const at::Tensor& z2, const at::Tensor& w, int64_t groups,
                               double eps, const at::Tensor& mask, const at::Tensor& kept) {
  GatedRmsNormParams p;
  p.y = y2.data_ptr();
  p.y_stride = y2.stride(0);
  p.y_type = elem_type(y2);
  p.z = z2.data_ptr();
  p.z_stride = z2.stride(0);
  p.z_type = elem_type(z2);
  p.weight = w.data_ptr();
  p.w_type = elem_type(w);
  p.mask = mask.defined() ? mask.data_ptr<float>() : nullptr;
  p.kept = kept.defined() ? kept.data_ptr<float>() : nullptr;
  p.rows = y2.size(0);
  p.channels = y2.size(1);
  p.groups = groups;
  p.eps = float(eps);
  return p;
}
#endif

// The channel mask travels outside autograd's tensor inputs: it may be undefined and never takes a gradient.
struct NormMask {
  at::Tensor mask;  // float [C] 0/1 or undefined
};

struct GatedRmsNormFunction : public torch::autograd::Function<GatedRmsNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                            int64_t groups, double eps, const NormMask& norm_mask, int64_t out_dtype) {
    const at::Tensor& mask = norm_mask.mask;
    ctx->save_for_backward({y, z, weight});
    if (mask.defined()) ctx->saved_data["mask"] = mask;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    const auto dtype = static_cast<at::ScalarType>(out_dtype);
    const at::Tensor y2 = rows_of(y), z2 = rows_of(z);
    if (!norm_uses_cuda(y, z, weight) || !(dtype == at::kFloat || dtype == at::kBFloat16))
      return detail::gated_norm_forward_aten(y2, z2, weight, groups, eps, mask, dtype).view(y.sizes());
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(y.device());
    const at::Tensor w = weight.contiguous();
    const at::Tensor m = mask.defined() ? mask.to(at::kFloat).contiguous() : mask;
    const at::Tensor kept = m.defined() ? m.view({groups, -1}).sum(1).contiguous() : at::Tensor();
    at::Tensor out = at::empty(y2.sizes(), y.options().dtype(dtype));
    check_cuda(gated_rms_norm_forward_launch(norm_params(y2, z2, w, groups, eps, m, kept), out.data_ptr(),
                                             elem_type(out), at::cuda::getCurrentCUDAStream()),
               "gated_rms_norm forward", y);
    return out.view(y.sizes());
#else
    return {};
#endif
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &z = saved[1], &weight = saved[2];
    const auto found = ctx->saved_data.find("mask");
    const at::Tensor mask = found == ctx->saved_data.end() ? at::Tensor() : found->second.toTensor();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    const at::Tensor y2 = rows_of(y), z2 = rows_of(z);
    const at::Tensor go = rows_of(grad_outputs[0]);
    at::Tensor dy, dz, dw;
    if (!norm_uses_cuda(y, z, weight)) {
      detail::GatedNormGrads g = detail::gated_norm_backward_aten(y2, z2, weight, groups, eps, mask, go);
      dy = g.dy, dz = g.dz, dw = g.dweight;
    } else {
#ifdef MINIPUZZLE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(y.device());
      const at::Tensor w = weight.contiguous();
      const at::Tensor m = mask.defined() ? mask.to(at::kFloat).contiguous() : mask;
      const at::Tensor kept = m.defined() ? m.view({groups, -1}).sum(1).contiguous() : at::Tensor();
      const GatedRmsNormParams p = norm_params(y2, z2, w, groups, eps, m, kept);
      const at::Tensor g = kernel_grad(go);
      dy = at::empty(y2.sizes(), y.options());
      dz = at::empty(z2.sizes(), z.options());
      at::Tensor partial = at::empty({gated_rms_norm_backward_row_tiles(p), p.channels}, y.options().dtype(at::kFloat));
      check_cuda(gated_rms_norm_backward_launch(p, g.data_ptr(), elem_type(g), dy.data_ptr(), dz.data_ptr(),
                                                partial.data_ptr<float>(), at::cuda::getCurrentCUDAStream()),
                 "gated_rms_norm backward", y);
      dw = partial.sum(0);
#endif
    }
    return {cast_like(dy, y).view(y.sizes()), cast_like(dz, z).view(z.sizes()), cast_like(dw, weight), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor gated_rms_norm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t groups,
                          double eps, const at::Tensor& channel_mask, c10::optional<at::ScalarType> out_dtype) {
  MP_CHECK(y.defined() && z.defined() && y.sizes() == z.sizes() && y.dim() >= 1,
           "gated_rms_norm: y and z must have the same shape [..., channels], got ", y.sizes(), " and ", z.sizes());
  const int64_t C = y.size(-1);
  MP_CHECK(weight.defined() && weight.dim() == 1 && weight.size(0) == C, "gated_rms_norm: weight must be [", C,
           "], got ", weight.sizes());
  MP_CHECK(groups > 0 && C % groups == 0, "gated_rms_norm: ", C, " channels do not split into ", groups, " groups");
  MP_CHECK(C / groups <= 8192, "gated_rms_norm: groups of ", C / groups, " channels exceed the 8192 supported");
  MP_CHECK(!channel_mask.defined() || (channel_mask.dim() == 1 && channel_mask.size(0) == C),
           "gated_rms_norm: channel_mask must be [", C, "], got ", channel_mask.sizes());
  const at::ScalarType dtype = out_dtype.value_or(at::promote_types(weight.scalar_type(), y.scalar_type()));
  const at::Tensor mask = channel_mask.defined() ? channel_mask.to(y.device()).detach() : channel_mask;
  return GatedRmsNormFunction::apply(y, z, weight, groups, eps, NormMask{mask}, static_cast<int64_t>(dtype));
}

}  // namespace mp::kernels
