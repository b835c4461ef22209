// minipuzzle search SOURCE --hardware HW --context N [--batch B] [--workload 8k-in,16k-out] [--scores S]
//                   [--budget-gib X] [--reserve LIST] [space flags] -o REPORT_DIR
// SOURCE: a checkpoint directory, a config.json, or a published model name from configs/models
// (e.g. nemotron-nano-12b-v2). Writes REPORT_DIR/report.{json,md,html}; candidates are addressed as
// REPORT_DIR/report.json#<id> by `minipuzzle prune --target`.
#include <filesystem>
#include <memory>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/search.h"
#include "src/cli/command.h"

namespace fs = std::filesystem;

namespace mp::cli {
namespace {

struct SearchArgs {
  std::string source, hardware, context = "131072", workload = "8k-in,16k-out", scores, depth_criterion, reserve,
              output;
  int64_t batch = 1, prefill_chunk = 2048, keep = 200, keep_infeasible = 50;
  double budget_gib = 0, margin_gib = 0, min_params_b = 0, max_params_b = 0;
  std::string weights = "bfloat16", kv = "bfloat16", conv_state = "bfloat16", ssm_state;
  std::string depth = "per-type", drop_mamba, drop_attention, drop_mlp, drop_total, hidden, ffn, mamba_heads,
              mamba_head_dim, attention_heads;
  std::vector<std::string> references;
};

search::IntRange range_or(const std::string& text, const search::IntRange& fallback) {
  return text.empty() ? fallback : search::parse_range(text);
}

ModelConfig load_source(const std::string& source) {
  if (fs::exists(source)) return load_config(source);
  return load_config(search::find_config_file("models", source));
}

void run(const SearchArgs& a) {
  using namespace search;
  ModelConfig parent = load_source(a.source);
  HardwareProfile hw = load_hardware(a.hardware);
  SearchOptions o;
  o.setup.context = parse_token_count(a.context);
  o.setup.batch = a.batch;
  o.setup.weights = parse_dtype(a.weights);
  o.setup.kv_cache = parse_dtype(a.kv);
  o.setup.conv_state = parse_dtype(a.conv_state);
  o.setup.ssm_state = parse_dtype(a.ssm_state.empty() ? parent.mamba_ssm_cache_dtype : a.ssm_state);
  o.setup.prefill_chunk = a.prefill_chunk;
  o.setup.runtime_margin_bytes = a.margin_gib * kGiB;
  MP_CHECK(a.batch > 0, "--batch must be positive");
  o.workload = parse_workload(a.workload);
  o.budget = make_budget(hw, a.reserve.empty() ? std::vector<Reservation>{} : parse_reservations(a.reserve),
                         a.budget_gib > 0 ? std::optional<double>(a.budget_gib) : std::nullopt);
  SearchSpace d = default_space(parent);
  SearchSpace& s = o.space;
  s = d;
  MP_CHECK(a.depth == "per-type" || a.depth == "total", "--depth must be per-type or total, found \"", a.depth, "\"");
  s.depth_per_type = a.depth == "per-type";
  s.drop_mamba = range_or(a.drop_mamba, d.drop_mamba);
  s.drop_attention = range_or(a.drop_attention, d.drop_attention);
  s.drop_mlp = range_or(a.drop_mlp, d.drop_mlp);
  s.drop_total = range_or(a.drop_total, d.drop_total);
  s.bound_total = s.depth_per_type ? (a.drop_total.empty() ? d.bound_total : true) : true;
  s.hidden = range_or(a.hidden, d.hidden);
  s.ffn = range_or(a.ffn, d.ffn);
  s.mamba_heads = range_or(a.mamba_heads, d.mamba_heads);
  s.mamba_head_dim = range_or(a.mamba_head_dim, d.mamba_head_dim);
  s.attention_heads = range_or(a.attention_heads, d.attention_heads);
  s.min_params = a.min_params_b * 1e9;
  s.max_params = a.max_params_b * 1e9;
  if (!a.scores.empty())
    o.scores = ImportanceScores::from_json(read_json_file(a.scores), a.scores, a.depth_criterion);
  o.keep_feasible = a.keep;
  o.keep_infeasible = a.keep_infeasible;
  for (auto& r : a.references) {
    ModelConfig c = load_source(r);
    o.references.emplace_back(fs::path(r).stem().string(), c);
  }
  log_info("search: " + std::to_string(s.combinations()) + " combinations, budget " +
           std::to_string(o.budget.usable_bytes() / kGiB) + " GiB on " + hw.name);
  SearchResult r = run_search(parent, hw, o);
  auto paths = write_search_report(a.output, parent, hw, o, r);
  std::ostringstream msg;
  msg << "search: " << r.enumerated << " enumerated, " << r.feasible << " fit; parent "
      << (r.parent.feasible ? "fits" : "does not fit (" + r.parent.reasons.front() + ")");
  for (auto& c : r.candidates)
    if (c.rank == 1) msg << "; best: " << c.id;
  log_info(msg.str());
  for (auto& p : paths) log_info("wrote " + p);
}

void add(CLI::App& app) {
  auto a = std::make_shared<SearchArgs>();
  CLI::App* c = app.add_subcommand(
      "search",
      "Find the pruned students of SOURCE that fit a GPU at a context length, explain the ones that do not, predict "
      "their throughput and rank them (importance proxy from --scores, else closeness to the budget).");
  c->add_option("source", a->source, "checkpoint directory, config.json, or a name in configs/models")->required();
  c->add_option("--hardware", a->hardware, "profile name in configs/hardware (a10g, rtx5090, h100-80gb, ...) or a JSON path")
      ->required();
  c->add_option("--context", a->context, "tokens of context per sequence (131072, 128k, 1M = 2^20)")->capture_default_str();
  c->add_option("--batch", a->batch, "sequences served together")->capture_default_str();
  c->add_option("--workload", a->workload, "throughput workload: IN-in,OUT-out")->capture_default_str();
  c->add_option("--scores", a->scores, "scores.json from `minipuzzle score` (stage-1 importance proxy)");
  c->add_option("--depth-criterion", a->depth_criterion,
                "layer importance from scores.json: mse_logits, kl, lm_loss_increase, mse_hidden, block_influence, iterative");
  c->add_option("--budget-gib", a->budget_gib, "memory budget in GiB (replaces the device minus reservations)");
  c->add_option("--reserve", a->reserve, "reservations, e.g. 'vision=1.3GiB' or 'framework=5%,2GiB' (added to the profile's)");
  c->add_option("--margin-gib", a->margin_gib, "fixed runtime margin counted as a memory term")->capture_default_str();
  c->add_option("--weights-dtype", a->weights, "bfloat16 | fp8 | fp4")->capture_default_str();
  c->add_option("--kv-dtype", a->kv, "KV cache dtype")->capture_default_str();
  c->add_option("--conv-state-dtype", a->conv_state, "Mamba conv state dtype")->capture_default_str();
  c->add_option("--ssm-state-dtype", a->ssm_state, "Mamba SSM state dtype (default: the config's mamba_ssm_cache_dtype)");
  c->add_option("--prefill-chunk", a->prefill_chunk, "tokens per prefill step for the activation term (0: none)")
      ->capture_default_str();
  c->add_option("--depth", a->depth, "per-type (drop counts per layer type) | total (least important layers overall)")
      ->capture_default_str();
  c->add_option("--drop-mamba", a->drop_mamba, "range MIN:MAX[:STEP] of Mamba layers to drop");
  c->add_option("--drop-attention", a->drop_attention, "range of attention layers to drop");
  c->add_option("--drop-mlp", a->drop_mlp, "range of MLP layers to drop");
  c->add_option("--drop-total", a->drop_total, "range of layers to drop in all");
  c->add_option("--hidden", a->hidden, "hidden size range (default: 60-100% of the parent, step 128)");
  c->add_option("--ffn", a->ffn, "FFN size range (default: 60-100%, step 512)");
  c->add_option("--mamba-heads", a->mamba_heads, "Mamba heads range (multiples of n_groups)");
  c->add_option("--mamba-head-dim", a->mamba_head_dim, "Mamba head_dim range");
  c->add_option("--attention-heads", a->attention_heads, "attention heads range (multiples of the KV heads)");
  c->add_option("--min-params", a->min_params_b, "minimum parameters, in billions");
  c->add_option("--max-params", a->max_params_b, "maximum parameters, in billions");
  c->add_option("--keep", a->keep, "feasible candidates listed in the report")->capture_default_str();
  c->add_option("--keep-infeasible", a->keep_infeasible, "infeasible candidates listed (nearest the budget)")
      ->capture_default_str();
  c->add_option("--reference", a->references, "a shape to locate in the space (config path or model name); repeatable");
  c->add_option("-o,--output", a->output, "report directory (report.json, report.md, report.html)")->required();
  c->callback([a] { run(*a); });
}

MP_REGISTER_COMMAND(search, add);

}  // namespace
}  // namespace mp::cli
