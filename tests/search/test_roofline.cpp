// Roofline costs against hand counts and brute-force sums; the least-squares calibration against timings
// synthesised from known coefficients (with noise), including prediction of held-out shapes; and the calibration
// on the timings measured on an H100 (tests/search/data/h100_serving_timings.json, bench_model_serving), fitted
// on 10 shapes and predicting the 4 held out within 15%.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <tuple>

#include "catch.h"
#include "minipuzzle/config.h"
#include "minipuzzle/error.h"
#include "minipuzzle/search.h"

using namespace mp;
using namespace mp::search;

static ModelConfig published(const std::string& name) {
  return load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/" + name + ".json");
}

TEST_CASE("decode step bytes: weights once, the KV cache to the position, the state twice", "[search][roofline]") {
  ModelConfig c = published("nemotron-nano-9b-v2");
  InferenceSetup u;
  u.batch = 1;
  u.ssm_state = DType::F32;
  StepCost s = decode_step_cost(Shape::of(c), u, 999);
  const double params = 8888227328.0, embed = 131072.0 * 4480;
  const double kv = 4 * 2 * 1000.0 * 8 * 128 * 2;
  const double state = 27 * (3.0 * (10240 + 2048) * 2 + 128.0 * 80 * 128 * 4);
  CHECK(s.stream_bytes == Approx((params - embed) * 2 + 4480 * 2).epsilon(1e-12));
  CHECK(s.kv_bytes == Approx(kv).epsilon(1e-12));
  CHECK(s.state_bytes == Approx(2 * state).epsilon(1e-12));
  CHECK(s.cache_bytes() == Approx(kv + 2 * state).epsilon(1e-12));
  CHECK(s.bytes() == Approx((params - embed) * 2 + 4480 * 2 + kv + 2 * state).epsilon(1e-12));
  // 40 query heads on 8 KV heads: grouped, so the grouped terms count the KV bytes and 4 layers x 1000 positions.
  CHECK(s.grouped_kv_bytes == Approx(kv).epsilon(1e-12));
  CHECK(s.grouped_positions == 4 * 1000.0);
  // FLOPs: 2 per weight of every projection and the LM head, QK and PV over 1000 positions in 4 attention
  // layers, and the state update (~6 per state element) in 27 Mamba layers.
  ParamCounts p = count_params(Shape::of(c));
  CHECK(double(p.matmul()) == 8888227328.0 - embed - 4480.0 * (56 + 1));
  CHECK(s.gemm_flops == Approx(2.0 * double(p.matmul())).epsilon(1e-12));
  CHECK(s.attention_flops == Approx(4 * 4.0 * 1000 * 40 * 128).epsilon(1e-12));
  CHECK(s.scan_flops == Approx(27 * 6.0 * 128 * 80 * 128).epsilon(1e-12));
  CHECK(s.mamba_layers == 27);
  CHECK(s.attention_layers == 4);
  CHECK(s.mlp_layers == 25);
  // One query head per KV head: no grouped terms; prefill never has them.
  ModelConfig mha = c;
  mha.num_attention_heads = mha.num_key_value_heads;
  StepCost m = decode_step_cost(Shape::of(mha), u, 999);
  CHECK(m.kv_bytes == Approx(kv).epsilon(1e-12));
  CHECK(m.grouped_kv_bytes == 0);
  CHECK(m.grouped_positions == 0);
  StepCost p1 = prefill_cost(Shape::of(c), u, 1000);
  CHECK(p1.grouped_kv_bytes == 0);
  CHECK(p1.grouped_positions == 0);
  CHECK(p1.kv_bytes == Approx(kv).epsilon(1e-12));  // 1000 tokens' K and V written
  CHECK(p1.state_bytes == Approx(state).epsilon(1e-12));
}

TEST_CASE("workload time equals the explicit sum over decode positions", "[search][roofline]") {
  ModelConfig c = published("nemotron-nano-12b-v2");
  HardwareProfile hw = load_hardware("a10g");
  InferenceSetup u;
  u.batch = 2;
  Workload w{1000, 300};
  Throughput t = predict_throughput(Shape::of(c), u, hw, w);
  double sum = 0;
  for (int64_t p = 1000; p < 1300; ++p) sum += step_seconds(decode_step_cost(Shape::of(c), u, p), hw, u.weights);
  CHECK(t.decode_s == Approx(sum).epsilon(1e-9));
  CHECK(t.prefill_s == Approx(step_seconds(prefill_cost(Shape::of(c), u, 1000), hw, u.weights)));
  CHECK(t.output_tokens_per_s == Approx(2 * 300 / (t.prefill_s + t.decode_s)));
  Workload parsed = parse_workload("8k-in,16k-out");
  CHECK(parsed.input_tokens == 8192);
  CHECK(parsed.output_tokens == 16384);
  CHECK_THROWS_AS(parse_workload("8k"), mp::Error);
}

TEST_CASE("nnls: the non-negative least-squares solution equals the best of all sign-feasible subsets", "[search][roofline]") {
  std::mt19937 rng(3);
  std::normal_distribution<double> g(0.0, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    const int m = 12, n = 5;
    std::vector<std::vector<double>> rows(m, std::vector<double>(n));
    std::vector<double> b(m);
    for (auto& r : rows)
      for (auto& v : r) v = g(rng) * (1 + trial % 3) * 10;  // columns of mixed scale
    for (auto& v : b) v = g(rng);
    std::vector<double> x = nnls(rows, b);
    auto residual = [&](const std::vector<double>& c) {
      double r2 = 0;
      for (int i = 0; i < m; ++i) {
        double p = -b[size_t(i)];
        for (int j = 0; j < n; ++j) p += rows[size_t(i)][size_t(j)] * c[size_t(j)];
        r2 += p * p;
      }
      return r2;
    };
    // Brute force: least squares on every subset of columns, kept when all coefficients are >= 0.
    double best = residual(std::vector<double>(n, 0.0));
    for (int mask = 1; mask < (1 << n); ++mask) {
      std::vector<int> cols;
      for (int j = 0; j < n; ++j)
        if (mask >> j & 1) cols.push_back(j);
      // Normal equations, solved by Gaussian elimination (small and well conditioned here).
      const size_t k = cols.size();
      std::vector<std::vector<double>> M(k, std::vector<double>(k + 1, 0.0));
      for (size_t p = 0; p < k; ++p) {
        for (size_t q = 0; q < k; ++q)
          for (int i = 0; i < m; ++i) M[p][q] += rows[size_t(i)][size_t(cols[p])] * rows[size_t(i)][size_t(cols[q])];
        for (int i = 0; i < m; ++i) M[p][k] += rows[size_t(i)][size_t(cols[p])] * b[size_t(i)];
      }
      for (size_t p = 0; p < k; ++p)
        for (size_t q = p + 1; q < k; ++q) {
          double f = M[q][p] / M[p][p];
          for (size_t r = p; r <= k; ++r) M[q][r] -= f * M[p][r];
        }
      std::vector<double> sol(k);
      for (size_t p = k; p-- > 0;) {
        double v = M[p][k];
        for (size_t q = p + 1; q < k; ++q) v -= M[p][q] * sol[q];
        sol[p] = v / M[p][p];
      }
      if (std::any_of(sol.begin(), sol.end(), [](double v) { return v < 0; })) continue;
      std::vector<double> c(n, 0.0);
      for (size_t p = 0; p < k; ++p) c[size_t(cols[p])] = sol[p];
      best = std::min(best, residual(c));
    }
    for (double v : x) CHECK(v >= 0);
    CHECK(residual(x) == Approx(best).epsilon(1e-9));
  }
}

namespace {
// A small hybrid of `units` repeats of `unit` (e.g. "M-M*-"), hidden h, FFN 4h, as bench_model_serving times.
ModelConfig bench_shape(int64_t hidden, int64_t units, const std::string& unit) {
  ModelConfig c = published("nemotron-nano-9b-v2");
  c.hidden_size = hidden;
  c.intermediate_size = 4 * hidden;
  c.num_attention_heads = std::max<int64_t>(8, hidden / 128 / 8 * 8);
  c.mamba_num_heads = 2 * hidden / 64;
  c.mamba_head_dim = 64;
  c.layers.clear();
  for (int64_t i = 0; i < units; ++i)
    for (char ch : unit) c.layers.push_back(static_cast<LayerType>(ch));
  return c;
}
}  // namespace

TEST_CASE("calibration recovers known coefficients and predicts held-out shapes", "[search][roofline]") {
  HardwareProfile hw = load_hardware("h100-80gb");
  // Ground truth in the split form. Decode: KV and state traffic slower than the weight stream, grouped-query
  // attention reading the KV again and taking a time per cached position, launch overheads that differ per layer
  // type, a fixed step cost; its FLOP factors are the profile's (the fit holds them). Prefill: attention and the
  // scan at lower fractions of the peak than the GEMMs, one factor for the KV and state written.
  Efficiency truth_decode = hw.decode_efficiency, truth_prefill = hw.prefill_efficiency;
  truth_decode.bandwidth_factor = 1 / 0.82, truth_decode.cache_factor = 1 / 0.55, truth_decode.state_factor = 1 / 0.2;
  truth_decode.grouped_kv_factor = 1.5, truth_decode.grouped_position_s = 25e-9;
  truth_decode.mamba_layer_s = 38e-6, truth_decode.attention_layer_s = 17e-6, truth_decode.mlp_layer_s = 9e-6;
  truth_decode.step_s = 60e-6;
  truth_prefill.bandwidth_factor = 1 / 0.82, truth_prefill.cache_factor = truth_prefill.state_factor = 1 / 0.55;
  truth_prefill.compute_factor = 1 / 0.61, truth_prefill.attention_factor = 1 / 0.35, truth_prefill.scan_factor = 1 / 0.12;
  truth_prefill.mamba_layer_s = 38e-6, truth_prefill.attention_layer_s = 17e-6, truth_prefill.mlp_layer_s = 9e-6;
  truth_prefill.step_s = 60e-6;
  HardwareProfile exact_hw = hw;
  exact_hw.decode_efficiency = truth_decode;
  exact_hw.prefill_efficiency = truth_prefill;
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(0.0, 0.02);  // 2% timing noise
  auto make = [&](int64_t hidden, int64_t units, const std::string& unit, const std::string& phase, int64_t batch,
                  int64_t n) {
    TimingSample t;
    t.config = bench_shape(hidden, units, unit);
    t.phase = phase;
    t.batch = batch;
    (phase == "decode" ? t.position : t.tokens) = n;
    InferenceSetup u;
    u.batch = batch;
    Shape s = Shape::of(t.config);
    StepCost cost = phase == "decode" ? decode_step_cost(s, u, n) : prefill_cost(s, u, n);
    t.seconds = step_seconds(cost, exact_hw, DType::BF16) * (1.0 + noise(rng));
    return t;
  };
  // Hidden 1024 has 8 query heads on 8 KV heads (not grouped), 2048 and 4096 have 16 and 32 (grouped).
  std::vector<TimingSample> fit, held_out;
  const std::vector<std::string> units = {"M-M*-", "MM-", "M*-*"};
  for (int64_t h : {1024, 2048, 4096})
    for (int64_t reps : {2, 6})
      for (const std::string& unit : units) {
        for (auto [b, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 2048}, {8, 8192}, {32, 4096}, {4, 30000}})
          fit.push_back(make(h, reps, unit, "decode", b, n));
        for (auto [b, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 2048}, {2, 8192}, {4, 1024}})
          fit.push_back(make(h, reps, unit, "prefill", b, n));
      }
  for (auto [h, reps, unit] : std::vector<std::tuple<int64_t, int64_t, std::string>>{
           {1536, 5, "M-M*-"}, {3072, 4, "MM-"}, {2560, 3, "M*-*"}, {3072, 3, "M*-*"}}) {
    held_out.push_back(make(h, reps, unit, "decode", 4, 1024));
    held_out.push_back(make(h, reps, unit, "decode", 16, 16384));
    held_out.push_back(make(h, reps, unit, "decode", 2, 60000));
    held_out.push_back(make(h, reps, unit, "prefill", 2, 4096));
  }
  CalibrationResult r = calibrate(fit, hw);
  CHECK(r.form == RooflineForm::Split);
  // The dominant terms are well determined: decode's weight stream, cache and state traffic and the grouped
  // attention's time per position; prefill's GEMM factor. The decode FLOP factors are held, not fitted.
  CHECK(r.decode.bandwidth_factor == Approx(truth_decode.bandwidth_factor).epsilon(0.05));
  CHECK(r.decode.cache_factor == Approx(truth_decode.cache_factor).epsilon(0.15));
  CHECK(r.decode.state_factor == Approx(truth_decode.state_factor).epsilon(0.08));
  CHECK(r.decode.grouped_position_s == Approx(truth_decode.grouped_position_s).epsilon(0.15));
  CHECK(r.decode.grouped_kv_factor == Approx(truth_decode.grouped_kv_factor).epsilon(0.3));
  CHECK(r.decode.compute_factor == hw.decode_efficiency.compute_factor);
  CHECK(r.decode.attention_factor == hw.decode_efficiency.attention_factor);
  CHECK(r.prefill.compute_factor == Approx(truth_prefill.compute_factor).epsilon(0.05));
  CHECK(r.prefill.grouped_position_s == 0);
  CHECK(r.prefill.state_factor == r.prefill.cache_factor);
  CHECK(r.decode.calibrated);
  CHECK(r.prefill.calibrated);
  CHECK(r.max_abs_relative_error < 0.08);
  HardwareProfile fitted = hw;
  r.apply(fitted);
  double worst_split = 0;
  for (double e : relative_errors(held_out, fitted)) worst_split = std::max(worst_split, std::fabs(e));
  CHECK(worst_split < 0.08);
  // The combined three-term form cannot follow these timings as closely.
  CalibrationResult c = calibrate(fit, hw, RooflineForm::Combined);
  CHECK(c.form == RooflineForm::Combined);
  HardwareProfile combined = hw;
  c.apply(combined);
  double worst_combined = 0;
  for (double e : relative_errors(held_out, combined)) worst_combined = std::max(worst_combined, std::fabs(e));
  WARN("held-out max |error|: split " << worst_split << ", combined " << worst_combined);
  CHECK(worst_combined > worst_split);
  CHECK(c.decode.cache_factor == c.decode.bandwidth_factor);
  CHECK(c.decode.state_factor == c.decode.bandwidth_factor);
  CHECK(c.decode.grouped_kv_factor == 0);
  CHECK(c.decode.grouped_position_s == 0);
  CHECK(c.prefill.attention_layer_s == c.prefill.mamba_layer_s);
  CHECK(c.prefill.step_s == 0);
  // The profile written with the fitted coefficients reads back the same.
  HardwareProfile again = HardwareProfile::from_json(fitted.to_json(), "round trip");
  CHECK(again.decode_efficiency.bandwidth_factor == Approx(r.decode.bandwidth_factor));
  CHECK(again.decode_efficiency.cache_factor == Approx(r.decode.cache_factor));
  CHECK(again.decode_efficiency.state_factor == Approx(r.decode.state_factor));
  CHECK(again.decode_efficiency.grouped_kv_factor == Approx(r.decode.grouped_kv_factor));
  CHECK(again.decode_efficiency.grouped_position_s == Approx(r.decode.grouped_position_s));
  CHECK(again.prefill_efficiency.compute_factor == Approx(r.prefill.compute_factor));
  CHECK(again.prefill_efficiency.scan_factor == Approx(r.prefill.scan_factor));
  CHECK(again.decode_efficiency.mamba_layer_s == Approx(r.decode.mamba_layer_s));
  CHECK(again.decode_efficiency.step_s == Approx(r.decode.step_s));
  CHECK(again.prefill_efficiency.calibrated);
  CHECK_THROWS_AS(calibrate({fit[0], fit[1]}, hw), mp::Error);
}

TEST_CASE("calibration on the H100 timings predicts the held-out shapes within 15%", "[search][roofline]") {
  // bench_model_serving on an H100 80GB HBM3 (decode replayed from CUDA graphs, medians of 7 trials): 14 shapes
  // of the patterns M-M*-, MM- and M*-, hidden 1024-4096; the 4 labelled "-heldout" are predicted, not fitted
  // (the split bench_search --gpu makes).
  std::vector<TimingSample> all =
      load_timings(std::string(MINIPUZZLE_SOURCE_DIR) + "/tests/search/data/h100_serving_timings.json"), fit, held;
  for (auto& t : all) (t.label.find("-heldout") != std::string::npos ? held : fit).push_back(t);
  REQUIRE(fit.size() == 70);
  REQUIRE(held.size() == 28);
  const HardwareProfile base = load_hardware("h100-80gb");
  auto worst_by_phase = [](const std::vector<TimingSample>& samples, const std::vector<double>& errors) {
    std::map<std::string, double> worst;
    for (size_t i = 0; i < samples.size(); ++i)
      worst[samples[i].phase] = std::max(worst[samples[i].phase], std::fabs(errors[i]));
    return worst;
  };
  CalibrationResult r = calibrate(fit, base);
  HardwareProfile hw = base;
  r.apply(hw);
  auto train = worst_by_phase(fit, r.relative_errors);
  auto predicted = worst_by_phase(held, relative_errors(held, hw));
  WARN("H100 split form: decode train " << train["decode"] << " held-out " << predicted["decode"]
                                        << "; prefill train " << train["prefill"] << " held-out "
                                        << predicted["prefill"]);
  CHECK(predicted["decode"] < 0.15);
  CHECK(predicted["prefill"] < 0.15);
  CHECK(train["decode"] < 0.15);
  CHECK(train["prefill"] < 0.15);
  // What carries decode at long context: grouped-query attention's time per cached position (~30 ns per layer;
  // the timings at 4 x 30000 take 1.5 ms per grouped attention layer against 0.3 ms with one query head per KV
  // head) and the Mamba state traffic; the weights stream at most at the bandwidth.
  CHECK(r.decode.grouped_position_s > 10e-9);
  CHECK(r.decode.grouped_position_s < 100e-9);
  CHECK(r.decode.state_factor > 0);
  CHECK(r.decode.bandwidth_factor >= 1.0);
  // The three-term form, one factor for all bytes, does not follow decode (it under-predicts long context by
  // more than half); the split form is needed.
  CalibrationResult c = calibrate(fit, base, RooflineForm::Combined);
  HardwareProfile chw = base;
  c.apply(chw);
  CHECK(worst_by_phase(held, relative_errors(held, chw))["decode"] > 0.3);
}

TEST_CASE("profiles with the three combined coefficients still read", "[search][roofline]") {
  json j = {{"name", "old"}, {"memory_gib", 24}, {"bandwidth_gb_per_s", 1000}, {"bf16_tflops", 100},
            {"efficiency", {{"bandwidth_factor", 1.25}, {"compute_factor", 2.0}, {"layer_overhead_us", 7}}}};
  HardwareProfile h = HardwareProfile::from_json(j, "old profile");
  for (const Efficiency* e : {&h.decode_efficiency, &h.prefill_efficiency}) {
    CHECK(e->bandwidth_factor == 1.25);
    CHECK(e->cache_factor == 1.25);
    CHECK(e->state_factor == 1.25);
    CHECK(e->grouped_kv_factor == 0);
    CHECK(e->grouped_position_s == 0);
    CHECK(e->compute_factor == 2.0);
    CHECK(e->attention_factor == 2.0);
    CHECK(e->scan_factor == 2.0);
    CHECK(e->mamba_layer_s == Approx(7e-6));
    CHECK(e->mlp_layer_s == Approx(7e-6));
    CHECK(e->step_s == 0);
  }
  // A profile from before the state term: its cache factor covers the Mamba state too.
  json k = j;
  k["efficiency"] = {{"cache_factor", 1.6}, {"grouped_position_ns", 30}};
  HardwareProfile before_state = HardwareProfile::from_json(k, "cache factor only");
  CHECK(before_state.decode_efficiency.state_factor == 1.6);
  CHECK(before_state.decode_efficiency.grouped_position_s == Approx(30e-9));
  j["efficiency"]["scan_factor"] = -1;
  CHECK_THROWS_AS(HardwareProfile::from_json(j, "negative"), mp::Error);
}
