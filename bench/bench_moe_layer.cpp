// One MoE layer of the C++ model at Nemotron 3 Nano 30B-A3B's shape (hidden 2688, 128 experts x 1856, top-6, shared
// 3712), forward and forward+backward, bf16 on CUDA; prints one JSON line per routed-expert path: "grouped" (two
// grouped-GEMM launches per layer, kernels::moe_grouped_linear; forward only, so its fwd+bwd is the per-expert
// path's) and "per-expert" (one pair of GEMMs per expert). Compare with bench/moe_layer_transformers.py
// (transformers' NemotronHMoE, same shape and tokens) in the same session.
// Usage: bench_moe_layer [--tokens 4096] [--iters 5] [--device cuda|cpu] [--experts 128] [--width-div 1]
//                        [--path both|grouped|per-expert]
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "bench/gpu_timer.h"
#include "minipuzzle/kernels.h"
#include "minipuzzle/model.h"

using namespace mp;

int main(int argc, char** argv) {
  std::string device_name = at::hasCUDA() ? "cuda" : "cpu";
  int64_t tokens = 4096, experts = 128, div = 1;
  int iters = 5;
  std::string path = "both";
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return std::string(argv[++i]); };
    if (!std::strcmp(argv[i], "--tokens")) tokens = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--device")) device_name = next();
    else if (!std::strcmp(argv[i], "--experts")) experts = std::stoll(next());
    else if (!std::strcmp(argv[i], "--width-div")) div = std::stoll(next());  // CPU-sized shapes for a smoke run
    else if (!std::strcmp(argv[i], "--path")) path = next();
  }
  c10::Device device(device_name);
  at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  const int64_t H = 2688 / div, F = 1856 / div, S = 3712 / div, k = 6;
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 256}, {"hidden_size", H}, {"hybrid_override_pattern", "E"},
         {"n_routed_experts", experts}, {"num_experts_per_tok", k}, {"moe_intermediate_size", F},
         {"moe_shared_expert_intermediate_size", S}, {"routed_scaling_factor", 2.5}, {"n_group", 1}, {"topk_group", 1}};
  ModelConfig config = ModelConfig::from_json(j, "bench config");
  NemotronH model = NemotronH::random_init(config, 0, device, dtype);
  at::Tensor h = at::randn({1, tokens, H}, at::TensorOptions().dtype(dtype).device(device));
  // Per token: router + k experts + shared expert, 2 FLOPs per multiply-add.
  const double flops = 2.0 * double(tokens) * double(H) * double(experts + 2 * k * F + 2 * S);
  // Forward+backward always runs the per-expert path (the grouped GEMM is forward-only): timed once.
  model.set_requires_grad(true);
  at::Tensor hg = h.detach().requires_grad_(true);
  const double bwd_ms = bench::time_ms(device, 1, iters, [&] {
    at::Tensor y = model.forward_layer(0, hg);
    y.to(at::kFloat).square().mean().backward();
  });
  model.set_requires_grad(false);
  const bool grouped_runs = kernels::moe_grouped_linear_uses_cuda(h);
  for (const std::string which : {"grouped", "per-expert"}) {
    if (path != "both" && path != which) continue;
    if (which == "grouped" && !grouped_runs) {
      std::printf("{\"bench\":\"moe_layer_minipuzzle\",\"implementation\":\"minipuzzle-grouped\",\"tokens\":%lld,"
                  "\"error\":\"the grouped GEMM needs CUDA float32/bfloat16 (device %s)\"}\n",
                  (long long)tokens, device_name.c_str());
      continue;
    }
    kernels::KernelOptions ko = kernels::kernel_options();
    ko.moe = which == "grouped" ? kernels::MoeKernel::grouped : kernels::MoeKernel::loop;
    kernels::set_kernel_options(ko);
    double fwd_ms;
    {
      c10::AutoGradMode no_grad(false);
      fwd_ms = bench::time_ms(device, 2, iters, [&] { model.forward_layer(0, h); });
    }
    std::printf("{\"bench\":\"moe_layer_minipuzzle\",\"implementation\":\"minipuzzle-%s\",\"device\":\"%s\","
                "\"tokens\":%lld,\"hidden\":%lld,\"experts\":%lld,\"top_k\":%lld,\"expert_ffn\":%lld,"
                "\"shared_ffn\":%lld,\"fwd_ms\":%.3f,\"fwd_bwd_ms\":%.3f,\"fwd_tflops\":%.2f}\n",
                which.c_str(), device_name.c_str(), (long long)tokens, (long long)H, (long long)experts,
                (long long)k, (long long)F, (long long)S, fwd_ms, bwd_ms, flops / fwd_ms / 1e9);
  }
  return 0;
}
