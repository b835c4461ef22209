// Mamba-2 path on the GPU (issue 12): each kernel against the eager ATen path it replaces, and the whole Mamba
// layer (in_proj, conv+SiLU, SSD scan, gated norm, out_proj) with and without the kernels, side by side in one
// run, at an 8B-class layer shape (hidden 4096, 128 heads x 64, state 128, 8 groups, chunk 128, seq 4096,
// batch 4). Prints one JSON object (also written to --out).
//
// FLOP formula (forward, per token; backward counted as 2x forward, so fwd+bwd = 3x):
//   in_proj 2*hidden*(2*d_inner + 2*G*N + H) + out_proj 2*d_inner*hidden
//   + SSD 2*H*(Q*P + 2*N*P) + 2*G*Q*N   (chunk products: y_diag Q*P, states and C.state N*P each, per head;
//                                        C B^T Q*N per group; the same formula as bench_model_forward)
//   + conv 2*conv_dim*K. Elementwise work (norm, SiLU, decay) is not counted.
// Percent of peak is reported against --peak-tflops (default 989.4: H100 SXM dense bf16) and against 790 (the
// figure quoted in the issue).
//
// usage: bench_mamba_kernels [--batch 4] [--seq 4096] [--iters 5] [--peak-tflops 989.4] [--out FILE]
//                            [--no-eager-ssd] (skip the eager scan's fwd+bwd, the slowest measurement)
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "bench/gpu_timer.h"
#include "minipuzzle/config.h"
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

using nlohmann::json;
namespace k = mp::kernels;

namespace {

// All Mamba ops through their kernels (on) or none (the model's eager ATen path), via KernelOptions.
void set_mamba_kernels(bool on) {
  mp::kernels::KernelOptions o = mp::kernels::kernel_options();
  mp::kernels::parse_mamba_kernels(on ? "all" : "none", &o);
  mp::kernels::set_kernel_options(o);
}

struct Args {
  int64_t batch = 4, seq = 4096;
  int iters = 5;
  double peak_tflops = 989.4;
  std::string out;
  bool eager_ssd = true;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (!std::strcmp(argv[i], "--batch")) a.batch = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) a.seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--iters")) a.iters = std::stoi(next());
    else if (!std::strcmp(argv[i], "--peak-tflops")) a.peak_tflops = std::stod(next());
    else if (!std::strcmp(argv[i], "--out")) a.out = next();
    else if (!std::strcmp(argv[i], "--no-eager-ssd")) a.eager_ssd = false;
  }
  return a;
}

mp::ModelConfig layer_config() {
  mp::ModelConfig c;
  c.hidden_size = 4096;
  c.mamba_num_heads = 128;
  c.mamba_head_dim = 64;
  c.n_groups = 8;
  c.ssm_state_size = 128;
  c.conv_kernel = 4;
  c.chunk_size = 128;
  c.layers = {mp::LayerType::Mamba};
  return c;
}

// Leaves that take gradients, re-created grad-free before each timed fwd+bwd.
void clear_grads(std::vector<at::Tensor>& leaves) {
  for (auto& t : leaves)
    if (t.defined() && t.requires_grad()) t.mutable_grad().reset();
}

struct Bench {
  Args args;
  c10::Device device{at::kCUDA};
  json results = json::array();

  void time_pair(const std::string& name, const std::string& impl, double flops_fwd, std::vector<at::Tensor> leaves,
                 const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f, bool with_backward) {
    json r = {{"name", name}, {"impl", impl}, {"flops_fwd", flops_fwd}};
    try {
      {
        const c10::AutoGradMode no_grad(false);
        r["fwd_ms"] = mp::bench::time_ms(device, 2, args.iters, [&] { f(leaves); });
      }
      if (with_backward) {
        for (auto& t : leaves)
          if (t.is_floating_point()) t.requires_grad_(true);
        at::Tensor grad;
        r["fwd_bwd_ms"] = mp::bench::time_ms(device, 1, args.iters, [&] {
          clear_grads(leaves);
          at::Tensor out = f(leaves);
          if (!grad.defined()) grad = at::randn_like(out);
          out.backward(grad);
        });
        for (auto& t : leaves) t.requires_grad_(false), t.mutable_grad().reset();
      }
      auto add_rate = [&](const char* key, double ms, double flops) {
        const double tflops = flops / (ms * 1e-3) / 1e12;
        r[std::string(key) + "_tflops"] = tflops;
        r[std::string(key) + "_pct_peak"] = 100.0 * tflops / args.peak_tflops;
        r[std::string(key) + "_pct_of_790"] = 100.0 * tflops / 790.0;
      };
      if (flops_fwd > 0) {
        add_rate("fwd", r["fwd_ms"].get<double>(), flops_fwd);
        if (r.contains("fwd_bwd_ms")) add_rate("fwd_bwd", r["fwd_bwd_ms"].get<double>(), 3 * flops_fwd);
      }
    } catch (const std::exception& e) {
      std::string msg = e.what();
      r["error"] = msg.substr(0, 400);
      for (auto& t : leaves) t.requires_grad_(false), t.mutable_grad().reset();
    }
#ifdef MINIPUZZLE_WITH_CUDA
    r["peak_mem_gib"] = double(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak) / (1 << 30);
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    std::fprintf(stderr, "%s\n", r.dump().c_str());
    results.push_back(r);
  }

  // Max |kernel - eager| / max |eager| of one forward, a guard against timing a wrong kernel.
  void agreement(const std::string& name, const std::vector<at::Tensor>& leaves,
                 const std::function<at::Tensor(const std::vector<at::Tensor>&)>& eager,
                 const std::function<at::Tensor(const std::vector<at::Tensor>&)>& kernel) {
    try {
      const c10::AutoGradMode no_grad(false);
      const at::Tensor a = eager(leaves).to(at::kFloat), b = kernel(leaves).to(at::kFloat);
      const double err = (a - b).abs().max().item<double>() / std::max(a.abs().max().item<double>(), 1e-30);
      results.push_back({{"name", name}, {"check", "kernel_vs_eager_scaled_max_err"}, {"value", err}});
    } catch (const std::exception& e) {
      results.push_back({{"name", name}, {"check", "kernel_vs_eager"}, {"error", std::string(e.what()).substr(0, 400)}});
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  json report = {{"bench", "mamba_kernels"}};
  if (!at::hasCUDA() || !k::built_with_cuda()) {
    report["skipped"] = "needs a CUDA device and a CUDA build";
    std::printf("%s\n", report.dump().c_str());
    return 0;
  }
  Bench b;
  b.args = args;
  const mp::ModelConfig c = layer_config();
  const int64_t B = args.batch, T = args.seq, H = c.mamba_num_heads, P = c.mamba_head_dim, G = c.n_groups,
                N = c.ssm_state_size, Q = c.chunk_size, K = c.conv_kernel, hidden = c.hidden_size;
  const int64_t d_inner = c.mamba_d_inner(), conv_dim = c.mamba_conv_dim(), tokens = B * T;
#ifdef MINIPUZZLE_WITH_CUDA
  report["device"] = at::cuda::getCurrentDeviceProperties()->name;
#endif
  report["shape"] = {{"batch", B}, {"seq", T}, {"hidden", hidden}, {"heads", H}, {"head_dim", P}, {"groups", G},
                     {"state", N}, {"chunk", Q}, {"conv_kernel", K}};
  report["peak_tflops"] = args.peak_tflops;
  report["flop_formula"] =
      "per token fwd: in_proj 2*hidden*(2*d_inner+2*G*N+H) + out_proj 2*d_inner*hidden + SSD 2*H*(Q*P+2*N*P) + "
      "2*G*Q*N + conv 2*conv_dim*K; fwd+bwd = 3x fwd";
  const double ssd_flops = double(tokens) * (2.0 * H * (Q * P + 2 * N * P) + 2.0 * G * Q * N);
  const double conv_flops = double(tokens) * 2.0 * conv_dim * K;
  const double layer_flops = double(tokens) * (2.0 * hidden * c.mamba_in_proj_dim() + 2.0 * d_inner * hidden) +
                             ssd_flops + conv_flops;
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const auto bf = cuda.dtype(at::kBFloat16), f32 = cuda.dtype(at::kFloat);
  at::manual_seed(0);

  // ---- the whole Mamba layer --------------------------------------------------------------------------------
  {
    std::map<std::string, at::Tensor> params;
    params["in_proj.weight"] = (at::randn({c.mamba_in_proj_dim(), hidden}, f32) * 0.02).to(at::kBFloat16);
    params["conv1d.weight"] = (at::randn({conv_dim, 1, K}, f32) * 0.3).to(at::kBFloat16);
    params["conv1d.bias"] = (at::randn({conv_dim}, f32) * 0.1).to(at::kBFloat16);
    params["A_log"] = at::log(at::rand({H}, f32) * 15 + 1);
    const at::Tensor dt0 = at::exp(at::rand({H}, f32) * (std::log(0.1) - std::log(0.001)) + std::log(0.001));
    params["dt_bias"] = (dt0 + at::log(-at::expm1(-dt0))).to(at::kBFloat16);  // inverse softplus
    params["D"] = at::ones({H}, bf);
    params["norm.weight"] = at::ones({d_inner}, bf);
    params["out_proj.weight"] = (at::randn({hidden, d_inner}, f32) * 0.02).to(at::kBFloat16);
    const mp::ForwardOptions options;
    const at::Tensor h = at::randn({B, T, hidden}, bf);
    std::vector<std::string> names;
    std::vector<at::Tensor> leaves{h};
    for (auto& [name, t] : params) names.push_back(name), leaves.push_back(t);
    auto layer = [&](const std::vector<at::Tensor>& v) {
      std::map<std::string, at::Tensor> ps;
      for (size_t i = 0; i < names.size(); ++i) ps[names[i]] = v[i + 1];
      const mp::model::Params p{ps, ""};
      const mp::model::LayerContext ctx{c, 0, options, nullptr};
      return mp::model::mamba2_mixer(ctx, p, v[0]);
    };
    auto eager_layer = [&](const std::vector<at::Tensor>& v) {
      set_mamba_kernels(false);
      at::Tensor out = layer(v);
      set_mamba_kernels(true);
      return out;
    };
    b.agreement("mamba_layer", leaves, eager_layer, layer);
    b.time_pair("mamba_layer", "eager_aten", layer_flops, leaves, eager_layer, true);
    b.time_pair("mamba_layer", "kernels", layer_flops, leaves, layer, true);
  }

  // ---- SSD scan ---------------------------------------------------------------------------------------------
  {
    const std::vector<at::Tensor> leaves = {
        at::randn({B, T, H, P}, bf),
        at::softplus(at::randn({B, T, H}, f32) - 2).clamp_min(1e-3).to(at::kBFloat16),
        -at::exp(at::rand({H}, f32) * std::log(16.0)),
        (at::randn({B, T, G, N}, f32) * 0.5).to(at::kBFloat16),
        (at::randn({B, T, G, N}, f32) * 0.5).to(at::kBFloat16),
        at::ones({H}, bf)};
    auto eager = [&](const std::vector<at::Tensor>& v) {
      return mp::model::ssd_chunk_scan(v[0], v[1], v[2], v[3], v[4], v[5], Q);
    };
    auto kernel = [&](const std::vector<at::Tensor>& v) { return k::ssd_scan(v[0], v[1], v[2], v[3], v[4], v[5], Q); };
    b.agreement("ssd_scan", leaves, eager, kernel);
    b.time_pair("ssd_scan", "eager_aten", ssd_flops, leaves, eager, args.eager_ssd);
    b.time_pair("ssd_scan", "kernels", ssd_flops, leaves, kernel, true);
  }

  // ---- causal conv1d + SiLU (x a slice of in_proj's output, as in the layer) ---------------------------------
  {
    const at::Tensor proj = at::randn({B, T, c.mamba_in_proj_dim()}, bf);
    const std::vector<at::Tensor> leaves = {proj, (at::randn({conv_dim, 1, K}, f32) * 0.3).to(at::kBFloat16),
                                            (at::randn({conv_dim}, f32) * 0.1).to(at::kBFloat16)};
    auto eager = [&](const std::vector<at::Tensor>& v) {
      const at::Tensor x = v[0].narrow(-1, d_inner, conv_dim);
      return at::silu(at::conv1d(x.transpose(1, 2), v[1], v[2], 1, K - 1, 1, conv_dim).narrow(-1, 0, T))
          .transpose(1, 2);
    };
    auto kernel = [&](const std::vector<at::Tensor>& v) {
      return k::causal_conv1d_silu(v[0].narrow(-1, d_inner, conv_dim), v[1], v[2]);
    };
    b.agreement("causal_conv1d_silu", leaves, eager, kernel);
    b.time_pair("causal_conv1d_silu", "eager_aten", conv_flops, leaves, eager, true);
    b.time_pair("causal_conv1d_silu", "kernels", conv_flops, leaves, kernel, true);
  }

  // ---- gated RMSNorm (float32 y from the scan, bf16 z, bf16 out for out_proj) ---------------------------------
  {
    const std::vector<at::Tensor> leaves = {at::randn({B, T, d_inner}, f32), at::randn({B, T, d_inner}, bf),
                                            at::ones({d_inner}, bf)};
    auto eager = [&](const std::vector<at::Tensor>& v) {
      return mp::model::gated_rms_norm(v[0], v[1], v[2], G, 1e-5, at::Tensor()).to(at::kBFloat16);
    };
    auto kernel = [&](const std::vector<at::Tensor>& v) {
      return k::gated_rms_norm(v[0], v[1], v[2], G, 1e-5, {}, at::kBFloat16);
    };
    b.agreement("gated_rms_norm", leaves, eager, kernel);
    b.time_pair("gated_rms_norm", "eager_aten", 0, leaves, eager, true);
    b.time_pair("gated_rms_norm", "kernels", 0, leaves, kernel, true);
  }

  // ---- relu^2 at the 8B MLP width (21504) ---------------------------------------------------------------------
  {
    const std::vector<at::Tensor> leaves = {at::randn({B * T, 21504}, bf)};
    auto eager = [](const std::vector<at::Tensor>& v) {
      const at::Tensor a = at::relu(v[0]);
      return a * a;
    };
    auto kernel = [](const std::vector<at::Tensor>& v) { return k::relu_squared(v[0]); };
    b.agreement("relu_squared", leaves, eager, kernel);
    b.time_pair("relu_squared", "eager_aten", 0, leaves, eager, true);
    b.time_pair("relu_squared", "kernels", 0, leaves, kernel, true);
  }

  // Side-by-side ratios (kernels vs eager).
  json ratios = json::object();
  for (const auto& r : b.results) {
    if (!r.contains("impl") || r["impl"] != "kernels") continue;
    for (const auto& e : b.results)
      if (e.contains("impl") && e["impl"] == "eager_aten" && e["name"] == r["name"])
        for (const char* key : {"fwd_ms", "fwd_bwd_ms"})
          if (r.contains(key) && e.contains(key))
            ratios[r["name"].get<std::string>() + "_" + key + "_speedup"] = e[key].get<double>() / r[key].get<double>();
  }
  report["results"] = b.results;
  report["speedups"] = ratios;
  const std::string text = report.dump(1);
  std::printf("%s\n", text.c_str());
  if (!args.out.empty()) std::ofstream(args.out) << text << "\n";
  return 0;
}
