// Roofline time model and its least-squares calibration. A step's time is modelled as
//   t = f_bw * bytes / bandwidth + f_c * flops / peak + t_layer * layers
// (a sum rather than a max, so that it is linear in the three coefficients and can be fitted by least
// squares from measured steps; decode is dominated by the bytes term, prefill by the flops term).
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "minipuzzle/error.h"
#include "minipuzzle/search.h"

namespace mp::search {

namespace {
double state_bytes(const Shape& s, const InferenceSetup& u) {
  const double B = static_cast<double>(u.batch);
  return static_cast<double>(s.n_mamba) * B *
         (static_cast<double>((s.conv_kernel - 1) * s.conv_dim()) * dtype_bytes(u.conv_state) +
          static_cast<double>(s.mamba_heads * s.mamba_head_dim * s.state) * dtype_bytes(u.ssm_state));
}
}  // namespace

StepCost decode_step_cost(const Shape& s, const InferenceSetup& u, int64_t position) {
  const ParamCounts p = count_params(s);
  const double B = static_cast<double>(u.batch), pos = static_cast<double>(position);
  const double wb = dtype_bytes(u.weights);
  StepCost c;
  // Every weight but the embedding table is read once per step; the table only for the B rows looked up.
  c.bytes = static_cast<double>(p.total() - p.embeddings) * wb + B * static_cast<double>(s.hidden) * wb;
  // The KV cache up to `position` is read; one new K/V row written.
  c.bytes += static_cast<double>(s.n_attention) * 2.0 * B * (pos + 1) * static_cast<double>(s.kv_heads * s.head_dim) *
             dtype_bytes(u.kv_cache);
  c.bytes += 2.0 * state_bytes(s, u);  // conv and SSM state read and written back
  c.flops = 2.0 * B * static_cast<double>(p.matmul());
  c.flops += static_cast<double>(s.n_attention) * 4.0 * B * (pos + 1) * static_cast<double>(s.attention_heads * s.head_dim);
  c.flops += static_cast<double>(s.n_mamba) * B * 6.0 * static_cast<double>(s.mamba_heads * s.mamba_head_dim * s.state);
  c.layers = s.layers();
  return c;
}

StepCost prefill_cost(const Shape& s, const InferenceSetup& u, int64_t tokens) {
  const ParamCounts p = count_params(s);
  const double B = static_cast<double>(u.batch), n = static_cast<double>(tokens), T = B * n;
  const double a = dtype_bytes(u.activations);
  StepCost c;
  // Matmuls over all tokens; the LM head only for the last position of each sequence.
  c.flops = 2.0 * T * static_cast<double>(p.matmul() - p.lm_head) + 2.0 * B * static_cast<double>(p.lm_head);
  // Causal attention: QK^T and PV over half the square.
  c.flops += static_cast<double>(s.n_attention) * 2.0 * B * n * n * static_cast<double>(s.attention_heads * s.head_dim);
  // Chunked SSD scan per token: the intra-chunk C.B^T and its product with x, plus chunk-state passing.
  const double Q = static_cast<double>(s.chunk_size);
  c.flops += static_cast<double>(s.n_mamba) * T *
             (2.0 * Q * static_cast<double>(s.n_groups * s.state) + 2.0 * Q * static_cast<double>(s.d_inner()) +
              4.0 * static_cast<double>(s.d_inner() * s.state));
  c.bytes = static_cast<double>(p.total() - p.embeddings) * dtype_bytes(u.weights);
  // Activation traffic: each layer reads and writes the hidden stream and its own intermediate.
  const double mamba_width = static_cast<double>(2 * s.d_inner() + 2 * s.n_groups * s.state + s.mamba_heads);
  const double attn_width = static_cast<double>((s.attention_heads + 2 * s.kv_heads) * s.head_dim);
  c.bytes += T * a *
             (static_cast<double>(s.layers()) * 4.0 * static_cast<double>(s.hidden) +
              static_cast<double>(s.n_mamba) * 2.0 * mamba_width + static_cast<double>(s.n_attention) * 2.0 * attn_width +
              static_cast<double>(s.n_mlp) * 2.0 * static_cast<double>(s.ffn));
  c.bytes += static_cast<double>(s.n_attention) * 2.0 * T * static_cast<double>(s.kv_heads * s.head_dim) *
             dtype_bytes(u.kv_cache);
  c.bytes += state_bytes(s, u);
  c.layers = s.layers();
  c.prefill = true;
  return c;
}

double step_seconds(const StepCost& c, const HardwareProfile& hw, DType weights) {
  const Efficiency& e = c.prefill ? hw.prefill_efficiency : hw.decode_efficiency;
  return e.bandwidth_factor * c.bytes / hw.bandwidth_bytes_per_s + e.compute_factor * c.flops / hw.peak_flops(weights) +
         e.layer_overhead_s * static_cast<double>(c.layers);
}

std::string Workload::text() const {
  auto fmt = [](int64_t n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); };
  return fmt(input_tokens) + "-in," + fmt(output_tokens) + "-out";
}

Workload parse_workload(const std::string& text) {
  Workload w;
  bool have_in = false, have_out = false;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (item.empty()) continue;
    size_t dash = item.rfind('-');
    MP_CHECK(dash != std::string::npos, "workload \"", text, "\": expected items like 8k-in and 16k-out");
    std::string what = item.substr(dash + 1);
    int64_t n = parse_token_count(item.substr(0, dash));
    if (what == "in") w.input_tokens = n, have_in = true;
    else if (what == "out") w.output_tokens = n, have_out = true;
    else fail("workload \"", text, "\": \"", item, "\" must end in -in or -out");
  }
  MP_CHECK(have_in && have_out, "workload \"", text, "\": give both input and output tokens, e.g. 8k-in,16k-out");
  return w;
}

json Throughput::to_json() const {
  return {{"prefill_s", prefill_s},
          {"decode_s", decode_s},
          {"output_tokens_per_s", output_tokens_per_s},
          {"decode_tokens_per_s", decode_tokens_per_s}};
}

Throughput predict_throughput(const Shape& s, const InferenceSetup& u, const HardwareProfile& hw, const Workload& w) {
  Throughput t;
  t.prefill_s = step_seconds(prefill_cost(s, u, w.input_tokens), hw, u.weights);
  // Decode cost is affine in the position, so the sum over positions I..I+O-1 is O steps at the mean position.
  StepCost mid = decode_step_cost(s, u, w.input_tokens);
  StepCost last = decode_step_cost(s, u, w.input_tokens + w.output_tokens - 1);
  StepCost mean{(mid.bytes + last.bytes) / 2, (mid.flops + last.flops) / 2, mid.layers, false};
  t.decode_s = static_cast<double>(w.output_tokens) * step_seconds(mean, hw, u.weights);
  const double out = static_cast<double>(u.batch) * static_cast<double>(w.output_tokens);
  t.output_tokens_per_s = out / (t.prefill_s + t.decode_s);
  t.decode_tokens_per_s = out / t.decode_s;
  return t;
}

// ------------------------------------------------------------------------------------------- calibration

std::vector<TimingSample> load_timings(const std::string& path) {
  json j = read_json_file(path);
  MP_CHECK(j.is_object() && j.contains("samples") && j.at("samples").is_array(), path,
           ": expected {\"samples\": [...]} (timings written by scripts/gpu/search.sh or bench_model_serving)");
  std::vector<TimingSample> out;
  for (auto& e : j.at("samples")) {
    TimingSample t;
    std::string what = path + " sample " + std::to_string(out.size());
    if (e.contains("config")) t.config = ModelConfig::from_json(e.at("config"), what);
    else if (e.contains("config_path")) t.config = load_config(e.at("config_path").get<std::string>());
    else fail(what, ": needs \"config\" (a config.json object) or \"config_path\"");
    t.phase = e.value("phase", std::string());
    MP_CHECK(t.phase == "decode" || t.phase == "prefill", what, ": phase must be \"decode\" or \"prefill\", found \"",
             t.phase, "\"");
    t.batch = e.value("batch", int64_t{1});
    t.position = e.value("position", int64_t{0});
    t.tokens = e.value("tokens", int64_t{0});
    if (e.contains("weights_dtype")) t.weights = parse_dtype(e.at("weights_dtype").get<std::string>());
    if (e.contains("kv_cache_dtype")) t.kv_cache = parse_dtype(e.at("kv_cache_dtype").get<std::string>());
    t.seconds = json_to_double(e.at("seconds"), what + " seconds");
    MP_CHECK(t.seconds > 0, what, ": seconds must be positive");
    MP_CHECK(t.phase != "prefill" || t.tokens > 0, what, ": a prefill sample needs tokens > 0");
    t.label = e.value("label", std::string());
    out.push_back(std::move(t));
  }
  MP_CHECK(!out.empty(), path, ": no samples");
  return out;
}

namespace {
// The three regressors of one sample: bytes/bandwidth, flops/peak, layers.
Eigen::Vector3d features(const TimingSample& t, const HardwareProfile& hw) {
  InferenceSetup u;
  u.batch = t.batch;
  u.weights = t.weights;
  u.kv_cache = t.kv_cache;
  Shape s = Shape::of(t.config);
  StepCost c = t.phase == "decode" ? decode_step_cost(s, u, t.position) : prefill_cost(s, u, t.tokens);
  return {c.bytes / hw.bandwidth_bytes_per_s, c.flops / hw.peak_flops(t.weights), static_cast<double>(c.layers)};
}
}  // namespace

std::vector<double> relative_errors(const std::vector<TimingSample>& samples, const HardwareProfile& hw) {
  std::vector<double> out;
  for (auto& t : samples) {
    Eigen::Vector3d x = features(t, hw);
    const Efficiency& e = t.phase == "prefill" ? hw.prefill_efficiency : hw.decode_efficiency;
    double predicted = e.bandwidth_factor * x[0] + e.compute_factor * x[1] + e.layer_overhead_s * x[2];
    out.push_back((predicted - t.seconds) / t.seconds);
  }
  return out;
}

namespace {
// Non-negative least squares over three columns by enumerating which columns are free (7 subsets, exact):
// the best solution whose coefficients are all >= 0. Rows are weighted by 1 / measured seconds, so the
// residual is the relative error (timings span orders of magnitude).
Eigen::Vector3d fit_phase(const std::vector<const TimingSample*>& rows, const HardwareProfile& hw) {
  const int n = static_cast<int>(rows.size());
  Eigen::MatrixXd X(n, 3);
  Eigen::VectorXd y = Eigen::VectorXd::Ones(n);
  for (int i = 0; i < n; ++i) X.row(i) = features(*rows[static_cast<size_t>(i)], hw).transpose() / rows[static_cast<size_t>(i)]->seconds;
  Eigen::Vector3d best = Eigen::Vector3d::Zero();
  double best_residual = y.squaredNorm();
  for (int mask = 1; mask < 8; ++mask) {
    std::vector<int> cols;
    for (int k = 0; k < 3; ++k)
      if (mask & (1 << k)) cols.push_back(k);
    Eigen::MatrixXd A(n, static_cast<int>(cols.size()));
    for (size_t k = 0; k < cols.size(); ++k) A.col(static_cast<int>(k)) = X.col(cols[k]);
    Eigen::VectorXd coef = A.colPivHouseholderQr().solve(y);
    if ((coef.array() < 0).any() || !coef.allFinite()) continue;
    double r = (A * coef - y).squaredNorm();
    if (r < best_residual) {
      best_residual = r;
      best.setZero();
      for (size_t k = 0; k < cols.size(); ++k) best[cols[k]] = coef[static_cast<int>(k)];
    }
  }
  return best;
}
}  // namespace

CalibrationResult calibrate(const std::vector<TimingSample>& samples, const HardwareProfile& hw) {
  MP_CHECK(samples.size() >= 3, "calibration needs at least 3 timed steps (decode and prefill of a few shapes), found ",
           samples.size());
  CalibrationResult out;
  out.decode = hw.decode_efficiency;
  out.prefill = hw.prefill_efficiency;
  for (const char* phase : {"decode", "prefill"}) {
    std::vector<const TimingSample*> rows;
    for (auto& t : samples)
      if (t.phase == phase) rows.push_back(&t);
    if (rows.size() < 3) continue;
    Eigen::Vector3d c = fit_phase(rows, hw);
    Efficiency& e = std::string(phase) == "decode" ? out.decode : out.prefill;
    e.bandwidth_factor = c[0];
    e.compute_factor = c[1];
    e.layer_overhead_s = c[2];
    e.calibrated = true;
    char note[200];
    std::snprintf(note, sizeof note,
                  "%s: least squares over %zu timed steps: %.0f%% of bandwidth, %.0f%% of peak, %.2f us/layer", phase,
                  rows.size(), c[0] > 0 ? 100.0 / c[0] : 0.0, c[1] > 0 ? 100.0 / c[1] : 0.0, c[2] * 1e6);
    e.calibration_note = note;
  }
  HardwareProfile fitted = hw;
  out.apply(fitted);
  out.relative_errors = relative_errors(samples, fitted);
  for (double e : out.relative_errors) {
    out.max_abs_relative_error = std::max(out.max_abs_relative_error, std::fabs(e));
    out.mean_abs_relative_error += std::fabs(e) / static_cast<double>(samples.size());
  }
  return out;
}

json CalibrationResult::to_json() const {
  auto one = [](const Efficiency& e) {
    return json{{"bandwidth_factor", e.bandwidth_factor}, {"compute_factor", e.compute_factor},
                {"layer_overhead_us", e.layer_overhead_s * 1e6}, {"calibrated", e.calibrated},
                {"note", e.calibration_note}};
  };
  return {{"decode", one(decode)},
          {"prefill", one(prefill)},
          {"relative_errors", relative_errors},
          {"max_abs_relative_error", max_abs_relative_error},
          {"mean_abs_relative_error", mean_abs_relative_error}};
}

}  // namespace mp::search
