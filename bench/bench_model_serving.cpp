// bench_model_serving: what serving a small Nemotron-H costs on a real GPU, measured for the search's memory
// model and roofline (scripts/gpu/search.sh; `bench_search --gpu FILE` compares and calibrates):
//  1. Memory: the model's weights (NemotronH::random_init on CUDA, bf16), its KV cache (bf16) and Mamba conv
//     (bf16) and SSM (fp32) state for a context and batch are allocated; the CUDA caching allocator's allocated
//     bytes are recorded per term, and the peak of one prefill chunk through the model's forward.
//  2. Timings: prefill (the model's forward) and decode (one token through every layer with the KV-cache and
//     state updates, written with ATen ops on the same weights) for 14 shapes of three layer patterns
//     ("M-M*-", "MM-", "M*-") and hidden 1024-4096 (up to 3.5B parameters); shapes labelled "-heldout" are
//     for prediction, not fitting. Decode steps are captured once in a CUDA graph and replayed, as serving
//     engines run them (eager ATen dispatch of ~40 small ops per Mamba layer made the host, not the GPU, the
//     bottleneck, and its timings varied by +-30% between runs); "decode_mode" says which ran. Each time is
//     the median of 7 trials.
// Links only the model (bench_model*), so it builds whatever the other stages' state.
// Usage: bench_model_serving > serving.json   (exit 77 without a CUDA device)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

#include "minipuzzle/model.h"
#endif

using namespace mp;

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

// A small Nemotron-H: `units` repeats of `unit` (default "M-M*-": 2 Mamba, 2 MLP, 1 attention), expand 2, Mamba
// head_dim 64, attention heads of 128 (a multiple of the 8 KV heads).
ModelConfig small_config(int64_t hidden, int64_t units, const std::string& unit = "M-M*-", int64_t vocab = 32768) {
  json j = {{"vocab_size", vocab},
            {"hidden_size", hidden},
            {"intermediate_size", 4 * hidden},
            {"num_attention_heads", std::max<int64_t>(8, hidden / 128 / 8 * 8)},  // a multiple of the 8 KV heads
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
  for (int64_t i = 0; i < units; ++i) pattern += unit;
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
      // GQA decode as batched matmuls over the KV groups: each cached K and V row is read once (the query heads
      // of a group share it), as decode kernels do; no repeated K/V is materialised.
      at::Tensor qg = q.view({B, kv, nq / kv, a});
      at::Tensor scores = at::matmul(qg, kk.transpose(-1, -2)).to(at::kFloat) * (1.0 / std::sqrt(double(a)));
      at::Tensor o = at::matmul(at::softmax(scores, -1).to(q.scalar_type()), vv);  // [B, kv, nq / kv, a]
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

// Median over `trials` of the mean time of `reps` calls, after `warmup` calls.
template <typename F>
double time_it(F&& f, int warmup = 3, int reps = 10, int trials = 7) {
  for (int i = 0; i < warmup; ++i) f();
  c10::cuda::device_synchronize();
  std::vector<double> t;
  for (int k = 0; k < trials; ++k) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    c10::cuda::device_synchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One decode step captured in a CUDA graph on a side stream and replayed (the caches and the input stay at the
// same addresses, so every replay is the same step). Returns the median replay time; `mode` says whether the
// capture worked ("cuda_graph") or the step ran eagerly ("eager", the capture's error in `error`).
double time_decode(const NemotronH& model, Caches& caches, const at::Tensor& x, int64_t position, std::string& mode,
                   std::string& error) {
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  try {
    c10::cuda::CUDAStreamGuard guard(stream);
    for (int i = 0; i < 3; ++i) decode_step(model, caches, x, position);  // warm-up on the capture stream
    stream.synchronize();
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    at::Tensor out = decode_step(model, caches, x, position);
    graph.capture_end();
    const double t = time_it([&] { graph.replay(); }, 3, 20);
    mode = "cuda_graph";
    return t;
  } catch (const std::exception& e) {
    error = e.what();
    mode = "eager";
    // A capture that failed midway leaves the stream capturing: end it so that eager work can run.
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream.stream(), &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(stream.stream(), &g);
      if (g) cudaGraphDestroy(g);
    }
    (void)cudaGetLastError();
    c10::cuda::device_synchronize();
    return time_it([&] { decode_step(model, caches, x, position); });
  }
}

json measure_memory() {
  // 15 layers (6 Mamba, 3 attention, 6 MLP), hidden 2048, context 32768, batch 4.
  ModelConfig c = small_config(2048, 3);
  const int64_t batch = 4, context = 32768, chunk = 2048;
  double base = allocated_bytes();
  NemotronH model = NemotronH::random_init(c, 1, at::Device(at::kCUDA, 0), at::kBFloat16);
  double weights = allocated_bytes() - base;
  double before_caches = allocated_bytes();
  Caches caches = allocate_caches(c, batch, context);
  double caches_allocated = allocated_bytes() - before_caches;
  double kv = 0, conv = 0, ssm = 0;
  for (auto& t : caches.k) kv += static_cast<double>(t.nbytes());
  for (auto& t : caches.v) kv += static_cast<double>(t.nbytes());
  for (auto& t : caches.conv) conv += static_cast<double>(t.nbytes());
  for (auto& t : caches.ssm) ssm += static_cast<double>(t.nbytes());
  json out = {{"config", c.to_json()},
              {"context", context},
              {"batch", batch},
              {"prefill_chunk", chunk},
              {"dtypes", {{"weights", "bfloat16"}, {"kv_cache", "bfloat16"}, {"conv_state", "bfloat16"}, {"ssm_state", "float32"}}},
              {"allocated_bytes",
               {{"weights", weights},
                {"kv_conv_ssm", caches_allocated},
                {"total", allocated_bytes() - base},
                {"kv_tensors", kv},
                {"conv_tensors", conv},
                {"ssm_tensors", ssm}}}};
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    double before = allocated_bytes();
    c10::NoGradGuard ng;
    at::Tensor ids = at::randint(0, c.vocab_size, {batch, chunk}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
    at::Tensor hs = model.forward_hidden(ids);
    c10::cuda::device_synchronize();
    out["allocated_bytes"]["prefill_chunk_peak"] = peak_bytes() - before;
  } catch (const std::exception& e) {
    out["prefill_error"] = e.what();
  }
  return out;
}

}  // namespace
#endif

int main() {
  // The caching allocator knows device 0 only after a first allocation; its stats calls abort before that.
  if (at::hasCUDA()) (void)at::empty({1}, at::TensorOptions().device(at::kCUDA));
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
    out["memory"] = measure_memory();
  } catch (const std::exception& e) {
    out["memory"] = {{"error", e.what()}};
  }
  c10::cuda::CUDACachingAllocator::emptyCache();

  // Timings: fit shapes and held-out shapes (hidden, repeats of the unit pattern). Three patterns so that the
  // per-layer times of Mamba, attention and MLP layers are told apart; held-out shapes interpolate each pattern.
  struct ShapeSpec {
    int64_t hidden, units;
    const char* unit;
    bool held_out;
  };
  const ShapeSpec shapes[] = {{1024, 4, "M-M*-", false}, {2048, 2, "M-M*-", false}, {2048, 6, "M-M*-", false},
                              {4096, 2, "M-M*-", false}, {4096, 6, "M-M*-", false}, {1024, 6, "MM-", false},
                              {3072, 3, "MM-", false},   {4096, 5, "MM-", false},   {1536, 6, "M*-", false},
                              {3072, 4, "M*-", false},   {2560, 4, "M-M*-", true},  {3072, 3, "M-M*-", true},
                              {2048, 4, "MM-", true},    {2560, 5, "M*-", true}};
  json samples = json::array();
  std::string decode_mode;
  for (auto& sp : shapes) {
    ModelConfig c = small_config(sp.hidden, sp.units, sp.unit);
    try {
      NemotronH model = NemotronH::random_init(c, 2, at::Device(at::kCUDA, 0), at::kBFloat16);
      c10::NoGradGuard ng;
      std::string unit_name = sp.unit;
      for (auto& ch : unit_name) ch = ch == '*' ? 'A' : ch == '-' ? 'F' : ch;  // labels stay plain words
      const std::string label = "h" + std::to_string(sp.hidden) + "x" + std::to_string(sp.units) + "-" + unit_name +
                                (sp.held_out ? "-heldout" : "");
      auto record = [&](const std::string& phase, int64_t batch, int64_t n, double seconds, const std::string& mode) {
        json j = {{"config", c.to_json()}, {"phase", phase}, {"batch", batch},
                  {phase == "decode" ? "position" : "tokens", n}, {"seconds", seconds}, {"label", label}};
        if (!mode.empty()) j["mode"] = mode;
        samples.push_back(j);
      };
      using Pairs = std::vector<std::pair<int64_t, int64_t>>;
      for (const auto& bn : Pairs{{1, 2048}, {2, 4096}, {4, 1024}}) {
        const int64_t batch = bn.first, n = bn.second;
        at::Tensor ids = at::randint(0, c.vocab_size, {batch, n}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
        record("prefill", batch, n, time_it([&] { model.forward_hidden(ids); }, 2, 3), "");
      }
      for (const auto& bp : Pairs{{1, 2048}, {8, 8192}, {32, 4096}, {4, 30000}}) {
        const int64_t batch = bp.first, pos = bp.second;
        Caches caches = allocate_caches(c, batch, pos + 1);
        at::Tensor x = at::randn({batch, c.hidden_size}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
        std::string mode, error;
        const double t = time_decode(model, caches, x, pos, mode, error);
        if (!error.empty()) out["decode_capture_errors"].push_back({{"label", label}, {"error", error}});
        decode_mode = decode_mode.empty() || decode_mode == mode ? mode : "mixed";
        record("decode", batch, pos, t, mode);
      }
    } catch (const std::exception& e) {
      out["errors"].push_back({{"shape", sp.hidden}, {"units", sp.units}, {"unit", sp.unit}, {"error", e.what()}});
    }
    c10::cuda::CUDACachingAllocator::emptyCache();
  }
  out["decode_mode"] = decode_mode;
  out["samples"] = samples;
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
#endif
}
