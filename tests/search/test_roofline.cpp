// Roofline costs against hand counts and brute-force sums; the least-squares calibration against timings
// synthesised from known coefficients (with noise), including prediction of held-out shapes.
#include <cmath>
#include <random>

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
  CHECK(s.bytes == Approx((params - embed) * 2 + 4480 * 2 + kv + 2 * state).epsilon(1e-12));
  // FLOPs: 2 per weight of every projection and the LM head, QK and PV over 1000 positions in 4 attention
  // layers, and the state update (~6 per state element) in 27 Mamba layers.
  ParamCounts p = count_params(Shape::of(c));
  CHECK(double(p.matmul()) == 8888227328.0 - embed - 4480.0 * (56 + 1));
  CHECK(s.flops == Approx(2.0 * double(p.matmul()) + 4 * 4.0 * 1000 * 40 * 128 + 27 * 6.0 * 128 * 80 * 128)
                       .epsilon(1e-12));
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

TEST_CASE("calibration recovers known coefficients and predicts held-out shapes", "[search][roofline]") {
  HardwareProfile hw = load_hardware("h100-80gb");
  const Efficiency truth{1.0 / 0.82, 1.0 / 0.61, 11e-6, false, ""};
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(0.0, 0.02);  // 2% timing noise
  auto make = [&](int64_t hidden, int64_t ffn, int64_t layers_pairs, const std::string& phase, int64_t batch,
                  int64_t n) {
    ModelConfig c = published("nemotron-nano-9b-v2");
    c.hidden_size = hidden;
    c.intermediate_size = ffn;
    c.layers.clear();
    for (int64_t i = 0; i < layers_pairs; ++i) {
      c.layers.push_back(LayerType::Mamba);
      c.layers.push_back(i % 4 == 3 ? LayerType::Attention : LayerType::Mlp);
    }
    TimingSample t;
    t.config = c;
    t.phase = phase;
    t.batch = batch;
    (phase == "decode" ? t.position : t.tokens) = n;
    InferenceSetup u;
    u.batch = batch;
    Shape s = Shape::of(c);
    StepCost cost = phase == "decode" ? decode_step_cost(s, u, n) : prefill_cost(s, u, n);
    double exact = truth.bandwidth_factor * cost.bytes / hw.bandwidth_bytes_per_s +
                   truth.compute_factor * cost.flops / hw.bf16_flops + truth.layer_overhead_s * double(cost.layers);
    t.seconds = exact * (1.0 + noise(rng));
    return t;
  };
  std::vector<TimingSample> fit, held_out;
  for (int64_t h : {512, 1024, 2048})
    for (int64_t pairs : {2, 4, 8}) {
      fit.push_back(make(h, 4 * h, pairs, "decode", 1, 512));
      fit.push_back(make(h, 4 * h, pairs, "decode", 16, 2048));
      fit.push_back(make(h, 4 * h, pairs, "prefill", 1, 2048));
      fit.push_back(make(h, 4 * h, pairs, "prefill", 4, 512));
    }
  held_out.push_back(make(1536, 6144, 6, "decode", 4, 1024));
  held_out.push_back(make(1536, 6144, 6, "prefill", 2, 4096));
  held_out.push_back(make(3072, 12288, 3, "decode", 1, 8192));
  CalibrationResult r = calibrate(fit, hw);
  // Decode is bandwidth-bound: its bandwidth factor is well determined; prefill's compute factor likewise.
  CHECK(r.decode.bandwidth_factor == Approx(truth.bandwidth_factor).epsilon(0.05));
  CHECK(r.prefill.compute_factor == Approx(truth.compute_factor).epsilon(0.05));
  CHECK(r.decode.calibrated);
  CHECK(r.prefill.calibrated);
  CHECK(r.max_abs_relative_error < 0.08);
  HardwareProfile fitted = hw;
  r.apply(fitted);
  for (double e : relative_errors(held_out, fitted)) CHECK(std::fabs(e) < 0.08);
  // The profile written with the fitted coefficients reads back the same.
  HardwareProfile again = HardwareProfile::from_json(fitted.to_json(), "round trip");
  CHECK(again.decode_efficiency.bandwidth_factor == Approx(r.decode.bandwidth_factor));
  CHECK(again.prefill_efficiency.compute_factor == Approx(r.prefill.compute_factor));
  CHECK(again.prefill_efficiency.calibrated);
  CHECK_THROWS_AS(calibrate({fit[0], fit[1]}, hw), mp::Error);
}
