// One Mamba-2 layer (in_proj, conv+SiLU, SSD scan, gated norm, out_proj: src/model/mamba2.cpp's mamba2_mixer) on
// the CPU in fp32, the model's own ATen path, at an 8B-class layer shape (hidden 4096, 128 heads x 64, state 128,
// 8 groups, chunk 128) and a modest sequence (issue 26 item 8: the CPU path's dtypes). Forward, and with
// --backward forward+backward; median of --iters runs after one warm-up. Prints one JSON line.
//
// usage: bench_mamba_cpu [--batch 1] [--seq 512] [--iters 5] [--threads N] [--backward]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "bench/gpu_timer.h"
#include "minipuzzle/config.h"
#include "src/model/layers.h"

int main(int argc, char** argv) {
  int64_t batch = 1, seq = 512;
  int iters = 5, threads = 0;
  bool backward = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--threads")) threads = std::stoi(next());
    else if (!std::strcmp(argv[i], "--backward")) backward = true;
  }
  if (threads > 0) at::set_num_threads(threads);
  mp::ModelConfig c;
  c.hidden_size = 4096;
  c.mamba_num_heads = 128;
  c.mamba_head_dim = 64;
  c.n_groups = 8;
  c.ssm_state_size = 128;
  c.conv_kernel = 4;
  c.chunk_size = 128;
  c.layers = {mp::LayerType::Mamba};
  const int64_t H = c.mamba_num_heads, K = c.conv_kernel, hidden = c.hidden_size;
  const int64_t d_inner = c.mamba_d_inner(), conv_dim = c.mamba_conv_dim();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::manual_seed(0);
  std::map<std::string, at::Tensor> params;
  params["in_proj.weight"] = at::randn({c.mamba_in_proj_dim(), hidden}, f32) * 0.02;
  params["conv1d.weight"] = at::randn({conv_dim, 1, K}, f32) * 0.3;
  params["conv1d.bias"] = at::randn({conv_dim}, f32) * 0.1;
  params["A_log"] = at::log(at::rand({H}, f32) * 15 + 1);
  const at::Tensor dt0 = at::exp(at::rand({H}, f32) * (std::log(0.1) - std::log(0.001)) + std::log(0.001));
  params["dt_bias"] = dt0 + at::log(-at::expm1(-dt0));  // inverse softplus
  params["D"] = at::ones({H}, f32);
  params["norm.weight"] = at::ones({d_inner}, f32);
  params["out_proj.weight"] = at::randn({hidden, d_inner}, f32) * 0.02;
  const at::Tensor h = at::randn({batch, seq, hidden}, f32);
  const mp::ForwardOptions options;
  const mp::model::Params p{params, ""};
  const mp::model::LayerContext ctx{c, 0, options, nullptr};
  const c10::Device cpu(c10::kCPU);

  double fwd_ms;
  {
    c10::AutoGradMode no_grad(false);
    fwd_ms = mp::bench::time_ms(cpu, 1, iters, [&] { mp::model::mamba2_mixer(ctx, p, h); });
  }
  double fwd_bwd_ms = 0;
  if (backward) {
    for (auto& [_, t] : params) t.requires_grad_(true);
    fwd_bwd_ms = mp::bench::time_ms(cpu, 1, iters, [&] {
      mp::model::mamba2_mixer(ctx, p, h).square().mean().backward();
      for (auto& [_, t] : params) t.mutable_grad().reset();
    });
  }
  std::printf("{\"bench\":\"mamba_cpu\",\"batch\":%lld,\"seq\":%lld,\"threads\":%d,\"iters\":%d,\"forward_ms\":%.2f",
              (long long)batch, (long long)seq, at::get_num_threads(), iters, fwd_ms);
  if (backward) std::printf(",\"fwd_bwd_ms\":%.2f", fwd_bwd_ms);
  std::printf("}\n");
  return 0;
}
