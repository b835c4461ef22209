// Which Mamba-2 ops the model routes through the kernels (include/minipuzzle/kernels.h: model_uses_kernel), and
// whether this build has the CUDA kernels at all. The ops themselves are bound one per file
// (causal_conv1d_binding.cpp, ssd_scan_binding.cpp, gated_rmsnorm_binding.cpp, relu2_binding.cpp).
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdlib>
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

}  // namespace mp::kernels
