// Forward (and forward+backward) throughput of the C++ model at 8B-class layer shapes; prints JSON.
// Usage: bench_model_forward [--pattern M-M*M-] [--batch 1] [--seq 4096] [--iters 5] [--device cuda|cpu]
//        [--backward]
// Compare with bench/model_forward_transformers.py (same shapes, same formula) run in the same session.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "bench/gpu_timer.h"
#include "bench/model_shapes.h"
#include "minipuzzle/model.h"

using namespace mp;

int main(int argc, char** argv) {
  std::string pattern = "M-M*M-", device_name = at::hasCUDA() ? "cuda" : "cpu";
  int64_t batch = 1, seq = 4096;
  int iters = 5;
  bool backward = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return std::string(argv[++i]); };
    if (!std::strcmp(argv[i], "--pattern")) pattern = next();
    else if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--device")) device_name = next();
    else if (!std::strcmp(argv[i], "--backward")) backward = true;
  }
  c10::Device device(device_name);
  at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  ModelConfig config = bench::nemotron_h_8b_layers(pattern);
  NemotronH model = NemotronH::random_init(config, 0, device, dtype);
  at::Tensor ids = at::randint(0, config.vocab_size, {batch, seq}, at::TensorOptions().dtype(at::kLong)).to(device);
  const double flops = bench::forward_flops(config, batch, seq);

  double fwd_ms;
  {
    c10::AutoGradMode no_grad(false);
    fwd_ms = bench::time_ms(device, 1, iters, [&] { model.forward(ids); });
  }
  double fwd_bwd_ms = 0;
  if (backward) {
    model.set_requires_grad(true);
    fwd_bwd_ms = bench::time_ms(device, 1, iters, [&] {
      at::Tensor logits = model.forward(ids);
      at::Tensor loss = logits.to(at::kFloat).logsumexp(-1).mean();
      loss.backward();
      for (auto& [_, p] : model.parameters()) p.mutable_grad() = at::Tensor();
    });
  }
  std::printf(
      "{\"impl\":\"minipuzzle\",\"pattern\":\"%s\",\"batch\":%lld,\"seq\":%lld,\"device\":\"%s\",\"dtype\":\"%s\","
      "\"forward_flops\":%.6g,\"forward_ms\":%.3f,\"forward_tflops\":%.2f,\"tokens_per_s\":%.1f",
      pattern.c_str(), (long long)batch, (long long)seq, device.str().c_str(), c10::toString(dtype), flops, fwd_ms,
      flops / fwd_ms / 1e9, batch * seq / fwd_ms * 1e3);
  if (backward)
    std::printf(",\"fwd_bwd_ms\":%.3f,\"fwd_bwd_tflops\":%.2f", fwd_bwd_ms, 3.0 * flops / fwd_bwd_ms / 1e9);
  std::printf(",\"flop_formula\":\"2*tokens*matmul_params + causal attention 2*2*h*d*T^2/2 + SSD per token "
              "2*H*(Q*P+2*N*P)+2*G*Q*N; backward counted as 2x forward\"}\n");
  return 0;
}
