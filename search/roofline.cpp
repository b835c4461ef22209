// Roofline time model and its least-squares calibration. A step's time is modelled as a non-negative sum of
// terms (search.h, Efficiency): bytes streamed, bytes of KV cache and bytes of Mamba state over the bandwidth;
// GEMM, attention and scan FLOPs over the tensor-core peak, each with its own efficiency; for decode, what
// grouped-query attention costs beyond one read of the cache (the KV bytes again, and a time per cached
// position); a fixed time per layer of each type and per step (kernel launches, small ops). A sum rather than a
// max, so that it is linear in the coefficients and can be fitted by least squares from measured steps; decode is
// dominated by the byte terms, the grouped-attention terms at long context, and the per-layer times; prefill by
// the FLOP terms.
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
void count_layers(const Shape& s, StepCost& c) {
  c.mamba_layers = s.n_mamba;
  c.attention_layers = s.n_attention;
  c.mlp_layers = s.n_mlp + s.n_moe;
}
}  // namespace

StepCost decode_step_cost(const Shape& s, const InferenceSetup& u, int64_t position) {
  const ParamCounts p = count_params(s);
  const double B = static_cast<double>(u.batch), pos = static_cast<double>(position);
  const double wb = dtype_bytes(u.weights);
  StepCost c;
  // Every weight but the embedding table is read once per step; the table only for the B rows looked up.
  // MoE layers read only the experts the batch's tokens are routed to (expected count under uniform routing).
  const double untouched = s.n_moe ? static_cast<double>(s.n_moe) * (static_cast<double>(s.experts) - moe_experts_touched(s, B)) *
                                         static_cast<double>(moe_expert_params(s))
                                   : 0.0;
  c.stream_bytes = (static_cast<double>(p.total() - p.embeddings) - untouched) * wb + B * static_cast<double>(s.hidden) * wb;
  // The KV cache up to `position` is read; one new K/V row written. Conv and SSM state read and written back.
  c.kv_bytes = static_cast<double>(s.n_attention) * 2.0 * B * (pos + 1) * static_cast<double>(s.kv_heads * s.head_dim) *
               dtype_bytes(u.kv_cache);
  c.state_bytes = 2.0 * state_bytes(s, u);
  // Several query heads per KV head: the measured decode attention (a batched matmul of each query group against
  // its cached K and V) reads the cache at a lower rate and takes a time per cached position that does not
  // shrink with the batch or grow with the group size (search/MEMORY_MODEL.md); one query head per KV head runs
  // as a matrix-vector product without either cost.
  if (s.n_attention > 0 && s.attention_heads > s.kv_heads) {
    c.grouped_kv_bytes = c.kv_bytes;
    c.grouped_positions = static_cast<double>(s.n_attention) * (pos + 1);
  }
  c.gemm_flops = 2.0 * B * static_cast<double>(p.matmul());
  c.attention_flops =
      static_cast<double>(s.n_attention) * 4.0 * B * (pos + 1) * static_cast<double>(s.attention_heads * s.head_dim);
  c.scan_flops = static_cast<double>(s.n_mamba) * B * 6.0 * static_cast<double>(s.mamba_heads * s.mamba_head_dim * s.state);
  count_layers(s, c);
  return c;
}

StepCost prefill_cost(const Shape& s, const InferenceSetup& u, int64_t tokens) {
  const ParamCounts p = count_params(s);
  const double B = static_cast<double>(u.batch), n = static_cast<double>(tokens), T = B * n;
  const double a = dtype_bytes(u.activations);
  StepCost c;
  // Matmuls over all tokens; the LM head only for the last position of each sequence.
  c.gemm_flops = 2.0 * T * static_cast<double>(p.matmul() - p.lm_head) + 2.0 * B * static_cast<double>(p.lm_head);
  // Causal attention: QK^T and PV over half the square.
  c.attention_flops =
      static_cast<double>(s.n_attention) * 2.0 * B * n * n * static_cast<double>(s.attention_heads * s.head_dim);
  // Chunked SSD scan per token: the intra-chunk C.B^T and its product with x, plus chunk-state passing.
  const double Q = static_cast<double>(s.chunk_size);
  c.scan_flops = static_cast<double>(s.n_mamba) * T *
                 (2.0 * Q * static_cast<double>(s.n_groups * s.state) + 2.0 * Q * static_cast<double>(s.d_inner()) +
                  4.0 * static_cast<double>(s.d_inner() * s.state));
  const double untouched = s.n_moe ? static_cast<double>(s.n_moe) * (static_cast<double>(s.experts) - moe_experts_touched(s, T)) *
                                         static_cast<double>(moe_expert_params(s))
                                   : 0.0;
  c.stream_bytes = (static_cast<double>(p.total() - p.embeddings) - untouched) * dtype_bytes(u.weights);
  // Activation traffic: each layer reads and writes the hidden stream and its own intermediate.
  const double mamba_width = static_cast<double>(2 * s.d_inner() + 2 * s.n_groups * s.state + s.mamba_heads);
  const double attn_width = static_cast<double>((s.attention_heads + 2 * s.kv_heads) * s.head_dim);
  c.stream_bytes += T * a *
                    (static_cast<double>(s.layers()) * 4.0 * static_cast<double>(s.hidden) +
                     static_cast<double>(s.n_mamba) * 2.0 * mamba_width +
                     static_cast<double>(s.n_attention) * 2.0 * attn_width +
                     static_cast<double>(s.n_mlp) * 2.0 * static_cast<double>(s.ffn));
  // The KV cache and the final states written.
  c.kv_bytes = static_cast<double>(s.n_attention) * 2.0 * T * static_cast<double>(s.kv_heads * s.head_dim) *
               dtype_bytes(u.kv_cache);
  c.state_bytes = state_bytes(s, u);
  count_layers(s, c);
  c.prefill = true;
  return c;
}

namespace {
// The terms of Efficiency, in this order.
enum Term { kStream, kKv, kState, kGroupedKv, kGroupedPositions, kGemm, kAttention, kScan, kMambaLayers,
            kAttentionLayers, kMlpLayers, kStep, kTerms };
using Terms = Eigen::Matrix<double, kTerms, 1>;

// The regressors of a step: each term's quantity, so that seconds = coefficients . terms.
Terms step_terms(const StepCost& c, const HardwareProfile& hw, DType weights) {
  const double bw = hw.bandwidth_bytes_per_s, peak = hw.peak_flops(weights);
  Terms t;
  t << c.stream_bytes / bw, c.kv_bytes / bw, c.state_bytes / bw, c.grouped_kv_bytes / bw, c.grouped_positions,
      c.gemm_flops / peak, c.attention_flops / peak, c.scan_flops / peak, static_cast<double>(c.mamba_layers),
      static_cast<double>(c.attention_layers), static_cast<double>(c.mlp_layers), 1.0;
  return t;
}

Terms coefficients(const Efficiency& e) {
  Terms k;
  k << e.bandwidth_factor, e.cache_factor, e.state_factor, e.grouped_kv_factor, e.grouped_position_s,
      e.compute_factor, e.attention_factor, e.scan_factor, e.mamba_layer_s, e.attention_layer_s, e.mlp_layer_s,
      e.step_s;
  return k;
}

void set_coefficients(Efficiency& e, const Terms& k) {
  e.bandwidth_factor = k[kStream], e.cache_factor = k[kKv], e.state_factor = k[kState];
  e.grouped_kv_factor = k[kGroupedKv], e.grouped_position_s = k[kGroupedPositions];
  e.compute_factor = k[kGemm], e.attention_factor = k[kAttention], e.scan_factor = k[kScan];
  e.mamba_layer_s = k[kMambaLayers], e.attention_layer_s = k[kAttentionLayers], e.mlp_layer_s = k[kMlpLayers];
  e.step_s = k[kStep];
}
}  // namespace

double step_seconds(const StepCost& c, const HardwareProfile& hw, DType weights) {
  const Efficiency& e = c.prefill ? hw.prefill_efficiency : hw.decode_efficiency;
  return coefficients(e).dot(step_terms(c, hw, weights));
}

std::string Workload::text() const {
  auto fmt = [](int64_t n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); };
  return fmt(input_tokens) + "-in," + fmt(output_tokens) + "-out";
}

Workload parse_workload(const std::string& text) {
  Workload w;
  bool have_in = false, have_out = false;
  for (const std::string& item : comma_separated_items(text)) {
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
  // The time is linear in the terms, so the mean of the first and last step's time is exact.
  const double first = step_seconds(decode_step_cost(s, u, w.input_tokens), hw, u.weights);
  const double last = step_seconds(decode_step_cost(s, u, w.input_tokens + w.output_tokens - 1), hw, u.weights);
  t.decode_s = static_cast<double>(w.output_tokens) * (first + last) / 2;
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
Terms sample_terms(const TimingSample& t, const HardwareProfile& hw) {
  InferenceSetup u;
  u.batch = t.batch;
  u.weights = t.weights;
  u.kv_cache = t.kv_cache;
  Shape s = Shape::of(t.config);
  StepCost c = t.phase == "decode" ? decode_step_cost(s, u, t.position) : prefill_cost(s, u, t.tokens);
  return step_terms(c, hw, t.weights);
}
}  // namespace

std::vector<double> relative_errors(const std::vector<TimingSample>& samples, const HardwareProfile& hw) {
  std::vector<double> out;
  for (auto& t : samples) {
    const Efficiency& e = t.phase == "prefill" ? hw.prefill_efficiency : hw.decode_efficiency;
    const double predicted = coefficients(e).dot(sample_terms(t, hw));
    out.push_back((predicted - t.seconds) / t.seconds);
  }
  return out;
}

std::vector<double> nnls(const std::vector<std::vector<double>>& rows, const std::vector<double>& b) {
  const int m = static_cast<int>(rows.size());
  MP_CHECK(m > 0 && static_cast<int>(b.size()) == m, "nnls: ", m, " rows and ", b.size(), " right-hand sides");
  const int n = static_cast<int>(rows[0].size());
  Eigen::MatrixXd A(m, n);
  for (int i = 0; i < m; ++i) {
    MP_CHECK(static_cast<int>(rows[static_cast<size_t>(i)].size()) == n, "nnls: rows differ in length");
    for (int j = 0; j < n; ++j) A(i, j) = rows[static_cast<size_t>(i)][static_cast<size_t>(j)];
  }
  Eigen::VectorXd y = Eigen::Map<const Eigen::VectorXd>(b.data(), m);
  // Columns scaled to unit norm (the terms differ by orders of magnitude); all-zero columns stay at 0.
  Eigen::VectorXd scale = Eigen::VectorXd::Ones(n);
  for (int j = 0; j < n; ++j) {
    const double norm = A.col(j).norm();
    if (norm > 0) scale[j] = norm, A.col(j) /= norm;
  }
  // Lawson-Hanson: grow the passive set by the column of largest gradient; when the unconstrained solution on
  // it leaves the orthant, step back to the boundary and drop the columns that reached zero.
  std::vector<bool> passive(static_cast<size_t>(n), false);
  Eigen::VectorXd x = Eigen::VectorXd::Zero(n);
  auto solve_passive = [&](Eigen::VectorXd& z) {
    std::vector<int> cols;
    for (int j = 0; j < n; ++j)
      if (passive[static_cast<size_t>(j)]) cols.push_back(j);
    Eigen::MatrixXd P(m, static_cast<int>(cols.size()));
    for (size_t k = 0; k < cols.size(); ++k) P.col(static_cast<int>(k)) = A.col(cols[k]);
    Eigen::VectorXd sol = P.colPivHouseholderQr().solve(y);
    z.setZero(n);
    for (size_t k = 0; k < cols.size(); ++k) z[cols[k]] = sol[static_cast<int>(k)];
  };
  const double tol = 1e-12 * std::max(1.0, (A.transpose() * y).cwiseAbs().maxCoeff());
  for (int outer = 0; outer < 3 * n + 10; ++outer) {
    Eigen::VectorXd w = A.transpose() * (y - A * x);
    int best = -1;
    for (int j = 0; j < n; ++j)
      if (!passive[static_cast<size_t>(j)] && w[j] > tol && (best < 0 || w[j] > w[best])) best = j;
    if (best < 0) break;
    passive[static_cast<size_t>(best)] = true;
    for (int inner = 0; inner < 3 * n + 10; ++inner) {
      Eigen::VectorXd z;
      solve_passive(z);
      bool inside = true;
      for (int j = 0; j < n; ++j)
        if (passive[static_cast<size_t>(j)] && z[j] <= 0) inside = false;
      if (inside) {
        x = z;
        break;
      }
      double alpha = 1.0;
      for (int j = 0; j < n; ++j)
        if (passive[static_cast<size_t>(j)] && z[j] <= 0) alpha = std::min(alpha, x[j] / (x[j] - z[j]));
      x += alpha * (z - x);
      for (int j = 0; j < n; ++j)
        if (passive[static_cast<size_t>(j)] && x[j] <= 1e-15) passive[static_cast<size_t>(j)] = false, x[j] = 0;
    }
  }
  std::vector<double> out(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) out[static_cast<size_t>(j)] = std::max(0.0, x[j]) / scale[j];
  return out;
}

namespace {
// What a fit solves for: each column is one free coefficient shared by its terms; the terms in `zero` are set to
// 0; every other term is held at the profile's coefficient (its contribution is subtracted from the measured time).
struct FitSpec {
  std::vector<std::vector<int>> columns;
  std::vector<int> zero;
};

FitSpec fit_spec(RooflineForm form, bool prefill) {
  if (form == RooflineForm::Combined)  // all bytes, all FLOPs, all layers
    return {{{kStream, kKv, kState}, {kGemm, kAttention, kScan}, {kMambaLayers, kAttentionLayers, kMlpLayers}},
            {kGroupedKv, kGroupedPositions, kStep}};
  if (prefill)  // the cache is only written in prefill (KV and final state): one factor for both
    return {{{kStream}, {kKv, kState}, {kGemm}, {kAttention}, {kScan}, {kMambaLayers}, {kAttentionLayers},
             {kMlpLayers}, {kStep}},
            {kGroupedKv, kGroupedPositions}};
  // Decode: memory-bound; the FLOP terms are held at the profile's factors.
  return {{{kStream}, {kKv}, {kState}, {kGroupedKv}, {kGroupedPositions}, {kMambaLayers}, {kAttentionLayers},
           {kMlpLayers}, {kStep}},
          {}};
}

// The coefficients of one phase: rows weighted by 1 / measured seconds, so the residual is the relative error.
Efficiency fit_phase(const std::vector<const TimingSample*>& samples, const HardwareProfile& hw, RooflineForm form,
                     bool prefill) {
  const Efficiency& prior = prefill ? hw.prefill_efficiency : hw.decode_efficiency;
  const FitSpec spec = fit_spec(form, prefill);
  Terms held = coefficients(prior);
  for (const auto& col : spec.columns)
    for (int j : col) held[j] = 0;
  for (int j : spec.zero) held[j] = 0;
  std::vector<std::vector<double>> rows;
  std::vector<double> rhs;
  for (const TimingSample* t : samples) {
    const Terms x = sample_terms(*t, hw);
    std::vector<double> row;
    for (const auto& col : spec.columns) {
      double v = 0;
      for (int j : col) v += x[j];
      row.push_back(v / t->seconds);
    }
    rows.push_back(std::move(row));
    rhs.push_back(1.0 - held.dot(x) / t->seconds);
  }
  const std::vector<double> k = nnls(rows, rhs);
  Terms all = held;
  for (size_t c = 0; c < spec.columns.size(); ++c)
    for (int j : spec.columns[c]) all[j] = k[c];
  Efficiency e = prior;
  set_coefficients(e, all);
  e.calibrated = true;
  return e;
}

std::string percent_of_peak(double factor) {
  if (factor <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 / factor);
  return buf;
}
}  // namespace

CalibrationResult calibrate(const std::vector<TimingSample>& samples, const HardwareProfile& hw, RooflineForm form) {
  MP_CHECK(samples.size() >= 3, "calibration needs at least 3 timed steps (decode and prefill of a few shapes), found ",
           samples.size());
  CalibrationResult out;
  out.form = form;
  out.decode = hw.decode_efficiency;
  out.prefill = hw.prefill_efficiency;
  for (const char* phase : {"decode", "prefill"}) {
    std::vector<const TimingSample*> rows;
    for (auto& t : samples)
      if (t.phase == phase) rows.push_back(&t);
    if (rows.size() < 3) continue;
    const bool prefill = std::string(phase) == "prefill";
    Efficiency e = fit_phase(rows, hw, form, prefill);
    char grouped[160] = "";
    if (!prefill)
      std::snprintf(grouped, sizeof grouped,
                    ", grouped-query attention +%.2fx the KV bytes and %.1f ns per cached position per layer",
                    e.grouped_kv_factor, e.grouped_position_s * 1e9);
    char note[700];
    std::snprintf(note, sizeof note,
                  "%s: non-negative least squares over %zu timed steps (%s form): streamed bytes at %s of bandwidth, "
                  "KV cache at %s, state at %s%s; GEMM at %s of peak, attention at %s, scan at %s%s; per layer "
                  "%.2f us (Mamba) / %.2f us (attention) / %.2f us (MLP); %.2f us per step",
                  phase, rows.size(), form == RooflineForm::Split ? "split" : "combined",
                  percent_of_peak(e.bandwidth_factor).c_str(), percent_of_peak(e.cache_factor).c_str(),
                  percent_of_peak(e.state_factor).c_str(), grouped, percent_of_peak(e.compute_factor).c_str(),
                  percent_of_peak(e.attention_factor).c_str(), percent_of_peak(e.scan_factor).c_str(),
                  form == RooflineForm::Split && !prefill ? " (held at the profile's, not fitted)" : "",
                  e.mamba_layer_s * 1e6, e.attention_layer_s * 1e6, e.mlp_layer_s * 1e6, e.step_s * 1e6);
    e.calibration_note = note;
    (std::string(phase) == "decode" ? out.decode : out.prefill) = e;
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
  return {{"form", form == RooflineForm::Split ? "split" : "combined"},
          {"decode", decode.to_json()},
          {"prefill", prefill.to_json()},
          {"relative_errors", relative_errors},
          {"max_abs_relative_error", max_abs_relative_error},
          {"mean_abs_relative_error", mean_abs_relative_error}};
}

}  // namespace mp::search
