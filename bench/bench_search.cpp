// bench_search: the search's speed claims and the papers' checks, as one JSON object on stdout.
//  - the full Nemotron-Nano-12B-v2 search (default space: 40% width / 20% depth, per-type depth) on the A10G at
//    128k with the Nano 2 budget (claim: <= 10 s on 2 cores);
//  - the 17,472-combination Nano-9B-v2 -> 7B space NVIDIA searched (layers 46-56, hidden 2816-4352,
//    FFN 10240-13824, Mamba heads 80-128, head_dim 56-80), enumerated, costed and ranked (claim: <= 2 s);
//  - where the Nano-9B-v2 and Nemotron-H-47B shapes land in the paper-restricted spaces.
// Usage: bench_search [CONFIGS_DIR]   (default: the source tree's configs/)
//        bench_search --gpu SERVING.json: the GPU host's measurements (bench_model_serving) against the memory
//        model (claim: weights, KV cache and Mamba state within 5%) and the roofline fitted on some shapes and
//        predicting the held-out ones (claim: within 15%).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "minipuzzle/config.h"
#include "minipuzzle/search.h"

using namespace mp;
using namespace mp::search;

// The GPU host's measurements (bench_model_serving) against the memory model and the calibrated roofline.
static json analyse_gpu(const std::string& path) {
  json in = read_json_file(path);
  json out;
  const std::string device = in.value("device", std::string("?"));
  out["device"] = device;
  if (in.contains("memory") && in["memory"].contains("allocated_bytes")) {
    const json& m = in["memory"];
    ModelConfig c = ModelConfig::from_json(m["config"], path + " memory config");
    InferenceSetup u;
    u.context = m["context"].get<int64_t>();
    u.batch = m["batch"].get<int64_t>();
    u.weights = parse_dtype(m["dtypes"]["weights"].get<std::string>());
    u.kv_cache = parse_dtype(m["dtypes"]["kv_cache"].get<std::string>());
    u.conv_state = parse_dtype(m["dtypes"]["conv_state"].get<std::string>());
    u.ssm_state = parse_dtype(m["dtypes"]["ssm_state"].get<std::string>());
    u.prefill_chunk = m["prefill_chunk"].get<int64_t>();
    MemoryBreakdown p = estimate_memory(c, u);
    const json& a = m["allocated_bytes"];
    json terms = json::object();
    bool pass = true;
    auto term = [&](const char* name, double measured, double predicted, bool claim) {
      double rel = (measured - predicted) / predicted;
      terms[name] = {{"measured_gib", measured / kGiB}, {"model_gib", predicted / kGiB}, {"relative_error", rel}};
      if (claim) {
        terms[name]["within_5_percent"] = std::fabs(rel) <= 0.05;
        pass = pass && std::fabs(rel) <= 0.05;
      }
    };
    term("weights", a["weights"].get<double>(), p.weights, true);
    term("kv_conv_ssm_allocated", a["kv_conv_ssm"].get<double>(), p.kv_cache + p.conv_state + p.ssm_state, true);
    term("weights_kv_state_total", a["total"].get<double>(), p.weights + p.kv_cache + p.conv_state + p.ssm_state, true);
    term("kv_tensors", a["kv_tensors"].get<double>(), p.kv_cache, true);
    term("conv_tensors", a["conv_tensors"].get<double>(), p.conv_state, true);
    term("ssm_tensors", a["ssm_tensors"].get<double>(), p.ssm_state, true);
    if (a.contains("prefill_chunk_peak"))
      term("prefill_chunk_peak_vs_activation_term (information)", a["prefill_chunk_peak"].get<double>(), p.activations,
           false);
    out["memory"] = {{"shape", c.pattern()}, {"hidden", c.hidden_size}, {"context", u.context}, {"batch", u.batch},
                     {"terms", terms}, {"pass_5_percent", pass}};
  } else {
    out["memory"] = {{"error", in.contains("memory") ? in["memory"] : json("no memory measurements")}};
  }
  std::vector<TimingSample> all = load_timings(path), fit, held;
  for (auto& t : all) (t.label.find("-heldout") != std::string::npos ? held : fit).push_back(t);
  const HardwareProfile base = load_hardware(device.find("H200") != std::string::npos ? "h200" : "h100-80gb");
  std::vector<double> before = relative_errors(held, base);
  auto raise = [](json& obj, const char* key, double v) {  // obj[key] = max(obj[key], v)
    obj[key] = obj.contains(key) ? std::max(obj[key].get<double>(), v) : v;
  };
  auto summarise = [&](RooflineForm form) {
    HardwareProfile hw = base;
    CalibrationResult r = calibrate(fit, hw, form);
    r.apply(hw);
    std::vector<double> after = relative_errors(held, hw);
    json rows = json::array();
    double worst = 0, mean = 0;
    json by_phase = json::object();
    for (size_t i = 0; i < held.size(); ++i) {
      const double e = std::fabs(after[i]);
      worst = std::max(worst, e);
      mean += e / static_cast<double>(held.size());
      raise(by_phase[held[i].phase], "held_out_max_abs_relative_error", e);
      rows.push_back({{"label", held[i].label}, {"phase", held[i].phase}, {"batch", held[i].batch},
                      {"n", held[i].phase == "decode" ? held[i].position : held[i].tokens},
                      {"measured_ms", held[i].seconds * 1e3}, {"relative_error", after[i]},
                      {"uncalibrated_relative_error", before[i]}});
    }
    for (size_t i = 0; i < fit.size(); ++i) {
      raise(by_phase[fit[i].phase], "train_max_abs_relative_error", std::fabs(r.relative_errors[i]));
    }
    return json{{"fit", r.to_json()},
                {"train_max_abs_relative_error", r.max_abs_relative_error},
                {"train_mean_abs_relative_error", r.mean_abs_relative_error},
                {"held_out", rows},
                {"held_out_max_abs_relative_error", worst},
                {"held_out_mean_abs_relative_error", mean},
                {"by_phase", by_phase},
                {"pass_15_percent", worst <= 0.15},
                {"calibrated_profile", hw.to_json()}};
  };
  double worst_before = 0;
  for (double e : before) worst_before = std::max(worst_before, std::fabs(e));
  json split = summarise(RooflineForm::Split);
  json combined = summarise(RooflineForm::Combined);
  std::set<std::string> labels;
  for (auto& t : all) labels.insert(t.label);
  out["calibration"] = split;
  out["calibration"]["profile"] = base.name;
  out["calibration"]["form"] = "split";
  out["calibration"]["fit_samples"] = fit.size();
  out["calibration"]["held_out_samples"] = held.size();
  out["calibration"]["shapes"] = labels.size();
  out["calibration"]["decode_mode"] = in.value("decode_mode", std::string("eager"));
  out["calibration"]["held_out_max_abs_relative_error_uncalibrated"] = worst_before;
  out["calibration_combined_form"] = combined;
  return out;
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main(int argc, char** argv) {
  setenv("MINIPUZZLE_PROGRESS", "off", 0);
  if (argc > 2 && std::string(argv[1]) == "--gpu") {
    try {
      std::printf("%s\n", analyse_gpu(argv[2]).dump(2).c_str());
    } catch (const std::exception& e) {
      std::printf("%s\n", json{{"error", e.what()}, {"input", argv[2]}}.dump(2).c_str());
      return 1;
    }
    return 0;
  }
  if (argc > 1) setenv("MINIPUZZLE_CONFIGS", argv[1], 1);
  auto model = [](const char* name) { return load_config(find_config_file("models", name)); };
  json out;
  HardwareProfile a10g = load_hardware("a10g");

  {  // Full 12B search.
    ModelConfig parent = model("nemotron-nano-12b-v2");
    SearchOptions o;
    o.setup.context = 131072;
    o.budget = make_budget(a10g, parse_reservations("vision=1.3GiB"), std::nullopt);
    o.space = default_space(parent);
    auto t0 = std::chrono::steady_clock::now();
    SearchResult r = run_search(parent, a10g, o);
    out["nano12b_full_search"] = {{"combinations", o.space.combinations()},
                                  {"enumerated", r.enumerated},
                                  {"feasible", r.feasible},
                                  {"seconds", seconds_since(t0)},
                                  {"claim_seconds", 10},
                                  {"space", o.space.to_json()}};
  }
  {  // NVIDIA's 9B -> 7B space (parameter target 7B).
    ModelConfig parent = model("nemotron-nano-9b-v2");
    SearchOptions o;
    o.setup.context = 131072;
    o.budget = make_budget(a10g, {}, 1e6);  // the constraint here is the parameter target
    o.space.depth_per_type = false;
    o.space.drop_total = {0, 10, 2};
    o.space.hidden = {2816, 4352, 128};
    o.space.ffn = {10240, 13824, 512};
    o.space.mamba_heads = {80, 128, 8};
    o.space.mamba_head_dim = {56, 80, 8};
    o.space.attention_heads = {40, 40, 8};
    o.space.max_params = 7e9;
    auto t0 = std::chrono::steady_clock::now();
    SearchResult r = run_search(parent, a10g, o);
    json best = json::array();
    for (auto& c : r.candidates)
      if (c.rank >= 1 && c.rank <= 5) best.push_back({{"rank", c.rank}, {"id", c.id}, {"params", c.params.total()}});
    out["nano9b_to_7b"] = {{"combinations", o.space.combinations()}, {"enumerated", r.enumerated},
                           {"under_7b", r.feasible},           {"seconds", seconds_since(t0)},
                           {"claim_seconds", 2},               {"best", best}};
  }
  {  // Nano 2: where the 9B shape lands in the paper's width search (configs/search/nano2-12b-to-9b.json), and in
     // its whole space (drop 6-10 layers of any type) ranked by fill.
    PreparedSearch p = prepare_search(SearchRequest::load("nano2-12b-to-9b"));
    auto t0 = std::chrono::steady_clock::now();
    SearchResult r = run_search(p.parent, p.hardware, p.options);
    const Candidate& ref = *r.references[0].candidate;
    json top = json::array();
    for (auto& c : r.candidates)
      if (c.rank >= 1 && c.rank <= 5)
        top.push_back({{"rank", c.rank}, {"id", c.id}, {"params", c.params.total()}, {"memory_gib", c.memory.total() / kGiB},
                       {"proxy", c.proxy}});
    out["nano2_paper_space"] = {{"config", "configs/search/nano2-12b-to-9b.json"},
                                {"proxy", r.proxy_kind},
                                {"budget_gib", p.options.budget.usable_bytes() / kGiB},
                                {"parent_fits", r.parent.feasible},
                                {"parent_memory_gib", r.parent.memory.total() / kGiB},
                                {"nano9b_reachable", r.references[0].reachable},
                                {"nano9b_fits", ref.feasible},
                                {"nano9b_memory_gib", ref.memory.total() / kGiB},
                                {"nano9b_stage1_rank", ref.rank},
                                {"top5", top},
                                {"feasible", r.feasible},
                                {"enumerated", r.enumerated},
                                {"seconds", seconds_since(t0)}};
    SearchOptions whole = p.options;  // the paper's whole space, fill proxy, memory budget only
    whole.proxy = Proxy::Fill;
    whole.space.max_params = 0;
    whole.space.drop_mamba = {0, 10, 1};
    whole.space.drop_attention = {0, 5, 1};
    whole.space.drop_mlp = {0, 10, 1};
    whole.space.bound_total = true;
    whole.space.drop_total = {6, 10, 1};
    SearchResult w = run_search(p.parent, p.hardware, whole);
    out["nano2_whole_space_fill"] = {{"nano9b_stage1_rank", w.references[0].candidate->rank},
                                     {"feasible", w.feasible},
                                     {"enumerated", w.enumerated}};
  }
  {  // MiniPuzzle: 56B -> 47B on an RTX 5090 (configs/search/minipuzzle-56b-to-47b.json).
    PreparedSearch p = prepare_search(SearchRequest::load("minipuzzle-56b-to-47b"));
    auto t0 = std::chrono::steady_clock::now();
    SearchResult r = run_search(p.parent, p.hardware, p.options);
    const Candidate& ref = *r.references[0].candidate;
    out["minipuzzle_56b_to_47b"] = {{"config", "configs/search/minipuzzle-56b-to-47b.json"},
                                    {"parent_fits", r.parent.feasible},
                                    {"parent_memory_gib", r.parent.memory.total() / kGiB},
                                    {"h47b_reachable", r.references[0].reachable},
                                    {"h47b_fits", ref.feasible},
                                    {"h47b_memory_gib", ref.memory.total() / kGiB},
                                    {"h47b_stage1_rank", ref.rank},
                                    {"feasible", r.feasible},
                                    {"enumerated", r.enumerated},
                                    {"seconds", seconds_since(t0)}};
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
