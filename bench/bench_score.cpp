// Cost of importance scoring against a plain forward over the same tokens, at 8B-class layer shapes; JSON.
// Usage: bench_score [--pattern M-M*M-] [--samples 4] [--seq 4096] [--iters 3] [--device cuda|cpu]
// The scoring pass is `compute_scores` with the width criteria (activation statistics of every tap, per-head
// output contributions, FLAP) and no depth criteria (those are extra forwards by definition).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "bench/gpu_timer.h"
#include "bench/model_shapes.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"

using namespace mp;

int main(int argc, char** argv) {
  std::string pattern = "M-M*M-", device_name = at::hasCUDA() ? "cuda" : "cpu";
  int64_t samples = 4, seq = 4096;
  int iters = 3;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return std::string(argv[++i]); };
    if (!std::strcmp(argv[i], "--pattern")) pattern = next();
    else if (!std::strcmp(argv[i], "--samples")) samples = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--device")) device_name = next();
  }
  c10::Device device(device_name);
  ModelConfig config = bench::nemotron_h_8b_layers(pattern);
  NemotronH model = NemotronH::random_init(config, 0, device, device.is_cuda() ? at::kBFloat16 : at::kFloat);
  at::Tensor ids = at::randint(0, config.vocab_size, {samples, seq}, at::TensorOptions().dtype(at::kLong));
  c10::AutoGradMode no_grad(false);
  ScoreOptions o;
  o.batch_size = 1;
  o.depth = false;
  const double forward_ms = bench::time_ms(device, 1, iters, [&] {
    for (int64_t s = 0; s < samples; ++s) model.forward_hidden(ids.narrow(0, s, 1).to(device));
  });
  const double score_ms = bench::time_ms(device, 1, iters, [&] { compute_scores(model, ids, o); });
  std::printf("{\"bench\":\"score_vs_forward\",\"pattern\":\"%s\",\"samples\":%lld,\"seq\":%lld,\"device\":\"%s\","
              "\"forward_ms\":%.3f,\"score_width_ms\":%.3f,\"ratio\":%.3f,\"target_ratio\":1.3}\n",
              pattern.c_str(), (long long)samples, (long long)seq, device.str().c_str(), forward_ms, score_ms,
              score_ms / forward_ms);
  return 0;
}
