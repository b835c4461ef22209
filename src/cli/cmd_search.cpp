// minipuzzle search [SOURCE] [--config configs/search/X.json] --hardware HW --context N [--batch B]
//                   [--workload 8k-in,16k-out] [--scores S] [--budget-gib X] [--reserve LIST] [space flags]
//                   [--proxy auto|fill|importance]
//                   [--zero-shot-top M --calib FILE [--calib-tokens N]] [--distill-top K --distill-data FILE]
//                   -o REPORT_DIR
// SOURCE: a checkpoint directory, a config.json, or a published model name from configs/models
// (e.g. nemotron-nano-12b-v2). --config is a search written as JSON (the same names as the flags; see
// configs/search/); flags given on the command line override it. Writes REPORT_DIR/report.{json,md,html};
// candidates are addressed as REPORT_DIR/report.json#<id> by `minipuzzle prune --target`.
#include <memory>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/search.h"
#include "src/cli/command.h"
#include "src/cli/common.h"
#include "src/cli/search_stages.h"


namespace mp::cli {
namespace {

// The flags that are also keys of a search request (search::SearchRequest), by long name without dashes.
const char* const kRequestFlags[] = {
    "hardware",    "context",        "batch",        "workload",         "scores",     "depth-criterion",
    "budget-gib",  "reserve",        "margin-gib",   "weights-dtype",    "kv-dtype",   "conv-state-dtype",
    "ssm-state-dtype", "prefill-chunk", "depth",     "drop-mamba",       "drop-attention", "drop-mlp",
    "drop-total",  "hidden",         "ffn",          "mamba-heads",      "mamba-head-dim", "attention-heads",
    "min-params",  "max-params",     "proxy",        "keep",             "keep-infeasible", "reference",
    "drop-moe",    "experts",        "expert-ffn",   "shared-ffn",       "min-active-params", "max-active-params"};

struct SearchArgs {
  std::string source, config, output;
  int64_t zero_shot_top = 0, distill_top = 0;
  SearchStageOptions stages;
  CLI::App* app = nullptr;
};

// The request: the --config file, then every request flag given on the command line.
search::SearchRequest build_request(const SearchArgs& a) {
  search::SearchRequest r;
  if (!a.config.empty()) r = search::SearchRequest::load(a.config);
  r.origin = a.config.empty() ? "command line" : r.origin + " (with command-line flags)";
  if (!a.source.empty()) r.set("source", a.source);
  for (const char* name : kRequestFlags) {
    const CLI::Option* opt = a.app->get_option_no_throw(std::string("--") + name);
    if (!opt || opt->count() == 0) continue;
    const auto& results = opt->results();
    if (std::string(name) == "reference") r.set(name, json(results));
    else r.set(name, results.back());
  }
  return r;
}

void run(const SearchArgs& a) {
  using namespace search;
  SearchRequest request = build_request(a);
  PreparedSearch p = prepare_search(request);
  SearchOptions& o = p.options;
  SearchStageOptions stages = a.stages;
  stages.checkpoint = request.values.at("source").get<std::string>();
  stages.scores = request.has("scores") ? request.values.at("scores").get<std::string>() : "";
  stages.report_dir = a.output;
  attach_search_stages(o, p.parent, stages, a.zero_shot_top, a.distill_top);
  log_info("search: " + std::to_string(o.space.combinations()) + " combinations, budget " +
           std::to_string(o.budget.usable_bytes() / kGiB) + " GiB on " + p.hardware.name + ", stage-1 proxy " +
           proxy_name(o.proxy));
  SearchResult r = run_search(p.parent, p.hardware, o);
  auto paths = write_search_report(a.output, p.parent, p.hardware, o, r);
  std::ostringstream msg;
  msg << "search: " << r.enumerated << " enumerated, " << r.feasible << " fit; parent "
      << (r.parent.feasible ? "fits" : "does not fit (" + r.parent.reasons.front() + ")");
  for (auto& c : r.candidates)
    if (c.rank == 1) msg << "; best: " << c.id;
  for (auto& ref : r.references)
    if (ref.candidate)
      msg << "; " << ref.name << ": " << (ref.candidate->feasible ? "fits" : "does not fit")
          << (ref.candidate->rank > 0 ? ", stage-1 rank " + std::to_string(ref.candidate->rank) : "");
  log_info(msg.str());
  if (!r.ranking_note.empty()) log_warning("search: " + r.ranking_note);
  for (auto& path : paths) log_info("wrote " + path);
}

void add(CLI::App& app) {
  auto a = std::make_shared<SearchArgs>();
  CLI::App* c = app.add_subcommand(
      "search",
      "Find the pruned students of SOURCE that fit a GPU at a context length, explain the ones that do not, predict "
      "their throughput and rank them: stage 1 by a proxy (importance kept, or fill of the budget), stage 2 by the "
      "zero-shot loss of the best M pruned in memory, stage 3 by the loss after a short distillation of the best K.");
  a->app = c;
  c->add_option("source", a->source, "checkpoint directory, config.json, or a name in configs/models (or in --config)");
  c->add_option("--config", a->config, "a search as JSON (configs/search/NAME.json or a path; keys = these flags' names)");
  c->add_option("--hardware", "profile name in configs/hardware (a10g, rtx5090, h100-80gb, ...) or a JSON path");
  c->add_option("--context", "tokens of context per sequence (131072, 128k, 1M = 2^20; default 131072)");
  c->add_option("--batch", "sequences served together (default 1)");
  c->add_option("--workload", "throughput workload: IN-in,OUT-out (default 8k-in,16k-out)");
  c->add_option("--scores", "scores.json from `minipuzzle score` (stage-1 importance; the pruner's ranking in stages 2-3)");
  c->add_option("--depth-criterion",
                "layer importance from scores.json: mse_logits, kl, lm_loss_increase, mse_hidden, block_influence, iterative");
  c->add_option("--budget-gib", "memory budget in GiB (replaces the device minus reservations)");
  c->add_option("--reserve", "reservations, e.g. 'vision=1.3GiB' or 'framework=5%,2GiB' (added to the profile's)");
  c->add_option("--margin-gib", "fixed runtime margin counted as a memory term (default 0)");
  c->add_option("--weights-dtype", "bfloat16 | fp8 | fp4 (default bfloat16)");
  c->add_option("--kv-dtype", "KV cache dtype (default bfloat16)");
  c->add_option("--conv-state-dtype", "Mamba conv state dtype (default bfloat16)");
  c->add_option("--ssm-state-dtype", "Mamba SSM state dtype (default: the config's mamba_ssm_cache_dtype)");
  c->add_option("--prefill-chunk", "tokens per prefill step for the activation term (0: none; default 2048)");
  c->add_option("--depth", "per-type (drop counts per layer type) | total (least important layers overall)");
  c->add_option("--drop-mamba", "range MIN:MAX[:STEP] of Mamba layers to drop");
  c->add_option("--drop-attention", "range of attention layers to drop");
  c->add_option("--drop-mlp", "range of MLP layers to drop");
  c->add_option("--drop-moe", "range of MoE layers to drop");
  c->add_option("--drop-total", "range of layers to drop in all");
  c->add_option("--hidden", "hidden size range (default: 60-100% of the parent, step 128)");
  c->add_option("--ffn", "FFN size range (default: 60-100%, step 512)");
  c->add_option("--mamba-heads", "Mamba heads range (multiples of n_groups)");
  c->add_option("--mamba-head-dim", "Mamba head_dim range");
  c->add_option("--attention-heads", "attention heads range (multiples of the KV heads)");
  c->add_option("--experts", "MoE: routed experts kept per layer, range (multiples of n_group; default 60-100%, step 8)");
  c->add_option("--expert-ffn", "MoE: routed experts' FFN width range (default 60-100%, step 256)");
  c->add_option("--shared-ffn", "MoE: shared expert's FFN width range (default 60-100%, step 256)");
  c->add_option("--min-params", "minimum parameters, in billions");
  c->add_option("--max-params", "maximum parameters, in billions (a parameter target beside the memory budget)");
  c->add_option("--min-active-params", "MoE: minimum active parameters per token, in billions");
  c->add_option("--max-active-params", "MoE: maximum active parameters per token, in billions (ModelOpt's active_params)");
  c->add_option("--proxy", "stage-1 proxy: auto (importance with --scores, else fill) | fill | importance");
  c->add_option("--keep", "feasible candidates listed in the report (default 200)");
  c->add_option("--keep-infeasible", "infeasible candidates listed, nearest the budget (default 50)");
  c->add_option("--reference", "a shape to locate in the space (config path or model name); repeatable")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  // Stages 2 and 3.
  SearchStageOptions& s = a->stages;
  c->add_option("--zero-shot-top", a->zero_shot_top,
                "stage 2: re-rank the best M by the LM loss of each candidate pruned in memory (needs a checkpoint "
                "SOURCE, --scores and --calib)");
  c->add_option("--calib", s.calib, "stage 2: token file, Megatron PREFIX, .npy or text the zero-shot loss is measured on");
  add_data_format_option(c, &s.data_format);
  c->add_option("--calib-tokens", s.calib_tokens, "stage 2: tokens of --calib used (0: all)")->capture_default_str();
  c->add_option("--seq-len", s.seq_len, "stages 2-3: tokens per sequence")->capture_default_str();
  c->add_option("--batch-size", s.batch, "stage 2: sequences per forward")->capture_default_str();
  c->add_option("--tokenizer", s.tokenizer, "tokenizer.json for text --calib (default: the checkpoint's, else bytes)");
  c->add_option("--distill-top", a->distill_top,
                "stage 3: distil the best K of stage 2 briefly and re-rank them by validation loss (needs --distill-data)");
  c->add_option("--distill-data", s.distill_data, "stage 3: training token file (minipuzzle data)");
  c->add_option("--distill-valid", s.distill_valid, "stage 3: validation token file (default: --calib)");
  c->add_option("--distill-tokens", s.distill_tokens, "stage 3: training tokens per candidate")->capture_default_str();
  c->add_option("--distill-micro-batch", s.distill_micro_batch, "stage 3: sequences per step")->capture_default_str();
  c->add_option("--distill-lr", s.distill_lr, "stage 3: peak learning rate (cosine to a tenth)")->capture_default_str();
  c->add_option("--distill-eval-tokens", s.distill_eval_tokens, "stage 3: validation tokens")->capture_default_str();
  c->add_option("--threads", s.threads, "CPU threads for stages 2-3 (0: ATen's default)");
  add_device_option(c, &s.device);
  add_kernel_options(c);
  c->add_option("-o,--output", a->output, "report directory (report.json, report.md, report.html)")->required();
  c->callback([a] { run(*a); });
}

MP_REGISTER_COMMAND(search, add);

}  // namespace
}  // namespace mp::cli
