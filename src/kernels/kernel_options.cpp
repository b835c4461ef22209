// The model's kernel choices (include/minipuzzle/kernels.h: KernelOptions): which Mamba-2 ops the model routes
// through their kernels and which path runs the MoE layer's routed experts, and whether this build has the CUDA
// kernels at all. The ops themselves are bound one per file (causal_conv1d_binding.cpp, ssd_scan_binding.cpp,
// gated_rmsnorm_binding.cpp, relu2_binding.cpp, moe_binding.cpp).
#include <ATen/core/Tensor.h>

#include <atomic>
#include <string>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

namespace mp::kernels {

bool built_with_cuda() {
#ifdef MINIPUZZLE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
// Read on every Mamba / MoE layer: the options as bits of one atomic. Bit i (i < 3): MambaOp i runs its kernel;
// bit 3: the MoE layer takes the grouped GEMM.
constexpr int kMoeGroupedBit = 1 << 3;
int to_bits(const KernelOptions& o) {
  return (o.mamba_conv ? 1 << int(MambaOp::conv) : 0) | (o.mamba_ssd ? 1 << int(MambaOp::ssd) : 0) |
         (o.mamba_norm ? 1 << int(MambaOp::norm) : 0) | (o.moe == MoeKernel::grouped ? kMoeGroupedBit : 0);
}
std::atomic<int> g_kernels{to_bits(KernelOptions())};
std::atomic<bool> g_kernels_on_cpu{false};
}  // namespace

KernelOptions kernel_options() {
  const int bits = g_kernels.load();
  KernelOptions o;
  o.mamba_conv = (bits >> int(MambaOp::conv)) & 1;
  o.mamba_ssd = (bits >> int(MambaOp::ssd)) & 1;
  o.mamba_norm = (bits >> int(MambaOp::norm)) & 1;
  o.moe = bits & kMoeGroupedBit ? MoeKernel::grouped : MoeKernel::loop;
  return o;
}

void set_kernel_options(const KernelOptions& options) { g_kernels.store(to_bits(options)); }

MoeKernel parse_moe_kernel(const std::string& name) {
  if (name == "loop") return MoeKernel::loop;
  if (name == "grouped") return MoeKernel::grouped;
  fail("unknown MoE kernel '", name, "'; use loop or grouped");
}

const char* moe_kernel_name(MoeKernel kernel) { return kernel == MoeKernel::grouped ? "grouped" : "loop"; }

void parse_mamba_kernels(const std::string& spec, KernelOptions* options) {
  if (spec == "all" || spec == "none") {
    options->mamba_conv = options->mamba_ssd = options->mamba_norm = spec == "all";
    return;
  }
  bool conv = false, ssd = false, norm = false;
  const std::string list = spec + ",";
  for (size_t start = 0, comma; (comma = list.find(',', start)) != std::string::npos; start = comma + 1) {
    const std::string item = list.substr(start, comma - start);
    if (item == "conv") conv = true;
    else if (item == "ssd") ssd = true;
    else if (item == "norm") norm = true;
    else fail("unknown Mamba kernel '", item, "' in '", spec, "'; use all, none, or a comma list of conv,ssd,norm");
  }
  options->mamba_conv = conv, options->mamba_ssd = ssd, options->mamba_norm = norm;
}

bool moe_grouped_enabled() { return g_kernels.load() & kMoeGroupedBit; }

bool model_uses_kernel(MambaOp op, const at::Tensor& t) {
  if (t.is_cpu() && g_kernels_on_cpu.load()) return true;
  if (!built_with_cuda() || !t.is_cuda()) return false;
  return (g_kernels.load() >> static_cast<int>(op)) & 1;
}

void set_model_kernels_on_cpu(bool enabled) { g_kernels_on_cpu.store(enabled); }

}  // namespace mp::kernels
