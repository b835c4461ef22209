// Cost of importance scoring against a plain forward over the same tokens, at 8B-class layer shapes; JSON.
// Usage: bench_score [--pattern M-M*M-] [--samples 4] [--seq 4096] [--batch 1] [--iters 3] [--device cuda|cpu]
//                    [--width-div 1] [--threads N] [--all]
// The scoring pass is `compute_scores` with the default width criteria (activation statistics of every tap,
// per-head output contributions through o_proj / out_proj, FLAP) and no depth criteria (those are extra
// forwards by definition): JSON line "mode":"default", whose ratio is the claim (at most 1.3). `--all` adds a
// line "mode":"all" that also has every optional width criterion (first-order Taylor, which needs a backward
// pass through lm_head, and the nested Mamba head scores). `--width-div D` divides the widths and head counts
// by D (1, 2, 4, 8, 16 or 32), so the same comparison runs on a CPU; `--threads N` sets ATen's CPU threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/gpu_timer.h"
#include "bench/model_shapes.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"

using namespace mp;

int main(int argc, char** argv) {
  std::string pattern = "M-M*M-", device_name = at::hasCUDA() ? "cuda" : "cpu";
  int64_t samples = 4, seq = 4096, batch = 1, width_div = 1;
  int iters = 3, threads = 0;
  bool all = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_score: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (!std::strcmp(argv[i], "--pattern")) pattern = next();
    else if (!std::strcmp(argv[i], "--samples")) samples = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--device")) device_name = next();
    else if (!std::strcmp(argv[i], "--width-div")) width_div = std::stoll(next());
    else if (!std::strcmp(argv[i], "--threads")) threads = std::stoi(next());
    else if (!std::strcmp(argv[i], "--all")) all = true;
    else {
      std::fprintf(stderr, "bench_score: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (iters < 1) {
    std::fprintf(stderr, "bench_score: --iters must be at least 1\n");
    return 2;
  }
  if (width_div < 1 || width_div > 32 || 32 % width_div != 0) {
    std::fprintf(stderr, "bench_score: --width-div must divide 32, found %lld\n", (long long)width_div);
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  c10::Device device(device_name);
  ModelConfig config = bench::nemotron_h_8b_layers(pattern, width_div);
  const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  NemotronH model = NemotronH::random_init(config, 0, device, dtype);
  // The ids live on the device for both passes, so that neither waits on a host-to-device copy per batch.
  at::Tensor ids = at::randint(0, config.vocab_size, {samples, seq}, at::TensorOptions().dtype(at::kLong)).to(device);
  c10::AutoGradMode no_grad(false);
  ScoreOptions o;
  o.batch_size = batch;
  o.depth = false;
  auto forward = [&] {
    for (int64_t s = 0; s < samples; s += batch)
      model.forward_hidden(ids.narrow(0, s, std::min(batch, samples - s)));
  };
  // One JSON line per scoring mode. Within a mode, the forward and the scoring pass alternate, one timed run
  // each per iteration, so that a change in machine load (a shared CPU) moves both alike; medians and minima.
  auto measure = [&](const char* mode, const ScoreOptions& options) {
    auto score = [&] { compute_scores(model, ids, options); };
    forward();
    score();
    std::vector<double> forward_t, score_t;
    for (int i = 0; i < iters; ++i) {
      forward_t.push_back(bench::time_ms(device, 0, 1, forward));
      score_t.push_back(bench::time_ms(device, 0, 1, score));
    }
    std::sort(forward_t.begin(), forward_t.end());
    std::sort(score_t.begin(), score_t.end());
    const double f = forward_t[iters / 2], s = score_t[iters / 2];
    std::printf("{\"bench\":\"score_vs_forward\",\"mode\":\"%s\",\"pattern\":\"%s\",\"width_div\":%lld,"
                "\"hidden_size\":%lld,\"samples\":%lld,\"seq\":%lld,\"batch\":%lld,\"device\":\"%s\","
                "\"dtype\":\"%s\",\"threads\":%d,\"iters\":%d,\"forward_ms\":%.3f,\"score_ms\":%.3f,"
                "\"ratio\":%.3f,\"forward_min_ms\":%.3f,\"score_min_ms\":%.3f,\"ratio_min\":%.3f,"
                "\"target_ratio\":1.3}\n",
                mode, pattern.c_str(), (long long)width_div, (long long)config.hidden_size, (long long)samples,
                (long long)seq, (long long)batch, device.str().c_str(), c10::toString(dtype), at::get_num_threads(),
                iters, f, s, s / f, forward_t[0], score_t[0], score_t[0] / forward_t[0]);
    std::fflush(stdout);
  };
  measure("default", o);
  if (all) {
    ScoreOptions a = o;
    a.taylor = true;
    a.nested_head_dim = config.mamba_head_dim / 2;
    measure("all", a);
  }
  return 0;
}
