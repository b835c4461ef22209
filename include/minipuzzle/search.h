// Memory-constrained architecture search: which pruned students of a Nemotron-H parent fit a GPU at a context
// length, why the others do not, how fast each would run (roofline), and which to try first (ranking in
// stages, as NVIDIA's Minitron-SSM / MiniPuzzle / Nemotron Nano 2 did).
//
// Search and pruning meet only through a target shape: every candidate is a full ModelConfig plus the indices
// of the parent's layers to drop; the pruner realises it. Formulas: search/MEMORY_MODEL.md.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"
#include "minipuzzle/prune_target.h"
#include "minipuzzle/scores.h"

namespace mp::search {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// ---------------------------------------------------------------- dtypes
enum class DType { F32, BF16, F16, FP8, FP4 };
double dtype_bytes(DType dtype);  // 4, 2, 2, 1, 0.5
const char* dtype_name(DType dtype);
DType parse_dtype(const std::string& text);  // float32/fp32, bfloat16/bf16, float16/fp16, fp8/e4m3, fp4/nvfp4

// ---------------------------------------------------------------- hardware
// Coefficients of the roofline time model (see search/MEMORY_MODEL.md), fitted by non-negative least squares to
// steps timed on the device: seconds =
//     bandwidth_factor   * streamed bytes / bandwidth    (weights, and activations in prefill)
//   + cache_factor       * KV-cache bytes / bandwidth    (KV cache read/written)
//   + state_factor       * state bytes / bandwidth       (Mamba conv + SSM state read/written)
//   + grouped_kv_factor  * grouped KV bytes / bandwidth  (decode: the KV read again by grouped-query layers)
//   + grouped_position_s * grouped positions             (decode: attention layers x cached positions, grouped)
//   + compute_factor     * GEMM FLOPs / peak             (every projection and the LM head)
//   + attention_factor   * attention FLOPs / peak        (QK and PV over the cached positions)
//   + scan_factor        * scan FLOPs / peak             (SSD chunked scan / recurrent state update)
//   + mamba_layer_s * Mamba layers + attention_layer_s * attention layers + mlp_layer_s * MLP layers
//   + step_s                                             (kernel launches and small ops; fixed per step)
// Decode and prefill steps have their own set (their kernels reach different fractions of the peaks).
// "Grouped" layers have several query heads per KV head; the two grouped terms are what the measured ATen decode
// attention (batched matmuls of the query group against the cache) costs beyond reading the cache once. They
// default to 0: a decode kernel that splits the positions over the GPU (flash-decoding) has no such cost.
struct Efficiency {
  double bandwidth_factor = 1.0 / 0.75;  // 1 / achieved fraction of the memory bandwidth
  double cache_factor = 1.0 / 0.75;
  double state_factor = 1.0 / 0.75;
  double grouped_kv_factor = 0;
  double grouped_position_s = 0;          // seconds per cached position per grouped attention layer
  double compute_factor = 1.0 / 0.55;    // 1 / achieved fraction of the tensor-core peak
  double attention_factor = 1.0 / 0.55;
  double scan_factor = 1.0 / 0.55;
  double mamba_layer_s = 8e-6, attention_layer_s = 8e-6, mlp_layer_s = 8e-6;  // per layer and step
  double step_s = 0;
  bool calibrated = false;
  std::string calibration_note;
  // Per-term fields (factors, *_us times). Older profiles' {"bandwidth_factor", "compute_factor",
  // "layer_overhead_us"} read as one factor for all bytes, one for all FLOPs, one time for every layer type.
  json to_json() const;
  static Efficiency from_json(const json& j, const std::string& what, Efficiency defaults);
};
// A memory reservation subtracted from the device before the model gets any: a fraction of the device
// (framework buffer, e.g. 5%) or fixed bytes (e.g. 1.3 GiB kept for a vision encoder).
struct Reservation {
  std::string name;
  double fraction = 0.0;
  double bytes = 0.0;
};

struct HardwareProfile {
  std::string name;
  std::string description;
  std::string source;
  double memory_bytes = 0;
  double bandwidth_bytes_per_s = 0;
  double bf16_flops = 0;
  double fp8_flops = 0;  // 0: not supported in tensor cores (falls back to bf16)
  double fp4_flops = 0;
  std::vector<Reservation> reservations;
  Efficiency decode_efficiency;
  Efficiency prefill_efficiency;

  double peak_flops(DType compute) const;  // the tensor-core peak for weights of this dtype
  json to_json() const;
  static HardwareProfile from_json(const json& j, const std::string& what);
};

// A name ("a10g", looked up in configs/hardware/) or a path to a profile JSON. Search order for names:
// $MINIPUZZLE_CONFIGS/hardware, ./configs/hardware, the source tree's configs/hardware.
HardwareProfile load_hardware(const std::string& name_or_path);
std::string find_config_file(const std::string& kind, const std::string& name_or_path);  // kind: hardware|models
// The JSON files of the first of those directories that has any (paths, sorted).
std::vector<std::string> list_config_files(const std::string& kind);
// "5%", "framework=5%", "vision=1.3GiB", "512MiB", "2GB"; comma-separated lists give several.
std::vector<Reservation> parse_reservations(const std::string& text);
// "131072", "128k" (x1024), "1M" (x1024^2), "1000000". Decimal millions must be written out.
int64_t parse_token_count(const std::string& text);
// The non-empty items of a comma-separated list ("a,,b," gives a and b), as the list flags above are written.
std::vector<std::string> comma_separated_items(const std::string& text);

// The memory the model may use: device minus reservations, or an explicit budget (which then replaces them).
struct Budget {
  double device_bytes = 0;
  std::vector<Reservation> reservations;
  std::optional<double> explicit_bytes;
  double usable_bytes() const;
  json to_json() const;
};
Budget make_budget(const HardwareProfile& hw, const std::vector<Reservation>& extra,
                   std::optional<double> explicit_gib);

// ---------------------------------------------------------------- shapes and memory
// The numbers of a Nemotron-H shape that size its tensors; from a ModelConfig or built directly by the search.
struct Shape {
  int64_t vocab = 0, hidden = 0, ffn = 0;
  int64_t n_mamba = 0, n_attention = 0, n_mlp = 0, n_moe = 0;
  int64_t attention_heads = 0, kv_heads = 0, head_dim = 0;
  int64_t mamba_heads = 0, mamba_head_dim = 0, n_groups = 1, state = 0, conv_kernel = 4, chunk_size = 128;
  bool tied_embeddings = false, conv_bias = true, mamba_bias = false, mlp_bias = false;
  // MoE layers: routed experts (count, active per token, width), the shared expert's width, latent size (0: none).
  int64_t experts = 0, experts_per_token = 0, expert_ffn = 0, shared_ffn = 0, moe_latent = 0;
  int64_t layers() const { return n_mamba + n_attention + n_mlp + n_moe; }
  int64_t d_inner() const { return mamba_heads * mamba_head_dim; }
  int64_t conv_dim() const { return d_inner() + 2 * n_groups * state; }
  static Shape of(const ModelConfig& config);
};

// Parameters by tensor family (elements, not bytes).
struct ParamCounts {
  int64_t embeddings = 0, lm_head = 0, final_norm = 0, layer_norms = 0;
  int64_t mamba = 0, attention = 0, mlp = 0;
  // MoE layers: every expert (what memory holds) and what one token uses (its top-k experts, the shared expert,
  // router and latent projections: what throughput pays for); moe_routed is the routed experts' part of moe.
  int64_t moe = 0, moe_active = 0, moe_routed = 0;
  int64_t total() const { return embeddings + lm_head + final_norm + layer_norms + mamba + attention + mlp + moe; }
  int64_t active() const { return total() - moe + moe_active; }  // parameters one token touches
  // Parameters used by matrix multiplies each token (everything but the embedding gather and the norms).
  int64_t matmul() const { return lm_head + mamba + attention + mlp + moe_active; }
  json to_json() const;
};
ParamCounts count_params(const Shape& shape);
int64_t mamba_layer_params(const Shape& s);
int64_t attention_layer_params(const Shape& s);
int64_t mlp_layer_params(const Shape& s);
int64_t moe_expert_params(const Shape& s);        // one routed expert: up_proj and down_proj
int64_t moe_layer_params(const Shape& s);         // all experts, shared expert, router (+ bias), latent projections
int64_t moe_layer_active_params(const Shape& s);  // the same with experts_per_token routed experts
// Expected distinct experts a layer runs for `tokens` tokens routed uniformly: E (1 - (1 - k/E)^tokens).
double moe_experts_touched(const Shape& s, double tokens);

// How the model is served: the terms of the memory model follow from this and the shape.
struct InferenceSetup {
  int64_t context = 131072;  // tokens held per sequence (prompt + generated)
  int64_t batch = 1;
  DType weights = DType::BF16;
  DType kv_cache = DType::BF16;
  DType conv_state = DType::BF16;
  DType ssm_state = DType::F32;   // Nemotron Nano 2 configs keep the SSM cache in float32
  DType activations = DType::BF16;
  int64_t prefill_chunk = 2048;   // tokens per sequence per prefill step; 0 leaves activations out
  double runtime_margin_bytes = 0; // a stated fixed margin on top (allocator fragmentation, CUDA graphs)
  json to_json() const;
};

struct MemoryBreakdown {
  double weights = 0, kv_cache = 0, conv_state = 0, ssm_state = 0, activations = 0, runtime_margin = 0;
  double total() const { return weights + kv_cache + conv_state + ssm_state + activations + runtime_margin; }
  json to_json() const;  // bytes and GiB per term
};
MemoryBreakdown estimate_memory(const Shape& shape, const InferenceSetup& setup);
inline MemoryBreakdown estimate_memory(const ModelConfig& c, const InferenceSetup& s) {
  return estimate_memory(Shape::of(c), s);
}
// Peak live bytes of one prefill step of `tokens` tokens (all sequences together): the activation term.
double prefill_activation_bytes(const Shape& shape, int64_t tokens, int64_t batch, DType activations);

// ---------------------------------------------------------------- roofline
// Bytes moved and FLOPs of one step, by the kinds the time model weighs separately (see Efficiency).
struct StepCost {
  double stream_bytes = 0;  // weights read (and, in prefill, the activations written and read back)
  double kv_bytes = 0;      // KV cache read and written
  double state_bytes = 0;   // Mamba conv and SSM state read and written
  // Decode only: the KV bytes of the attention layers with several query heads per KV head (a subset of
  // kv_bytes), and those layers' cached positions summed over the layers (per step, not per sequence).
  double grouped_kv_bytes = 0, grouped_positions = 0;
  double gemm_flops = 0, attention_flops = 0, scan_flops = 0;
  int64_t mamba_layers = 0, attention_layers = 0, mlp_layers = 0;
  bool prefill = false;  // which efficiency set applies
  double cache_bytes() const { return kv_bytes + state_bytes; }
  double bytes() const { return stream_bytes + kv_bytes + state_bytes; }
  double flops() const { return gemm_flops + attention_flops + scan_flops; }
  int64_t layers() const { return mamba_layers + attention_layers + mlp_layers; }
};
StepCost decode_step_cost(const Shape& shape, const InferenceSetup& setup, int64_t position);  // one token/seq
StepCost prefill_cost(const Shape& shape, const InferenceSetup& setup, int64_t tokens);        // per batch
double step_seconds(const StepCost& cost, const HardwareProfile& hw, DType weights);

// "8k-in,16k-out" style: prompt and generated tokens per sequence.
struct Workload {
  int64_t input_tokens = 8192;
  int64_t output_tokens = 16384;
  std::string text() const;
};
Workload parse_workload(const std::string& text);

struct Throughput {
  double prefill_s = 0, decode_s = 0;
  double output_tokens_per_s = 0;  // batch * output tokens / (prefill + decode)
  double decode_tokens_per_s = 0;  // batch * output tokens / decode
  json to_json() const;
};
Throughput predict_throughput(const Shape& shape, const InferenceSetup& setup, const HardwareProfile& hw,
                              const Workload& workload);

// One measured step for calibration: a model config, what ran, and how long it took on the device.
struct TimingSample {
  ModelConfig config;
  std::string phase;  // "decode" (one token per sequence at `position`) or "prefill" (`tokens` per sequence)
  int64_t batch = 1, position = 0, tokens = 0;
  DType weights = DType::BF16, kv_cache = DType::BF16;
  double seconds = 0;
  std::string label;
};
// {"device": ..., "samples": [{"config": {...} | "config_path": "...", "phase", "batch", "position"|"tokens",
//  "seconds", "label"}]}
std::vector<TimingSample> load_timings(const std::string& path);
// The form of the time model fitted. Split: per phase nine free coefficients. Decode fits the weight stream, the
// KV cache, the Mamba state, the grouped-KV bytes and grouped positions, the three per-layer times and the step
// time; its FLOP terms are not fitted (a decode step is memory-bound: at the peak they are <= 2% of a measured step,
// so the timings cannot tell their factors apart from zero) and keep the profile's factors, so that compute still
// bounds large batches. Prefill fits the weight/activation stream, the cache writes (KV and state, one factor),
// GEMM, attention and scan FLOPs, the three per-layer times and the step time; its grouped terms are 0.
// Combined ties them back to three (one bandwidth factor for all bytes, one compute factor for all FLOPs, one
// overhead per layer of any type; no grouped or per-step term), the form before the split, kept for comparison.
enum class RooflineForm { Split, Combined };
struct CalibrationResult {
  RooflineForm form = RooflineForm::Split;
  Efficiency decode, prefill;  // a phase with fewer than 3 samples keeps the profile's coefficients
  std::vector<double> relative_errors;  // per sample: (predicted - measured) / measured
  double max_abs_relative_error = 0, mean_abs_relative_error = 0;
  json to_json() const;
  void apply(HardwareProfile& hw) const { hw.decode_efficiency = decode, hw.prefill_efficiency = prefill; }
};
// Non-negative least squares (Eigen, Lawson-Hanson) of seconds on the terms of the form, per phase, with rows
// weighted by 1 / measured seconds so that relative errors are minimised (timings span orders of magnitude).
CalibrationResult calibrate(const std::vector<TimingSample>& samples, const HardwareProfile& hw,
                            RooflineForm form = RooflineForm::Split);
// (predicted - measured) / measured per sample with the profile's coefficients.
std::vector<double> relative_errors(const std::vector<TimingSample>& samples, const HardwareProfile& hw);
// Non-negative least squares: min |A x - b| subject to x >= 0 (Lawson and Hanson's active-set method, Eigen),
// A given by rows.
std::vector<double> nnls(const std::vector<std::vector<double>>& rows, const std::vector<double>& b);

// ---------------------------------------------------------------- candidate space
struct IntRange {
  int64_t min = 0, max = 0, step = 1;
  std::vector<int64_t> extra;  // points off the grid that the range also holds (published shapes)
  IntRange() = default;
  IntRange(int64_t lo, int64_t hi, int64_t by) : min(lo), max(hi), step(by) {}
  std::vector<int64_t> values() const;  // min, min+step, ..., <= max, and the extra points; ascending
  bool contains(int64_t v) const {
    return (v >= min && v <= max && (v - min) % step == 0) || std::find(extra.begin(), extra.end(), v) != extra.end();
  }
};
IntRange parse_range(const std::string& text);  // "4480:5120:128", "4480-5120/128", "128" (single value)

// Depth either per layer type (counts of Mamba / attention / MLP layers to drop, as MiniPuzzle searched) or
// as a total count of layers to drop, taken from the global importance order (as Minitron / ModelOpt did).
struct SearchSpace {
  bool depth_per_type = true;
  IntRange drop_mamba{0, 0, 1}, drop_attention{0, 0, 1}, drop_mlp{0, 0, 1}, drop_moe{0, 0, 1};
  IntRange drop_total{0, 0, 1};  // used when !depth_per_type; also bounds the per-type sum when set (max > 0)
  bool bound_total = false;
  IntRange hidden, ffn, mamba_heads, mamba_head_dim, attention_heads;
  // MoE parents: routed experts kept per MoE layer (the same count in every layer, an equal share of every
  // n_group routing group; which experts go differs per layer), the routed experts' and the shared expert's FFN
  // widths. Single points (the parent's) for parents without MoE layers.
  IntRange experts, expert_ffn, shared_ffn;
  double min_params = 0, max_params = 0;  // 0: unbounded
  // Bounds on the active parameters (every weight one token uses: the top-k routed experts instead of all);
  // equal to the totals for a dense parent.
  double min_active_params = 0, max_active_params = 0;
  int64_t combinations() const;
  json to_json() const;
};
// NVIDIA's defaults: at most 40% of each width and 20% of the depth pruned; hidden in steps of 128, FFN 512,
// Mamba heads by n_groups, Mamba head_dim 8, attention heads by KV heads; per-type depth. MoE parents: routed
// experts in steps of 8 rounded to a multiple of n_group (and no lower than routing allows: num_experts_per_tok,
// topk_group groups' worth, 2 per group when grouped), expert and shared-expert widths in steps of 256 (grain 64).
// `hold`: shapes the grids must contain (published students, references; shapes that are not pruned forms of the
// parent are ignored). Per axis the step becomes the largest
// multiple of the hardware grain (64 channels for hidden and FFN, n_groups Mamba heads, 8 head_dim positions, the
// KV heads for attention heads) not above the default step that puts every held value on the grid (12B -> 9B:
// FFN 20480 - k * 320 holds 15680), the range reaching down to the smallest held value; a held value that no such
// step reaches is added as an extra point.
SearchSpace default_space(const ModelConfig& parent, const std::vector<ModelConfig>& hold = {});
// Why `experts` routed experts per MoE layer cannot be kept (empty when they can), by the pruner's rules: at most
// the parent's, a multiple of n_group, 2 per group when grouped, and num_experts_per_tok within the topk_group
// groups' experts.
std::string expert_count_problem(const ModelConfig& parent, int64_t experts);
// The published shapes in configs/models that are pruned forms of `parent` within the default space's reach
// (same vocabulary, KV heads, head_dim, groups, state and conv kernel; no axis larger than the parent's; at most
// 40% of any width and 20% of the layers removed), the parent itself excepted.
std::vector<std::pair<std::string, ModelConfig>> published_students(const ModelConfig& parent);

// ---------------------------------------------------------------- importance (stage 1 input)
// What the scoring stage measured, reduced to what the proxy needs. Any part may be empty (then that axis
// counts units kept, i.e. uniform importance). Unit scores need not be sorted.
struct ImportanceScores {
  std::vector<double> layer;            // per parent layer: higher = more important (e.g. logit MSE when removed)
  std::vector<double> hidden;           // per hidden channel
  std::vector<double> ffn;              // per FFN neuron (pooled over layers)
  std::vector<double> mamba_heads;      // per Mamba head (pooled over layers)
  std::vector<double> mamba_head_dim;   // per head_dim position
  std::vector<double> attention_heads;  // per query head
  std::vector<double> experts;          // MoE: per routed expert (pooled over layers)
  std::vector<double> expert_ffn;       // MoE: per channel of a routed expert (pooled over layers and experts)
  std::vector<double> shared_ffn;       // MoE: per shared-expert channel (pooled over layers)
  bool empty() const;
  // The proxy's view of the scoring stage's scores.json (read by read_scores, minipuzzle/scores.h): hidden
  // scores, per-layer MLP / attention / Mamba unit scores (pooled over layers rank-wise: element i is the mean of
  // the layers' i-th largest normalised score, so prefix sums give the mean mass kept), and layer importance from
  // `depth_criterion` ("mse_logits", "kl", "lm_loss_increase", "mse_hidden", "block_influence", or
  // "iterative" for the iterative-removal order; empty: iterative if present, else the first of those found).
  // MoE layers: moe.experts (the pruner's default expert ranking), moe.expert_channels (each expert's channels
  // pooled rank-wise as if each expert were a layer) and moe.shared. `what` names the file in error messages.
  static ImportanceScores from_scores(const Scores& scores, const std::string& what,
                                      const std::string& depth_criterion = "");
};

// ---------------------------------------------------------------- stage-1 proxy
// How stage 1 orders the feasible candidates (higher is better):
//   fill        the fill of the binding constraint, max(memory / budget, params / max params): the largest
//               student that fits first (NVIDIA ModelOpt sorts its candidates this way before scoring the top k);
//   importance  the importance mass kept, a product over axes (Minitron): per axis, the kept units' share of the
//               axis's importance; where scores.json gives no scores for an axis (or none is given), every unit
//               counts the same, so the axis contributes the fraction of units kept;
//   auto        importance when scores are given, else fill.
// With a memory budget alone both grow with every width, so they prefer students that fill the budget; with a
// parameter target as well (max params), the importance proxy chooses how to spend the parameters across axes.
enum class Proxy { Auto, Fill, Importance };
Proxy parse_proxy(const std::string& text);  // auto | fill | importance
const char* proxy_name(Proxy proxy);

// ---------------------------------------------------------------- candidates and ranking
struct Candidate {
  std::string id;  // stable: a function of the shape and the dropped layers only
  Shape shape;
  std::vector<int64_t> dropped_layers;  // parent layer indices, ascending
  std::string pattern;                  // the student's hybrid_override_pattern
  ParamCounts params;
  MemoryBreakdown memory;
  bool feasible = false;
  std::vector<std::string> reasons;  // why not (empty when feasible)
  Throughput throughput;
  double proxy = 0;  // stage 1: higher is better
  std::optional<double> zero_shot_loss, distilled_loss;  // stages 2, 3: lower is better
  int64_t rank = 0;   // 1-based over the feasible ones; 0 when infeasible
  int stage = 0;      // the last stage that ranked it
  bool pareto = false;  // on the front of proxy (or params) vs predicted throughput
};
// The student's config.json (parent's fields kept, shape and layer list replaced).
ModelConfig candidate_config(const ModelConfig& parent, const Candidate& candidate);
// A report entry: the pruner's target for the candidate (PruneTarget::to_json, the "config" and "dropped_layers"
// that `prune --target REPORT.json#id` reads) plus the search's own fields.
json candidate_to_json(const ModelConfig& parent, const Candidate& candidate);

struct SearchOptions {
  InferenceSetup setup;
  Workload workload;
  Budget budget;
  SearchSpace space;
  ImportanceScores scores;
  Proxy proxy = Proxy::Auto;
  int64_t keep_feasible = 200;     // feasible candidates kept in the report (best by stage-1 rank)
  int64_t keep_infeasible = 50;    // infeasible ones kept (nearest to the budget), besides the counts by reason
  // Stage 2: zero-shot LM loss of the actually pruned candidate (lower is better), for the best `stage2_top`.
  std::function<double(const ModelConfig&, const std::vector<int64_t>& dropped_layers)> zero_shot_loss;
  int64_t stage2_top = 0;
  // Stage 3: LM loss after a short distillation of the best `distill_top` of stage 2.
  std::function<double(const ModelConfig&, const std::vector<int64_t>& dropped_layers)> distill_loss;
  int64_t distill_top = 0;
  // Shapes to locate in the space and report (e.g. a published student): name -> config.
  std::vector<std::pair<std::string, ModelConfig>> references;
};

struct ReferenceResult {
  std::string name;
  bool reachable = false;       // the shape is a point of the space
  std::optional<Candidate> candidate;  // evaluated as if it were one (also when unreachable)
  std::string note;
};

struct SearchResult {
  Candidate parent;  // the parent itself, evaluated under the same setup
  std::vector<Candidate> candidates;  // feasible (ranked) first, then the kept infeasible ones
  int64_t enumerated = 0, feasible = 0;
  std::vector<std::pair<std::string, int64_t>> infeasible_by_reason;
  std::vector<ReferenceResult> references;
  std::string proxy_kind;  // "importance" (scores), "importance-uniform" (no scores) or "memory-closeness"
  // Stage 1's resolution: feasible points tied at the best proxy, the best and lowest feasible proxy, and (when
  // more than one ties at the best, or without scores more than one prints as the best) a note saying the order among them is not an accuracy ranking and which flag
  // gives it one (--scores).
  int64_t tied_at_best = 0;
  int64_t shown_as_best = 0;  // feasible points whose proxy prints (4 decimals) as the best one's
  double proxy_best = 0, proxy_lowest = 0;
  std::string ranking_note;
  double seconds = 0;
  json to_json(const ModelConfig& parent_config, const SearchOptions& options,
               const HardwareProfile& hw) const;
};

SearchResult run_search(const ModelConfig& parent, const HardwareProfile& hw, const SearchOptions& options);

// Which parent layers to drop for given per-type counts (least important of each type first; without layer
// scores, evenly spread over the middle of the stack, sparing the first and last layer of each type).
std::vector<int64_t> choose_dropped_layers(const ModelConfig& parent, int64_t drop_mamba, int64_t drop_attention,
                                           int64_t drop_mlp, const std::vector<double>& layer_importance);
// The same with MoE layers dropped too (drop_moe of them).
std::vector<int64_t> choose_dropped_layers(const ModelConfig& parent, int64_t drop_mamba, int64_t drop_attention,
                                           int64_t drop_mlp, int64_t drop_moe,
                                           const std::vector<double>& layer_importance);
std::vector<int64_t> choose_dropped_layers_total(const ModelConfig& parent, int64_t drop_total,
                                                 const std::vector<double>& layer_importance);
std::string candidate_id(const Shape& shape, const std::vector<int64_t>& dropped_layers);

// ---------------------------------------------------------------- a search as data
// A search written down: configs/search/*.json, or the CLI's flags, with the same names (dashes or
// underscores). Keys (all optional but source and hardware):
//   source (checkpoint dir, config.json or a configs/models name), hardware (configs/hardware name or path),
//   context ("128k"), batch, workload ("8k-in,16k-out"), scores (scores.json), depth_criterion, budget_gib,
//   reserve ("vision=1.3GiB"), margin_gib, weights_dtype, kv_dtype, conv_state_dtype, ssm_state_dtype,
//   prefill_chunk, depth ("per-type" | "total"), drop_mamba, drop_attention, drop_mlp, drop_moe, drop_total,
//   hidden, ffn, mamba_heads, mamba_head_dim, attention_heads, experts, expert_ffn, shared_ffn (ranges
//   "MIN:MAX:STEP" or one number), min_params, max_params, min_active_params and max_active_params (billions),
//   proxy (auto | fill | importance), keep, keep_infeasible, reference (list of shapes to locate).
//   Keys starting with "_" and "description" are notes. Unknown keys are refused.
struct SearchRequest {
  json values = json::object();  // normalised keys (underscores)
  std::string origin = "search request";
  static SearchRequest from_json(const json& j, const std::string& what);
  // A JSON file, or a name in configs/search (e.g. nano2-12b-to-9b).
  static SearchRequest load(const std::string& name_or_path);
  void set(const std::string& key, json value);  // a flag given on the command line overrides the file
  bool has(const std::string& key) const;
};
// A checkpoint directory, a config.json, or a published model name in configs/models.
ModelConfig load_model_source(const std::string& name_or_path);
struct PreparedSearch {
  ModelConfig parent;
  HardwareProfile hardware;
  SearchOptions options;
};
// Resolves the request: parent and hardware loaded, ranges parsed (the parent's defaults where absent, see
// default_space), scores read. Errors name the key and what was expected.
PreparedSearch prepare_search(const SearchRequest& request);

// report.json, report.md, report.html in `dir` (created). Returns the paths written.
std::vector<std::string> write_search_report(const std::string& dir, const ModelConfig& parent,
                                             const HardwareProfile& hw, const SearchOptions& options,
                                             const SearchResult& result);

}  // namespace mp::search
