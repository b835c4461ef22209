// The Mamba-2 path's kernels (issue 12): causal depthwise conv1d + SiLU, the chunked SSD scan, the gated RMSNorm
// and the relu^2 activation. Each function is differentiable (autograd) and dispatches by device:
//   - CUDA tensors of a supported dtype/shape run the CUDA kernels of src/kernels/*.cu (forward and backward),
//   - everything else runs the ATen twin (src/kernels/*_cpu.cpp): the same math as the model's layers, with the
//     hand-written backward the CUDA kernels implement.
// The model (src/model/mamba2.cpp, mlp.cpp) calls these for CUDA tensors and keeps its own ATen path on CPU.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mp::kernels {

// silu(causal depthwise conv1d(x)) over time.
//   x [B,T,C] (any strides with a unit channel stride, e.g. a slice of in_proj's output),
//   weight [C,1,K] or [C,K], bias [C] or undefined.  -> [B,T,C] contiguous, in x's dtype.
// CUDA kernel: x and weight float32 or bfloat16, K <= 8.
at::Tensor causal_conv1d_silu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Mamba-2's chunked SSD scan, float32 result [B,T,H,P]:
//   x [B,T,H,P], dt [B,T,H] (after softplus and clamp), A [H] (negative), Bm, Cm [B,T,G,N], D [H], chunk > 0.
// Same math as mp::model::ssd_chunk_scan. CUDA kernel: x, Bm, Cm bfloat16, chunk and P multiples of 32,
// 4 * (H/G) * chunk floats of shared memory available per block; other inputs run the ATen twin.
at::Tensor ssd_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                    const at::Tensor& Cm, const at::Tensor& D, int64_t chunk);

// Mamba's gated RMSNorm: weight * norm_within_groups(y * silu(z)) over the last dim, in float32 statistics.
//   y, z [..., C]; weight [C]; groups divides C; channel_mask [C] 0/1 or undefined (then masked channels are
//   zero and each group's mean runs over its kept channels, as mp::model::gated_rms_norm).
//   out_dtype: default promote(weight, y), which is what the model's function returns.
at::Tensor gated_rms_norm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t groups,
                          double eps, const at::Tensor& channel_mask = {},
                          c10::optional<at::ScalarType> out_dtype = c10::nullopt);

// relu(x)^2 in x's dtype (Nemotron-H's MLP activation), one pass forward and one backward on CUDA.
at::Tensor relu_squared(const at::Tensor& x);

// The routed experts of a MoE layer as one grouped GEMM over rows sorted by expert (issue 25): rows
// [o_e, o_e + counts[e]) of x (o_e the sum of the counts before e) go through weights[e] ([n, k], nn.Linear's
// layout): y = relu(x W_e^T)^2 when relu2, else x W_e^T; then times row_scale[row] (float32 [rows]) when defined.
// x [rows, k] with rows = sum(counts); -> [rows, n] in x's dtype. CUDA float32 / bfloat16 tensors: one kernel launch
// for all experts (src/kernels/moe_grouped_gemm.cu; float32 accumulation, epilogue fused), forward only;
// otherwise the per-expert ATen loop, moe_grouped_linear_reference (the CPU path and the GPU test's reference).
at::Tensor moe_grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                              const std::vector<int64_t>& counts, const at::Tensor& row_scale, bool relu2);
at::Tensor moe_grouped_linear_reference(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                                        const std::vector<int64_t>& counts, const at::Tensor& row_scale, bool relu2);
bool moe_grouped_linear_uses_cuda(const at::Tensor& x);

// True when this build has the CUDA kernels (nvcc was found at configure time).
bool built_with_cuda();

// The model's kernel choices where it has one (issue 26: options, not environment variables). Process-wide: the CLI
// sets them from --moe-kernel and --mamba-kernels (src/cli/common.h: add_kernel_options), tests and benchmarks
// call set_kernel_options. The defaults below are what runs when nobody says otherwise.
enum class MoeKernel { loop, grouped };
enum class MambaOp { conv, ssd, norm };
struct KernelOptions {
  // The MoE layer's routed experts: loop, the per-expert ATen GEMMs; grouped, moe_grouped_linear where it can run
  // (CUDA float32 / bfloat16, no gradient needed, no importance taps or channel masks; the loop otherwise).
  // loop by default until tests/gpu/test_moe_grouped_gpu has passed on a GPU host.
  MoeKernel moe = MoeKernel::loop;
  // The Mamba ops the model routes through their kernels for CUDA tensors (false: the model's eager ATen path on
  // the same device, e.g. to compare against it or to keep one kernel out). CPU tensors always keep the ATen path.
  bool mamba_conv = true, mamba_ssd = true, mamba_norm = true;
};
KernelOptions kernel_options();
void set_kernel_options(const KernelOptions& options);
// "loop" | "grouped" (throws otherwise).
MoeKernel parse_moe_kernel(const std::string& name);
const char* moe_kernel_name(MoeKernel kernel);
// "all" | "none" | a comma list of conv, ssd, norm (only those) into options' mamba_* fields (throws otherwise).
void parse_mamba_kernels(const std::string& spec, KernelOptions* options);

// Whether the MoE layer runs its routed experts through moe_grouped_linear when it can: kernel_options().moe.
bool moe_grouped_enabled();
// Whether the model routes tensor `t` through kernel `op`: CUDA tensors of a CUDA build whose op is on in
// kernel_options().
bool model_uses_kernel(MambaOp op, const at::Tensor& t);
// Tests only: CPU tensors too go through the kernels' autograd functions (their ATen bodies), so that a CPU run has
// the CUDA path's autograd structure: what each Mamba op keeps for backward (the memory plan's test measures it).
void set_model_kernels_on_cpu(bool enabled);

// Whether ssd_scan would run its CUDA kernel for these shapes on the current device (false off CUDA builds).
bool ssd_scan_cuda_supported(int64_t heads, int64_t head_dim, int64_t groups, int64_t chunk);

}  // namespace mp::kernels
