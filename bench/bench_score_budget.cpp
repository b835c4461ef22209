// Scoring within a memory budget (issue 19), one JSON line per measurement:
//   resident_width / resident_depth   compute_scores with resident weights: seconds, device peak (allocated and
//                                     reserved) minus the weights
//   old_depth                         the implementation before issue 19 (one full pass per layer, full-vocabulary
//                                     float32 logits) on the first --old-layers one-layer patterns; its time for all
//                                     L patterns is extrapolated (each of its patterns costs the same); the new
//                                     criteria of those layers are compared with it
//   streamed_width / streamed_depth   the same with layer streaming within --budget bytes of device memory (the
//                                     allocator capped there), throughput relative to resident, layer copies, GB/s
//   summary                           the figures above in one line
// Usage: bench_score_budget [--config configs/models/nemotron-nano-12b-v2.json | --checkpoint DIR] [--layers N]
//        [--samples 8] [--depth-samples 4] [--seq 4096] [--batch 4] [--budget 16GiB] [--old-layers 6]
//        [--device cuda|cpu] [--no-old] [--no-stream]
// With --config the weights are random, made on the device (seconds at 12B). On CPU the device peak is the
// counting CPU allocator's (bench/cpu_memory.h).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "bench/cpu_memory.h"
#include "bench/gpu_timer.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/json.h"
#include "minipuzzle/layer_stream.h"
#include "minipuzzle/model.h"
#include "pruning/depth.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

using namespace mp;

namespace {

// Random weights made on the device, with transformers' special values (norms 1, A_log = log(1..H), D = 1,
// dt_bias from dt in [1e-3, 0.1], out_proj scaled by 1/sqrt(L)) so that the forward stays finite.
NemotronH random_model_on_device(const ModelConfig& config, c10::Device device, at::ScalarType dtype) {
  at::manual_seed(0);
  auto opt = at::TensorOptions().device(device).dtype(at::kFloat);
  std::map<std::string, at::Tensor> params;
  for (auto& spec : expected_tensors(config)) {
    const std::string& n = spec.name;
    auto ends_with = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    at::Tensor t;
    if (ends_with("A_log")) t = at::log(at::arange(1, config.mamba_num_heads + 1, opt));
    else if (ends_with(".D") || ends_with("norm.weight") || ends_with("norm_f.weight")) t = at::ones(spec.shape, opt);
    else if (ends_with("dt_bias")) {
      at::Tensor dt = at::exp(at::rand(spec.shape, opt) * (std::log(0.1) - std::log(0.001)) + std::log(0.001));
      t = dt + at::log(-at::expm1(-dt));
    } else if (ends_with("bias")) t = at::zeros(spec.shape, opt);
    else if (ends_with("conv1d.weight")) t = at::empty(spec.shape, opt).uniform_(-0.5, 0.5);
    else {
      t = at::empty(spec.shape, opt.dtype(dtype)).normal_(0.0, 0.02);
      if (ends_with("out_proj.weight")) t.div_(std::sqrt(double(config.num_layers())));
    }
    params[n] = t.to(dtype);
  }
  if (config.tie_word_embeddings) params["lm_head.weight"] = params["backbone.embeddings.weight"];
  return NemotronH(config, std::move(params));
}

struct Peak {
  int64_t allocated = 0, reserved = 0;
};

// Device memory peaks around fn(), in bytes above what was allocated before it.
template <typename Fn>
std::pair<double, Peak> measure(c10::Device device, Fn&& fn) {
  Peak p;
  bench::synchronize(device);
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) {
    const int dev = device.index() < 0 ? 0 : device.index();
    using namespace c10::cuda::CUDACachingAllocator;
    const int64_t before = getDeviceStats(dev).allocated_bytes[0].current;
    resetPeakStats(dev);
    auto start = std::chrono::steady_clock::now();
    fn();
    bench::synchronize(device);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    auto st = getDeviceStats(dev);
    p.allocated = st.allocated_bytes[0].peak - before;
    p.reserved = st.reserved_bytes[0].peak;
    return {s, p};
  }
#endif
  bench::CountingCpuAllocator counter;
  const int64_t before = counter.live_bytes();
  auto start = std::chrono::steady_clock::now();
  fn();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  p.allocated = counter.peak_bytes() - before;
  p.reserved = counter.peak_bytes();
  return {s, p};
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 1e-30, err = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    scale = std::max(scale, std::abs(b[i]));
    err = std::max(err, std::abs(a[i] - b[i]));
  }
  return err / scale;
}

// Largest difference over every depth criterion and layer (relative to each criterion's largest value), over the
// first `layers` layers, and over every width score (relative to each vector's largest value).
double scores_diff(const Scores& a, const Scores& b, int64_t layers, bool width) {
  double worst = 0;
  for (std::string c : {"lm_loss_increase", "kl", "mse_hidden", "mse_logits"}) {
    std::vector<double> x, y;
    for (int64_t i = 0; i < layers; ++i) {
      if (!a.layers[i].depth.by_criterion.count(c) || !b.layers[i].depth.by_criterion.count(c)) continue;
      x.push_back(a.layers[i].depth.by_criterion.at(c));
      y.push_back(b.layers[i].depth.by_criterion.at(c));
    }
    if (!x.empty()) worst = std::max(worst, max_rel_diff(x, y));
  }
  if (width) {
    worst = std::max(worst, max_rel_diff(a.hidden, b.hidden));
    for (size_t i = 0; i < a.layers.size(); ++i) {
      worst = std::max(worst, max_rel_diff(a.layers[i].mlp_neurons, b.layers[i].mlp_neurons));
      worst = std::max(worst, max_rel_diff(a.layers[i].attn_heads, b.layers[i].attn_heads));
      worst = std::max(worst, max_rel_diff(a.layers[i].mamba.heads, b.layers[i].mamba.heads));
      worst = std::max(worst, max_rel_diff(a.layers[i].mamba.heads_out, b.layers[i].mamba.heads_out));
    }
  }
  return worst;
}

double gib(int64_t b) { return double(b) / double(1ll << 30); }

void emit(json j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/models/nemotron-nano-12b-v2.json", checkpoint, budget_text = "16GiB";
  std::string device_name = at::hasCUDA() ? "cuda" : "cpu";
  int64_t samples = 8, depth_samples = 4, seq = 4096, batch = 4, old_layers = 6, layers = 0;
  bool old = true, stream = true;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_score_budget: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    std::string a = argv[i];
    if (a == "--config") config_path = next();
    else if (a == "--checkpoint") checkpoint = next();
    else if (a == "--layers") layers = std::stoll(next());
    else if (a == "--samples") samples = std::stoll(next());
    else if (a == "--depth-samples") depth_samples = std::stoll(next());
    else if (a == "--seq") seq = std::stoll(next());
    else if (a == "--batch") batch = std::stoll(next());
    else if (a == "--budget") budget_text = next();
    else if (a == "--old-layers") old_layers = std::stoll(next());
    else if (a == "--device") device_name = next();
    else if (a == "--no-old") old = false;
    else if (a == "--no-stream") stream = false;
    else {
      std::fprintf(stderr, "bench_score_budget: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  c10::Device device(device_name);
  const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  c10::AutoGradMode no_grad(false);
  std::optional<Checkpoint> ck;
  ModelConfig config;
  if (!checkpoint.empty()) {
    ck = Checkpoint::open(checkpoint);
    config = ck->config();
  } else {
    json j = read_json_file(config_path);
    if (layers > 0) {  // the first N layers of the pattern: a shorter stack of the same widths
      std::string pattern = j.value("hybrid_override_pattern", std::string());
      j["hybrid_override_pattern"] = pattern.substr(0, std::min<size_t>(pattern.size(), size_t(layers)));
      j["num_hidden_layers"] = std::min<int64_t>(layers, int64_t(pattern.size()));
    }
    config = ModelConfig::from_json(j, config_path);
  }
  const int64_t L = config.num_layers();
  int64_t weights = LayerStreamer::non_layer_bytes(config, dtype);
  for (int64_t i = 0; i < L; ++i) weights += LayerStreamer::layer_bytes(config, i, dtype);
  json base = {{"bench", "score_budget"}, {"source", checkpoint.empty() ? config_path : checkpoint},
               {"layers", L}, {"hidden_size", config.hidden_size}, {"vocab_size", config.vocab_size},
               {"samples", samples}, {"depth_samples", depth_samples}, {"seq", seq}, {"batch", batch},
               {"device", device.str()}, {"dtype", c10::toString(dtype)}, {"weights_gib", gib(weights)}};

  auto t0 = std::chrono::steady_clock::now();
  std::optional<NemotronH> model;
  if (ck) model.emplace(NemotronH::load(*ck, device, dtype));
  else model.emplace(random_model_on_device(config, device, dtype));
  bench::synchronize(device);
  const double make_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  at::Tensor ids = at::randint(0, config.vocab_size, {samples, seq}, at::TensorOptions().dtype(at::kLong));

  ScoreOptions width;
  width.samples = samples;
  width.seq_len = seq;
  width.batch_size = batch;
  width.depth = false;
  ScoreOptions depth = width;
  depth.width = false;
  depth.depth = true;
  depth.depth_samples = depth_samples;

  json summary = base;
  summary["mode"] = "summary";
  // A failed stage prints one error line and the summary still comes, with what was measured.
  auto report_error = [&](const std::string& stage, const std::exception& e) {
    std::string what = e.what();
    const size_t cut = what.find("\nException raised from");  // c10's stack trace: the first lines say it all
    if (cut != std::string::npos) what.resize(cut);
    json j = base;
    j["mode"] = stage + "_error";
    j["error"] = what;
    emit(j);
    summary[stage + "_error"] = what;
#ifdef MINIPUZZLE_WITH_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  };
  summary["make_model_s"] = make_s;
  Scores rw, rd;
  double rw_s = 0, rd_s = 0;
  Peak rw_p, rd_p;
  bool resident_ok = false;
  try {
  {  // warm-up: library initialisation and kernel selection out of the timings (one batch, width only)
    ScoreOptions w = width;
    w.samples = std::min(batch, samples);
    compute_scores(*model, ids.narrow(0, 0, w.samples), w);
  }
  std::tie(rw_s, rw_p) = measure(device, [&] { rw = compute_scores(*model, ids, width); });
  std::tie(rd_s, rd_p) = measure(device, [&] { rd = compute_scores(*model, ids, depth); });
  const double width_tokens = double(samples * seq);
  for (auto [mode, s, p] : {std::make_tuple("resident_width", rw_s, rw_p), std::make_tuple("resident_depth", rd_s, rd_p)}) {
    json j = base;
    j["mode"] = mode;
    j["seconds"] = s;
    j["peak_allocated_above_weights_gib"] = gib(p.allocated);
    j["peak_reserved_gib"] = gib(p.reserved);
    emit(j);
  }
  summary["resident_width_s"] = rw_s;
  summary["resident_depth_s"] = rd_s;
  summary["resident_peak_above_weights_gib"] = gib(std::max(rw_p.allocated, rd_p.allocated));
  summary["resident_width_peak_gib"] = gib(rw_p.allocated);
  summary["resident_depth_peak_gib"] = gib(rd_p.allocated);
  summary["resident_peak_reserved_gib"] = gib(std::max(rw_p.reserved, rd_p.reserved));
  summary["resident_goal_gib"] = gib(weights) + 8.0;
  summary["resident_width_tokens_per_s"] = width_tokens / rw_s;
  resident_ok = true;
  } catch (const std::exception& e) {
    report_error("resident", e);
  }

  if (old && resident_ok) try {
    const int64_t k = std::min(old_layers, L);
    Scores ref;
    for (int64_t i = 0; i < L; ++i) {
      LayerScores l;
      l.index = i;
      l.type = config.layers[i];
      ref.layers.push_back(l);
    }
    auto [od_s, od_p] = measure(device, [&] {
      importance::score_depth_reference(*model, ids.narrow(0, 0, std::min(samples, depth_samples)), depth, ref, k);
    });
    json j = base;
    j["mode"] = "old_depth";
    j["patterns_timed"] = k;
    j["seconds"] = od_s;
    j["seconds_all_layers_estimated"] = od_s * double(L) / double(k);
    j["peak_allocated_above_weights_gib"] = gib(od_p.allocated);
    j["new_vs_old_max_rel_diff"] = scores_diff(rd, ref, k, false);
    emit(j);
    summary["old_depth_s_estimated"] = od_s * double(L) / double(k);
    summary["depth_new_over_old"] = rd_s / (od_s * double(L) / double(k));
    summary["depth_goal"] = 0.5;
    summary["old_depth_peak_above_weights_gib"] = gib(od_p.allocated);
    summary["new_vs_old_max_rel_diff"] = j["new_vs_old_max_rel_diff"];
  } catch (const std::exception& e) {
    report_error("old_depth", e);
  }

  if (stream) try {
    const int64_t budget = [&] {
      const double v = std::stod(budget_text);  // GiB: "16GiB" or "16" or "0.01"
      return int64_t(v * double(1ll << 30));
    }();
    const int64_t elem = int64_t(c10::elementSize(dtype));
    // As `score --max-gpu-memory` does: the whole batch per forward if it fits beside the least weights, else fewer.
    const int64_t least = LayerStreamer::min_weight_bytes(config, dtype);
    const int64_t per_forward = !device.is_cuda() ? batch
                                : std::min(score_stream_batch_size(config, width, elem, budget - least),
                                           score_stream_batch_size(config, depth, elem, budget - least));
    summary["budget_gib"] = gib(budget);
    summary["stream_samples_per_forward"] = per_forward;
    if (device.is_cuda() && per_forward == 0) throw std::runtime_error("--budget too small for one sample per forward");
    width.stream_batch_size = depth.stream_batch_size = per_forward;
    const int64_t activations = std::max(score_activation_bytes(config, width, elem, true),
                                         score_activation_bytes(config, depth, elem, true));
    summary["activation_estimate_gib"] = gib(activations);
    // On the CPU nothing caps the allocator: the budget is the weights' alone (a small one streams every layer).
    const int64_t weight_budget = device.is_cuda() ? budget - activations : budget;
    t0 = std::chrono::steady_clock::now();
    std::unique_ptr<LayerStreamer> streamer = ck ? LayerStreamer::open(*ck, device, dtype, weight_budget)
                                                 : LayerStreamer::from_model(*model, device, dtype, weight_budget);
    const double host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    model.reset();  // from here on, only the streamer's weights are on the device
#ifdef MINIPUZZLE_WITH_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    LayerStreamer::limit_device_memory(device, budget);
    Scores sw, sd;
    summary["budget_weights_gib"] = gib(weight_budget);
    summary["stream_resident_layers"] = streamer->stats().resident_layers;
    auto [sw_s, sw_p] = measure(device, [&] { sw = compute_scores(*streamer, ids, width); });
    const auto after_width = streamer->stats();
    auto [sd_s, sd_p] = measure(device, [&] { sd = compute_scores(*streamer, ids, depth); });
    const auto st = streamer->stats();
    json jw = base, jd = base;
    jw["mode"] = "streamed_width";
    jw["seconds"] = sw_s;
    jw["throughput_vs_resident"] = rw_s / sw_s;
    jw["peak_reserved_gib"] = gib(sw_p.reserved);
    jw["layer_copies"] = after_width.loads;
    jw["seconds_per_layer"] = sw_s / double(L);
    jw["same_scores_max_rel_diff"] = resident_ok ? scores_diff(sw, rw, L, true) : -1.0;
    emit(jw);
    jd["mode"] = "streamed_depth";
    jd["seconds"] = sd_s;
    jd["throughput_vs_resident"] = rd_s / sd_s;
    jd["peak_reserved_gib"] = gib(sd_p.reserved);
    jd["layer_copies"] = st.loads - after_width.loads;
    jd["copied_gib"] = gib(st.bytes_loaded);
    jd["prefetch_hits"] = st.prefetch_hits;
    jd["same_scores_max_rel_diff"] = resident_ok ? scores_diff(sd, rd, L, false) : -1.0;
    emit(jd);
    summary["stream_pinned"] = st.pinned;
    summary["stream_host_copy_s"] = host_s;
    summary["streamed_width_s"] = sw_s;
    summary["streamed_depth_s"] = sd_s;
    summary["streamed_peak_reserved_gib"] = gib(std::max(sw_p.reserved, sd_p.reserved));
    summary["stream_throughput_vs_resident"] = (rw_s + rd_s) / (sw_s + sd_s);
    summary["stream_width_throughput_vs_resident"] = rw_s / sw_s;
    summary["stream_goal"] = 0.6;
    summary["stream_width_s_per_layer"] = sw_s / double(L);
    summary["stream_width_s_per_layer_per_sample"] = sw_s / double(L) / double(samples);
    summary["stream_copy_gib_per_s"] = gib(after_width.bytes_loaded) / sw_s;
    summary["streamed_vs_resident_max_rel_diff"] = std::max(jw["same_scores_max_rel_diff"].get<double>(),
                                                            jd["same_scores_max_rel_diff"].get<double>());
  } catch (const std::exception& e) {  // c10::Error included (out of memory under the cap): reported, not aborted
    report_error("streamed", e);
  }
  emit(summary);
  return 0;
}
