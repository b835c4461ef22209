#include "src/cli/common.h"

#include <ATen/Context.h>


#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
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

void add_device_option(CLI::App* app, std::string* device) {
  app->add_option("--device", *device, "auto | cpu | cuda | cuda:N (CPU runs fp32, CUDA bf16)")->capture_default_str();
}

std::unique_ptr<Tokenizer> tokenizer_for_text(const std::string& explicit_path, const std::string& checkpoint) {
  std::string path = explicit_path;
  if (path.empty() && fs::exists(checkpoint + "/tokenizer.json")) path = checkpoint + "/tokenizer.json";
  if (path.empty() || path == "byte") return nullptr;
  return std::make_unique<Tokenizer>(Tokenizer::from_file(path));
}

}  // namespace mp::cli
