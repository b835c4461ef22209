// ssd_scan (include/minipuzzle/kernels.h): shape/dtype checks, dispatch to the CUDA launchers of ssd_scan.cu or
// to the ATen twin (ssd_scan_cpu.cpp), the autograd Function, and the GPU tests' hook on every stage of the CUDA scan.
// The Function saves only its inputs: the backward re-runs the chunk pass rather than keeping [B,c,H,Q,Q] matrices.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <map>
#include <string>

#include "kernels/mamba_binding_common.h"
#include "kernels/mamba_internal.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/ssd_scan_cuda.h"
#endif

namespace mp::kernels {
namespace {

using namespace binding;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

}  // namespace mp::kernels
