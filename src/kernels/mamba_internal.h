// Internal to the Mamba-2 kernels: the ATen twins of every CUDA kernel (forward and hand-written backward, the
// same math and the same intermediates), used for CPU tensors, for shapes the CUDA kernels do not take, and as
// the reference of the GPU tests. The public face is include/minipuzzle/kernels.h.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace mp::kernels::detail {

// ---- causal depthwise conv1d + SiLU: x [B,T,C], weight [C,K], bias [C] or undefined -> [B,T,C] in x's dtype.
at::Tensor conv1d_silu_forward_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
struct Conv1dGrads {
  at::Tensor dx, dweight, dbias;  // dx in x's dtype; dweight [C,K] and dbias [C] in float32
};
Conv1dGrads conv1d_silu_backward_aten(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                      const at::Tensor& grad_out);

// ---- gated RMSNorm over groups: y, z [R,C]; weight [C]; mask [C] float 0/1 or undefined -> [R,C] in out_dtype.
at::Tensor gated_norm_forward_aten(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t groups,
                                   double eps, const at::Tensor& mask, at::ScalarType out_dtype);
struct GatedNormGrads {
  at::Tensor dy, dz, dweight;  // dy, dz float32 [R,C]; dweight float32 [C]
};
GatedNormGrads gated_norm_backward_aten(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight,
                                        int64_t groups, double eps, const at::Tensor& mask,
                                        const at::Tensor& grad_out);

// ---- chunked SSD scan (float32 math): x [B,T,H,P], dt [B,T,H], A [H], Bm, Cm [B,T,G,N], D [H] -> y float [B,T,H,P].
at::Tensor ssd_forward_aten(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                            const at::Tensor& Cm, const at::Tensor& D, int64_t chunk);
struct SsdGradsAten {
  at::Tensor dx, ddt, dA, dB, dC, dD;  // all float32, shaped like the inputs
};
// `stages`, when given, receives every intermediate under the names and layouts of the CUDA buffers (below).
SsdGradsAten ssd_backward_aten(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                               const at::Tensor& Cm, const at::Tensor& D, int64_t chunk, const at::Tensor& dy,
                               std::map<std::string, at::Tensor>* stages = nullptr);

// Test hook for the GPU tests: runs the CUDA forward and backward launchers on bf16 CUDA inputs and returns every
// intermediate buffer by name (acum, CB, M, Xw, chunk_states, start_states, y_off, dstates_direct, dstates,
// dchunk_decay, dXw, dx_intra, dM (lower triangle), dCB, dacum_intra, ddt_intra), shaped as ssd_backward_aten's
// `stages`, so a failing gradient can be traced to the stage that first differs. Throws without CUDA.
std::map<std::string, at::Tensor> ssd_stages_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                  const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                                  int64_t chunk, const at::Tensor& dy);

}  // namespace mp::kernels::detail
