// bench_gpu_search: the search's memory model and roofline against a real GPU, as JSON on stdout.
//  1. Memory: a small Nemotron-H's weights (NemotronH::random_init on CUDA, bf16), its KV cache and Mamba conv
//     and SSM state for a context and batch are allocated; the CUDA caching allocator's allocated bytes per term
//     are compared with the memory model (claim: within 5%). The peak of one prefill chunk is reported beside
//     the activation term (information: the model's forward is not a serving engine's).
//  2. Roofline calibration: prefill (the model's forward) and decode (one token through every layer with the
//     KV cache and state updates, written with ATen ops on the same weights) are timed for several shapes; the
//     coefficients are fitted on some shapes and the held-out shapes' times predicted (claim: within 15%).
// Usage: bench_gpu_search [TIMINGS_OUT.json]   (the timings, reusable with `minipuzzle bench-hw`)
// Exit 77 without a CUDA device.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/search.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

#include "minipuzzle/model.h"
#endif

using namespace mp;
using namespace mp::search;

#ifdef MINIPUZZLE_WITH_CUDA
namespace {

double allocated_bytes() {
  c10::cuda::device_synchronize();
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return static_cast<double>(stats.allocated_bytes[0].current);  // aggregate pool
}
double peak_bytes() {
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return static_cast<double>(stats.allocated_bytes[0].peak);
}

// A small Nemotron-H: `units` repeats of "M-M*-" (2 Mamba, 2 MLP, 1 attention), expand 2, head_dim 64.
ModelConfig small_config(int64_t hidden, int64_t units, int64_t vocab = 32768) {
  json j = {{"vocab_size", vocab},
            {"hidden_size", hidden},
            {"intermediate_size", 4 * hidden},
            {"num_attention_heads", hidden / 128},
            {"num_key_value_heads", 8},
            {"head_dim", 128},
            {"mamba_num_heads", 2 * hidden / 64},
            {"mamba_head_dim", 64},
            {"n_groups", 8},
            {"ssm_state_size", 128},
            {"conv_kernel", 4},
            {"chunk_size", 128},
            {"tie_word_embeddings", false},
            {"torch_dtype", "bfloat16"}};
  std::string pattern;
  for (int64_t i = 0; i < units; ++i) pattern += "M-M*-";
  j["hybrid_override_pattern"] = pattern;
  return ModelConfig::from_json(j, "bench shape");
}

struct Caches {
  std::vector<at::Tensor> k, v, conv, ssm;  // per attention / Mamba layer
};

Caches allocate_caches(const ModelConfig& c, int64_t batch, int64_t context) {
  auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  Caches out;
  for (auto t : c.layers) {
    if (t == LayerType::Attention) {
      out.k.push_back(at::zeros({batch, c.num_key_value_heads, context, c.head_dim}, bf16));
      out.v.push_back(at::zeros({batch, c.num_key_value_heads, context, c.head_dim}, bf16));
    } else if (t == LayerType::Mamba) {
      out.conv.push_back(at::zeros({batch, c.mamba_conv_dim(), c.conv_kernel - 1}, bf16));
      out.ssm.push_back(at::zeros({batch, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size}, bf16.dtype(at::kFloat)));
    }
  }
  return out;
}

at::Tensor rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * w;
}

// One decode token for every sequence at `position`: the work a serving engine does per generated token.
at::Tensor decode_step(const NemotronH& m, Caches& cache, const at::Tensor& x0, int64_t position) {
  const ModelConfig& c = m.config();
  const auto& P = m.parameters();
  const int64_t B = x0.size(0), d = c.mamba_d_inner(), gn = c.n_groups * c.ssm_state_size, h = c.mamba_num_heads;
  at::Tensor x = x0;
  size_t ia = 0, im = 0;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    std::string p = "backbone.layers." + std::to_string(i) + ".";
    at::Tensor u = rms(x, P.at(p + "norm.weight"), c.layer_norm_epsilon), out;
    LayerType t = c.layers[static_cast<size_t>(i)];
    if (t == LayerType::Mamba) {
      at::Tensor zx = at::matmul(u, P.at(p + "mixer.in_proj.weight").t());
      at::Tensor z = zx.narrow(1, 0, d), xbc = zx.narrow(1, d, d + 2 * gn), dt = zx.narrow(1, 2 * d + 2 * gn, h);
      at::Tensor& cs = cache.conv[im];
      at::Tensor window = at::cat({cs, xbc.unsqueeze(-1)}, -1);
      cs.copy_(window.narrow(-1, 1, c.conv_kernel - 1));
      at::Tensor conv = (window * P.at(p + "mixer.conv1d.weight").squeeze(1)).sum(-1) + P.at(p + "mixer.conv1d.bias");
      conv = at::silu(conv);
      at::Tensor xs = conv.narrow(1, 0, d).view({B, h, c.mamba_head_dim}).to(at::kFloat);
      at::Tensor Bm = conv.narrow(1, d, gn).view({B, c.n_groups, 1, c.ssm_state_size}).to(at::kFloat);
      at::Tensor Cm = conv.narrow(1, d + gn, gn).view({B, c.n_groups, 1, c.ssm_state_size}).to(at::kFloat);
      const int64_t per = h / c.n_groups;
      Bm = Bm.expand({B, c.n_groups, per, c.ssm_state_size}).reshape({B, h, c.ssm_state_size});
      Cm = Cm.expand({B, c.n_groups, per, c.ssm_state_size}).reshape({B, h, c.ssm_state_size});
      at::Tensor dtv = at::softplus(dt.to(at::kFloat) + P.at(p + "mixer.dt_bias").to(at::kFloat));
      at::Tensor dA = at::exp(dtv * -at::exp(P.at(p + "mixer.A_log").to(at::kFloat)));
      at::Tensor& s = cache.ssm[im];
      s.mul_(dA.view({B, h, 1, 1})).add_((dtv.unsqueeze(-1) * xs).unsqueeze(-1) * Bm.unsqueeze(2));
      at::Tensor y = at::matmul(s, Cm.unsqueeze(-1)).squeeze(-1) + P.at(p + "mixer.D").to(at::kFloat).view({1, h, 1}) * xs;
      y = y.reshape({B, d}).to(x.scalar_type()) * at::silu(z);
      at::Tensor yg = y.view({B, c.n_groups, d / c.n_groups}).to(at::kFloat);
      yg = yg * at::rsqrt(yg.pow(2).mean(-1, true) + c.layer_norm_epsilon);
      y = yg.view({B, d}).to(x.scalar_type()) * P.at(p + "mixer.norm.weight");
      out = at::matmul(y, P.at(p + "mixer.out_proj.weight").t());
      ++im;
    } else if (t == LayerType::Attention) {
      const int64_t nq = c.num_attention_heads, kv = c.num_key_value_heads, a = c.head_dim;
      at::Tensor q = at::matmul(u, P.at(p + "mixer.q_proj.weight").t()).view({B, nq, 1, a});
      at::Tensor k = at::matmul(u, P.at(p + "mixer.k_proj.weight").t()).view({B, kv, 1, a});
      at::Tensor v = at::matmul(u, P.at(p + "mixer.v_proj.weight").t()).view({B, kv, 1, a});
      cache.k[ia].narrow(2, position, 1).copy_(k);
      cache.v[ia].narrow(2, position, 1).copy_(v);
      at::Tensor kk = cache.k[ia].narrow(2, 0, position + 1), vv = cache.v[ia].narrow(2, 0, position + 1);
      at::Tensor o = at::scaled_dot_product_attention(q, kk, vv, {}, 0.0, false, std::nullopt, /*enable_gqa=*/true);
      out = at::matmul(o.reshape({B, nq * a}), P.at(p + "mixer.o_proj.weight").t());
      ++ia;
    } else {
      at::Tensor up = at::relu(at::matmul(u, P.at(p + "mixer.up_proj.weight").t()));
      out = at::matmul(up * up, P.at(p + "mixer.down_proj.weight").t());
    }
    x = x + out;
  }
  return at::matmul(rms(x, P.at("backbone.norm_f.weight"), c.layer_norm_epsilon), m.lm_head_weight().t());
}

template <typename F>
double time_it(F&& f, int warmup = 3, int reps = 10) {
  for (int i = 0; i < warmup; ++i) f();
  c10::cuda::device_synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  c10::cuda::device_synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

json memory_check() {
  // The test shape: 15 layers (6 Mamba, 3 attention, 6 MLP), hidden 2048, context 32768, batch 4.
  ModelConfig c = small_config(2048, 3);
  const int64_t batch = 4, context = 32768, chunk = 2048;
  InferenceSetup u;
  u.context = context;
  u.batch = batch;
  u.conv_state = search::DType::BF16;
  u.ssm_state = search::DType::F32;
  u.prefill_chunk = chunk;
  MemoryBreakdown predicted = estimate_memory(c, u);
  double base = allocated_bytes();
  NemotronH model = NemotronH::random_init(c, 1, at::Device(at::kCUDA, 0), at::kBFloat16);
  double after_weights = allocated_bytes();
  json terms = json::object();
  auto term = [&](const char* name, double measured, double model_bytes) {
    double rel = (measured - model_bytes) / model_bytes;
    terms[name] = {{"measured_bytes", measured}, {"model_bytes", model_bytes}, {"relative_error", rel},
                   {"within_5_percent", std::fabs(rel) <= 0.05}};
  };
  term("weights", after_weights - base, predicted.weights);
  Caches caches;
  {
    double b = allocated_bytes();
    caches = allocate_caches(c, batch, context);
    double a = allocated_bytes();
    double kv = 0, conv = 0, ssm = 0;
    for (auto& t : caches.k) kv += static_cast<double>(t.nbytes());
    for (auto& t : caches.v) kv += static_cast<double>(t.nbytes());
    for (auto& t : caches.conv) conv += static_cast<double>(t.nbytes());
    for (auto& t : caches.ssm) ssm += static_cast<double>(t.nbytes());
    // The allocator's count for all three (rounded to its block sizes), and each term from the tensors' bytes.
    term("kv_plus_state_allocated", a - b, predicted.kv_cache + predicted.conv_state + predicted.ssm_state);
    term("kv_cache", kv, predicted.kv_cache);
    term("conv_state", conv, predicted.conv_state);
    term("ssm_state", ssm, predicted.ssm_state);
  }
  double total_measured = allocated_bytes() - base;
  term("weights_kv_state_total", total_measured,
       predicted.weights + predicted.kv_cache + predicted.conv_state + predicted.ssm_state);
  // Information: the model forward's peak over one prefill chunk (its logits stay out: forward_hidden).
  json activations;
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    double before = allocated_bytes();
    c10::NoGradGuard ng;
    at::Tensor ids = at::randint(0, c.vocab_size, {batch, chunk}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
    at::Tensor hs = model.forward_hidden(ids);
    c10::cuda::device_synchronize();
    activations = {{"forward_peak_bytes", peak_bytes() - before},
                   {"model_term_bytes", predicted.activations},
                   {"note", "forward_hidden of the training-oriented model over batch x chunk tokens; not asserted"}};
  } catch (const std::exception& e) {
    activations = {{"error", e.what()}};
  }
  return {{"shape", {{"hidden", c.hidden_size}, {"pattern", c.pattern()}, {"vocab", c.vocab_size}}},
          {"context", context},
          {"batch", batch},
          {"terms", terms},
          {"activations", activations},
          {"pass", terms["weights"]["within_5_percent"].get<bool>() &&
                       terms["kv_plus_state_allocated"]["within_5_percent"].get<bool>() &&
                       terms["weights_kv_state_total"]["within_5_percent"].get<bool>()}};
}

}  // namespace
#endif

int main(int argc, char** argv) {
#ifndef MINIPUZZLE_WITH_CUDA
  std::printf("{\"skipped\": \"built without CUDA\"}\n");
  return 77;
#else
  if (!at::hasCUDA()) {
    std::printf("{\"skipped\": \"no CUDA device\"}\n");
    return 77;
  }
  setenv("MINIPUZZLE_PROGRESS", "off", 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::string device = prop.name;
  json out;
  out["device"] = device;
  try {
    out["memory_check"] = memory_check();
  } catch (const std::exception& e) {
    out["memory_check"] = {{"error", e.what()}};
  }
  c10::cuda::CUDACachingAllocator::emptyCache();

  // Timings: fit shapes and held-out shapes (hidden, units of "M-M*-").
  struct ShapeSpec {
    int64_t hidden, units;
    bool held_out;
  };
  const ShapeSpec shapes[] = {{1024, 2, false}, {2048, 2, false}, {2048, 4, false}, {3072, 3, false},
                              {4096, 2, false}, {2560, 3, true},  {1536, 5, true},  {3584, 2, true}};
  json samples = json::array();
  std::vector<TimingSample> fit, held;
  for (auto& sp : shapes) {
    ModelConfig c = small_config(sp.hidden, sp.units);
    try {
      NemotronH model = NemotronH::random_init(c, 2, at::Device(at::kCUDA, 0), at::kBFloat16);
      c10::NoGradGuard ng;
      auto record = [&](const std::string& phase, int64_t batch, int64_t n, double seconds) {
        TimingSample t;
        t.config = c;
        t.phase = phase;
        t.batch = batch;
        (phase == "decode" ? t.position : t.tokens) = n;
        t.seconds = seconds;
        t.label = "h" + std::to_string(sp.hidden) + "x" + std::to_string(sp.units) + (sp.held_out ? "-heldout" : "");
        (sp.held_out ? held : fit).push_back(t);
        samples.push_back({{"config", c.to_json()}, {"phase", phase}, {"batch", batch},
                           {phase == "decode" ? "position" : "tokens", n}, {"seconds", seconds}, {"label", t.label}});
      };
      using Pairs = std::vector<std::pair<int64_t, int64_t>>;
      for (const auto& bn : Pairs{{1, 2048}, {2, 4096}, {4, 1024}}) {
        const int64_t batch = bn.first, n = bn.second;
        at::Tensor ids = at::randint(0, c.vocab_size, {batch, n}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
        record("prefill", batch, n, time_it([&] { model.forward_hidden(ids); }, 2, 5));
      }
      for (const auto& bp : Pairs{{1, 2048}, {8, 8192}, {32, 4096}, {4, 30000}}) {
        const int64_t batch = bp.first, pos = bp.second;
        Caches caches = allocate_caches(c, batch, pos + 1);
        at::Tensor x = at::randn({batch, c.hidden_size}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
        record("decode", batch, pos, time_it([&] { decode_step(model, caches, x, pos); }));
      }
    } catch (const std::exception& e) {
      out["errors"].push_back({{"shape", sp.hidden}, {"units", sp.units}, {"error", e.what()}});
    }
    c10::cuda::CUDACachingAllocator::emptyCache();
  }
  std::string profile = device.find("H200") != std::string::npos ? "h200" : "h100-80gb";
  if (argc > 1) {
    write_json_file(argv[1], {{"device", device}, {"profile", profile}, {"samples", samples}});
    out["timings_file"] = argv[1];
  }
  try {
    HardwareProfile hw = load_hardware(profile);
    HardwareProfile uncalibrated = hw;
    CalibrationResult r = calibrate(fit, hw);
    r.apply(hw);
    std::vector<double> held_err = relative_errors(held, hw), before = relative_errors(held, uncalibrated);
    double worst = 0, worst_before = 0;
    for (double e : held_err) worst = std::max(worst, std::fabs(e));
    for (double e : before) worst_before = std::max(worst_before, std::fabs(e));
    json held_rows = json::array();
    for (size_t i = 0; i < held.size(); ++i)
      held_rows.push_back({{"label", held[i].label}, {"phase", held[i].phase}, {"batch", held[i].batch},
                           {"n", held[i].phase == "decode" ? held[i].position : held[i].tokens},
                           {"measured_s", held[i].seconds}, {"relative_error", held_err[i]}});
    out["calibration"] = {{"profile", profile},
                          {"fit", r.to_json()},
                          {"fit_samples", fit.size()},
                          {"held_out", held_rows},
                          {"held_out_max_abs_relative_error", worst},
                          {"held_out_max_abs_relative_error_uncalibrated", worst_before},
                          {"pass_15_percent", worst <= 0.15}};
  } catch (const std::exception& e) {
    out["calibration"] = {{"error", e.what()}};
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
#endif
}
