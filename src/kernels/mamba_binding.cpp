// Mamba-2 kernel bindings (include/minipuzzle/kernels.h): shape/dtype checks, dispatch to the CUDA launchers
// (causal_conv1d.cu, ssd_scan.cu, gated_rmsnorm.cu, relu2.cu) or to the ATen twins (*_cpu.cpp), and the autograd
// Functions that keep the model differentiable. Each Function saves only its inputs: the backward kernels
// recompute what they need (the SSD backward re-runs the chunk pass rather than keeping [B,c,H,Q,Q] matrices).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <map>
#include <cstdlib>
#include <string>

#include "kernels/mamba_internal.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/causal_conv1d_cuda.h"
#include "kernels/gated_rmsnorm_cuda.h"
#include "kernels/relu2_cuda.h"
#include "kernels/ssd_scan_cuda.h"
#endif

namespace mp::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

[[maybe_unused]] bool is_f32_or_bf16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

at::Tensor cast_like(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad.to(like.scalar_type()) : grad;
}

#ifdef MINIPUZZLE_WITH_CUDA
ElemType elem_type(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? ElemType::f32 : ElemType::bf16; }

// A gradient as a contiguous tensor the kernels read (float32 unless it already is bf16/f32).
at::Tensor kernel_grad(const at::Tensor& g) { return (is_f32_or_bf16(g) ? g : g.to(at::kFloat)).contiguous(); }

void check_cuda(cudaError_t err, const char* kernel, const at::Tensor& x, int blas_status = 0) {
  MP_CHECK(err == cudaSuccess, kernel, " CUDA launch failed: ", cudaGetErrorString(err), " (input ", x.sizes(), " ",
           x.scalar_type(), " on ", x.device(), "; last cuBLAS status ", blas_status, ", 0 = none failed)");
}
#endif

// ---- causal conv1d + SiLU --------------------------------------------------------------------------------------

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

// ---- gated RMSNorm ---------------------------------------------------------------------------------------------

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

// ---- SSD scan --------------------------------------------------------------------------------------------------

#ifdef MINIPUZZLE_WITH_CUDA
// x, Bm, Cm in the layout the kernels address: bf16, unit inner stride, packed heads/groups, whole chunks.
struct SsdDeviceInputs {
  at::Tensor x, B, C, dt, A, D;
  SsdShape shape;
  int64_t T = 0;

  SsdDeviceInputs(const at::Tensor& x_in, const at::Tensor& dt_in, const at::Tensor& A_in, const at::Tensor& B_in,
                  const at::Tensor& C_in, const at::Tensor& D_in, int64_t chunk) {
    T = x_in.size(1);
    const int64_t pad = (chunk - T % chunk) % chunk;
    auto packed = [&](const at::Tensor& t) {
      at::Tensor r = pad ? at::constant_pad_nd(t, {0, 0, 0, 0, 0, pad}, 0.0) : t;
      return (r.stride(3) == 1 && r.stride(2) == r.size(3)) ? r : r.contiguous();
    };
    x = packed(x_in);
    B = packed(B_in);
    C = packed(C_in);
    dt = dt_in.to(at::kFloat);
    if (pad) dt = at::constant_pad_nd(dt, {0, 0, 0, pad}, 0.0);
    dt = dt.contiguous();
    A = A_in.to(at::kFloat).contiguous();
    D = D_in.to(at::kFloat).contiguous();
    shape.batch = x.size(0);
    shape.seqlen = x.size(1);
    shape.heads = x.size(2);
    shape.head_dim = x.size(3);
    shape.groups = B.size(2);
    shape.state = B.size(3);
    shape.chunk = chunk;
  }

  SsdInputs raw() const {
    SsdInputs in;
    in.x = x.data_ptr();
    in.x_stride_b = x.stride(0);
    in.x_stride_t = x.stride(1);
    in.B = B.data_ptr();
    in.B_stride_b = B.stride(0);
    in.B_stride_t = B.stride(1);
    in.C = C.data_ptr();
    in.C_stride_b = C.stride(0);
    in.C_stride_t = C.stride(1);
    in.dt = dt.data_ptr<float>();
    in.A = A.data_ptr<float>();
    in.D = D.data_ptr<float>();
    return in;
  }
};

// The chunk pass's buffers (SsdWork), allocated in their logical shapes.
struct SsdWorkBuffers {
  at::Tensor acum, CB, M, Xw, states, start_states, y_off, pointers;
  SsdWork work;

  SsdWorkBuffers(const SsdShape& s, const at::TensorOptions& opts) {
    const int64_t Bn = s.batch, T = s.seqlen, H = s.heads, P = s.head_dim, G = s.groups, N = s.state,
                  Q = s.chunk, nc = s.chunks();
    const auto f32 = opts.dtype(at::kFloat), bf = opts.dtype(at::kBFloat16);
    acum = at::empty({Bn, H, nc, Q}, f32);
    CB = at::empty({Bn, nc, G, Q, Q}, f32);
    M = at::empty({Bn, nc, H, Q, Q}, bf);
    Xw = at::empty({Bn, T, H, P}, bf);
    states = at::empty({Bn, nc, H, P, N}, f32);
    start_states = at::empty({Bn, nc, H, P, N}, bf);
    y_off = at::empty({Bn, T, H, P}, f32);
    pointers = at::empty({3 * Bn * nc * H}, opts.dtype(at::kLong));
    work.acum = acum.data_ptr<float>();
    work.CB = CB.data_ptr<float>();
    work.M = M.data_ptr();
    work.Xw = Xw.data_ptr();
    work.states = states.data_ptr<float>();
    work.start_states = start_states.data_ptr();
    work.y_off = y_off.data_ptr<float>();
    work.gemm_pointers = reinterpret_cast<void**>(pointers.data_ptr<int64_t>());
  }
};

// The backward's extra buffers (SsdGradWork).
struct SsdGradBuffers {
  at::Tensor dy_bf16, dy_decayed, dstates, dchunk_decay, dXw, dx_intra, dM, dCB, dacum, ddt_intra;
  SsdGradWork work;

  SsdGradBuffers(const SsdShape& s, const at::TensorOptions& opts) {
    const int64_t Bn = s.batch, T = s.seqlen, H = s.heads, P = s.head_dim, G = s.groups, N = s.state,
                  Q = s.chunk, nc = s.chunks();
    const auto f32 = opts.dtype(at::kFloat), bf = opts.dtype(at::kBFloat16);
    dy_bf16 = at::empty({Bn, T, H, P}, bf);
    dy_decayed = at::empty({Bn, T, H, P}, bf);
    dstates = at::empty({Bn, nc, H, P, N}, bf);
    dchunk_decay = at::empty({Bn, H, nc}, f32);
    dXw = at::empty({Bn, T, H, P}, f32);
    dx_intra = at::empty({Bn, T, H, P}, f32);
    dM = at::empty({Bn, nc, H, Q, Q}, f32);
    dCB = at::empty({Bn, nc, G, Q, Q}, bf);
    dacum = at::empty({Bn, H, nc, Q}, f32);
    ddt_intra = at::empty({Bn, H, nc, Q}, f32);
    work.dy_bf16 = dy_bf16.data_ptr();
    work.dy_decayed = dy_decayed.data_ptr();
    work.dstates = dstates.data_ptr();
    work.dchunk_decay = dchunk_decay.data_ptr<float>();
    work.dXw = dXw.data_ptr<float>();
    work.dx_intra = dx_intra.data_ptr<float>();
    work.dM = dM.data_ptr<float>();
    work.dCB = dCB.data_ptr();
    work.dacum = dacum.data_ptr<float>();
    work.ddt_intra = ddt_intra.data_ptr<float>();
  }
};

// y [B, padded T, H, P] float.
at::Tensor ssd_forward_cuda(const SsdDeviceInputs& in, const SsdWorkBuffers& buffers) {
  const SsdShape& s = in.shape;
  at::Tensor y = at::empty({s.batch, s.seqlen, s.heads, s.head_dim}, in.x.options().dtype(at::kFloat));
  check_cuda(ssd_scan_forward_launch(s, in.raw(), buffers.work, y.data_ptr<float>(),
                                     at::cuda::getCurrentCUDABlasHandle(), at::cuda::getCurrentCUDAStream()),
             "ssd_scan forward", in.x, ssd_scan_last_blas_status());
  return y;
}

// Gradients over the padded sequence (dx bf16, the rest float32). dy: float [B, padded T, H, P] contiguous.
detail::SsdGradsAten ssd_backward_cuda(const SsdDeviceInputs& in, const at::Tensor& dy, const SsdWorkBuffers& buffers,
                                       const SsdGradBuffers& grad_buffers) {
  const SsdShape& s = in.shape;
  const auto f32 = in.x.options().dtype(at::kFloat);
  detail::SsdGradsAten g;
  g.dx = at::empty({s.batch, s.seqlen, s.heads, s.head_dim}, in.x.options().dtype(at::kBFloat16));
  g.ddt = at::empty({s.batch, s.seqlen, s.heads}, f32);
  g.dA = at::empty({s.heads}, f32);
  g.dB = at::empty({s.batch, s.seqlen, s.groups, s.state}, f32);
  g.dC = at::empty({s.batch, s.seqlen, s.groups, s.state}, f32);
  g.dD = at::empty({s.heads}, f32);
  SsdGrads grads;
  grads.dx = g.dx.data_ptr();
  grads.ddt = g.ddt.data_ptr<float>();
  grads.dA = g.dA.data_ptr<float>();
  grads.dB = g.dB.data_ptr<float>();
  grads.dC = g.dC.data_ptr<float>();
  grads.dD = g.dD.data_ptr<float>();
  check_cuda(ssd_scan_backward_launch(s, in.raw(), buffers.work, dy.data_ptr<float>(), grad_buffers.work, grads,
                                      at::cuda::getCurrentCUDABlasHandle(), at::cuda::getCurrentCUDAStream()),
             "ssd_scan backward", in.x, ssd_scan_last_blas_status());
  return g;
}

at::Tensor padded_grad(const at::Tensor& dy, int64_t padded_T) {
  at::Tensor g = dy.to(at::kFloat);
  if (g.size(1) < padded_T) g = at::constant_pad_nd(g, {0, 0, 0, 0, 0, padded_T - g.size(1)}, 0.0);
  return g.contiguous();
}
#endif

bool ssd_uses_cuda(const at::Tensor& x, const at::Tensor& Bm, const at::Tensor& Cm, int64_t chunk) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || Bm.scalar_type() != at::kBFloat16 ||
      Cm.scalar_type() != at::kBFloat16)
    return false;
  const c10::cuda::CUDAGuard guard(x.device());
  return ssd_scan_cuda_supported(x.size(2), x.size(3), Bm.size(2), chunk);
#else
  return false;
#endif
}

struct SsdScanFunction : public torch::autograd::Function<SsdScanFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                            const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, int64_t chunk) {
    ctx->save_for_backward({x, dt, A, Bm, Cm, D});
    ctx->saved_data["chunk"] = chunk;
    if (!ssd_uses_cuda(x, Bm, Cm, chunk)) return detail::ssd_forward_aten(x, dt, A, Bm, Cm, D, chunk);
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const SsdDeviceInputs in(x, dt, A, Bm, Cm, D, chunk);
    const at::Tensor y = ssd_forward_cuda(in, SsdWorkBuffers(in.shape, x.options()));
    return in.T == in.shape.seqlen ? y : y.narrow(1, 0, in.T);
#else
    return {};
#endif
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &dt = saved[1], &A = saved[2], &Bm = saved[3], &Cm = saved[4], &D = saved[5];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    detail::SsdGradsAten g;
    if (!ssd_uses_cuda(x, Bm, Cm, chunk)) {
      g = detail::ssd_backward_aten(x, dt, A, Bm, Cm, D, chunk, grad_outputs[0]);
    } else {
#ifdef MINIPUZZLE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(x.device());
      const SsdDeviceInputs in(x, dt, A, Bm, Cm, D, chunk);
      g = ssd_backward_cuda(in, padded_grad(grad_outputs[0], in.shape.seqlen), SsdWorkBuffers(in.shape, x.options()),
                            SsdGradBuffers(in.shape, x.options()));
      if (in.T != in.shape.seqlen) {
        g.dx = g.dx.narrow(1, 0, in.T);
        g.ddt = g.ddt.narrow(1, 0, in.T);
        g.dB = g.dB.narrow(1, 0, in.T);
        g.dC = g.dC.narrow(1, 0, in.T);
      }
#endif
    }
    return {cast_like(g.dx, x),  cast_like(g.ddt, dt), cast_like(g.dA, A), cast_like(g.dB, Bm),
            cast_like(g.dC, Cm), cast_like(g.dD, D),   at::Tensor()};
  }
};

// ---- relu^2 ----------------------------------------------------------------------------------------------------

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

// ---- test hook: every stage of the CUDA scan ---------------------------------------------------------------------

namespace detail {

std::map<std::string, at::Tensor> ssd_stages_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                  const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                                  int64_t chunk, const at::Tensor& dy) {
#ifdef MINIPUZZLE_WITH_CUDA
  MP_CHECK(ssd_uses_cuda(x, Bm, Cm, chunk), "ssd_stages_cuda: these inputs would not run the CUDA kernel (x ",
           x.sizes(), " ", x.scalar_type(), " on ", x.device(), ", chunk ", chunk, ")");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::NoGradGuard no_grad;
  const SsdDeviceInputs in(x.detach(), dt.detach(), A.detach(), Bm.detach(), Cm.detach(), D.detach(), chunk);
  std::map<std::string, at::Tensor> m;
  {
    const SsdWorkBuffers fwd(in.shape, x.options());
    m["y"] = ssd_forward_cuda(in, fwd);
    m["acum"] = fwd.acum, m["CB"] = fwd.CB, m["M"] = fwd.M, m["Xw"] = fwd.Xw, m["chunk_states"] = fwd.states;
    m["start_states"] = fwd.start_states, m["y_off"] = fwd.y_off;
  }
  const SsdWorkBuffers bwd(in.shape, x.options());
  const SsdGradBuffers gb(in.shape, x.options());
  ssd_backward_cuda(in, padded_grad(dy, in.shape.seqlen), bwd, gb);
  m["dstates_direct"] = bwd.states;  // the backward reuses the chunk-state buffer for dL/dH_c from the outputs
  m["dstates"] = gb.dstates, m["dchunk_decay"] = gb.dchunk_decay, m["dXw"] = gb.dXw, m["dx_intra"] = gb.dx_intra;
  m["dM"] = gb.dM.tril();  // the GEMM fills the whole square; only s <= l is used
  m["dCB"] = gb.dCB, m["dacum_intra"] = gb.dacum, m["ddt_intra"] = gb.ddt_intra;
  return m;
#else
  fail("ssd_stages_cuda: minipuzzle was built without CUDA");
#endif
}

}  // namespace detail

// ---- public face -----------------------------------------------------------------------------------------------

bool built_with_cuda() {
#ifdef MINIPUZZLE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
// Bit i set: MambaOp i runs its kernel in the model. -1: not decided yet (the environment is read once).
std::atomic<int> g_model_kernels{-1};
std::atomic<bool> g_kernels_on_cpu{false};

int kernels_from_env() {
  const char* env = std::getenv("MINIPUZZLE_MAMBA_KERNELS");
  if (!env || std::string(env).empty() || std::string(env) == "1") return 7;
  if (std::string(env) == "0") return 0;
  int bits = 0;
  std::string spec = std::string(env) + ",";
  for (size_t start = 0, comma; (comma = spec.find(',', start)) != std::string::npos; start = comma + 1) {
    const std::string item = spec.substr(start, comma - start);
    if (item == "conv") bits |= 1;
    else if (item == "ssd") bits |= 2;
    else if (item == "norm") bits |= 4;
    else if (!item.empty())
      fail("MINIPUZZLE_MAMBA_KERNELS: unknown kernel '", item, "'; use 0, 1, or a comma list of conv,ssd,norm");
  }
  return bits;
}
}  // namespace

bool model_uses_kernel(MambaOp op, const at::Tensor& t) {
  if (t.is_cpu() && g_kernels_on_cpu.load()) return true;
  if (!built_with_cuda() || !t.is_cuda()) return false;
  int bits = g_model_kernels.load();
  if (bits < 0) {
    bits = kernels_from_env();
    g_model_kernels.store(bits);
  }
  return (bits >> static_cast<int>(op)) & 1;
}

void set_model_uses_kernels(bool enabled) { g_model_kernels.store(enabled ? 7 : 0); }
void set_model_kernels_on_cpu(bool enabled) { g_kernels_on_cpu.store(enabled); }

bool ssd_scan_cuda_supported(int64_t heads, int64_t head_dim, int64_t groups, int64_t chunk) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (groups <= 0 || heads % groups != 0 || chunk % 32 != 0 || head_dim % 8 != 0 || chunk <= 0) return false;
  SsdShape s;
  s.heads = heads, s.head_dim = head_dim, s.groups = groups, s.chunk = chunk;
  return ssd_scan_backward_smem_bytes(s) <= at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
#else
  (void)heads, (void)head_dim, (void)groups, (void)chunk;
  return false;
#endif
}

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

at::Tensor ssd_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                    const at::Tensor& Cm, const at::Tensor& D, int64_t chunk) {
  MP_CHECK(x.defined() && x.dim() == 4, "ssd_scan: x must be [batch, seqlen, heads, head_dim]");
  const int64_t batch = x.size(0), T = x.size(1), H = x.size(2);
  MP_CHECK(dt.defined() && dt.sizes() == at::IntArrayRef({batch, T, H}), "ssd_scan: dt must be [", batch, ", ", T,
           ", ", H, "], got ", dt.sizes());
  MP_CHECK(A.defined() && A.dim() == 1 && A.size(0) == H && D.defined() && D.dim() == 1 && D.size(0) == H,
           "ssd_scan: A and D must be [", H, "], got ", A.sizes(), " and ", D.sizes());
  MP_CHECK(Bm.defined() && Bm.dim() == 4 && Bm.size(0) == batch && Bm.size(1) == T && Bm.sizes() == Cm.sizes(),
           "ssd_scan: B and C must be [", batch, ", ", T, ", groups, state] and equal, got ", Bm.sizes(), " and ",
           Cm.sizes());
  MP_CHECK(Bm.size(2) > 0 && H % Bm.size(2) == 0, "ssd_scan: ", H, " heads do not split into ", Bm.size(2),
           " groups");
  MP_CHECK(chunk > 0, "ssd_scan: chunk must be positive, got ", chunk);
  for (const at::Tensor* t : {&dt, &A, &Bm, &Cm, &D})
    MP_CHECK(t->device() == x.device(), "ssd_scan: x on ", x.device(), " but another input on ", t->device());
  return SsdScanFunction::apply(x, dt, A, Bm, Cm, D, chunk);
}

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

at::Tensor relu_squared(const at::Tensor& x) {
  MP_CHECK(x.defined(), "relu_squared: undefined input");
  return ReluSquaredFunction::apply(x);
}

}  // namespace mp::kernels
