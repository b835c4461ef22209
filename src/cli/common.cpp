#include "src/cli/common.h"

#include <ATen/Context.h>

#include "minipuzzle/data_input.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "src/cli/command.h"

namespace mp::cli {

c10::Device parse_device(const std::string& text) {
  bool gpu = at::hasCUDA();
  if (text == "auto") return gpu ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (text == "cpu") return c10::Device(c10::kCPU);
  if (text.rfind("cuda", 0) == 0) {
    MP_CHECK(gpu, "--device ", text, ": no CUDA GPU is available on this machine (use --device cpu)");
    return c10::Device(text);
  }
  fail("--device must be auto, cpu, cuda or cuda:N, not \"", text, "\"");
}

at::ScalarType default_dtype(c10::Device device) { return device.is_cuda() ? at::kBFloat16 : at::kFloat; }

void add_kernel_options(CLI::App* app) {
  app->add_option_function<std::string>(
         "--moe-kernel",
         [](const std::string& name) {
           kernels::KernelOptions o = kernels::kernel_options();
           o.moe = kernels::parse_moe_kernel(name);
           kernels::set_kernel_options(o);
         },
         "MoE routed experts on CUDA without gradients: loop (per-expert GEMMs, the default) | grouped (one "
         "grouped-GEMM launch per projection for all experts)")
      ->check(CLI::IsMember({"loop", "grouped"}));
  app->add_option_function<std::string>(
         "--mamba-kernels",
         [](const std::string& spec) {
           kernels::KernelOptions o = kernels::kernel_options();
           kernels::parse_mamba_kernels(spec, &o);
           kernels::set_kernel_options(o);
         },
         "Mamba ops on CUDA through their kernels: all (the default) | none (the eager ATen path) | a comma list "
         "of conv,ssd,norm")
      ->check(
          [](const std::string& spec) {
            try {
              kernels::KernelOptions o;
              kernels::parse_mamba_kernels(spec, &o);
              return std::string();
            } catch (const std::exception& e) {
              return std::string(e.what());
            }
          },
          "all|none|conv,ssd,norm");
}

void add_device_option(CLI::App* app, std::string* device) {
  app->add_option("--device", *device, "auto | cpu | cuda | cuda:N (CPU runs fp32, CUDA bf16)")->capture_default_str();
}

std::unique_ptr<Tokenizer> tokenizer_for_text(const std::string& explicit_path, const std::string& checkpoint) {
  return tokenizer_for_data(explicit_path, {checkpoint});
}

void add_data_format_option(CLI::App* app, std::string* format) {
  app->add_option("--data-format", *format,
                  "auto (token file, Megatron .bin/.idx, .npy or UTF-8 text, told apart by their contents) | tokens "
                  "| megatron | npy | text | u16 | u32 | u64 | i32 | i64 (raw little-endian ids, read only when named)")
      ->capture_default_str();
}

TokenFile open_data_argument(const std::string& path, const std::string& option, const std::string& format,
                             const Tokenizer* tokenizer, int64_t vocab_size) {
  DataInputOptions o;
  o.format = format;
  o.tokenizer = tokenizer;
  o.vocab_size = uint64_t(vocab_size);
  o.option = option;
  return open_data(path, o);
}

}  // namespace mp::cli
