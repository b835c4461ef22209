// minipuzzle prune CKPT --scores scores.json --target TARGET -o OUT
// TARGET: a JSON file, inline JSON, or REPORT.json#<candidate id>; flags (--hidden, --ffn, ...) override it.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <sstream>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/pruning.h"
#include "src/cli/command.h"


namespace mp::cli {
namespace {

struct PruneArgs {
  std::string checkpoint, scores, target, output, summary_json, plan_json, drop_layers, depth_criterion,
      mamba_head_criterion, expert_criterion;
  int64_t experts = 0, expert_ffn = 0, shared_ffn = 0, top_k = 0;
  bool drop_mtp = false;
  int64_t hidden = 0, ffn = 0, attn_heads = 0, kv_heads = 0, mamba_heads = 0, mamba_head_dim = 0, n_groups = 0;
  int64_t drop_count = -1;
  bool group_removal = false, dry_run = false, overwrite = false;
  double max_shard_gib = 5.0;
  int threads = 0;
};

std::vector<int64_t> parse_layer_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MP_CHECK(used == item.size(), "--drop-layers: \"", item, "\" is not a layer index (expected e.g. 3,7,12)");
    out.push_back(v);
  }
  return out;
}

void run(const PruneArgs& a) {
  Checkpoint ck = Checkpoint::open(a.checkpoint);
  PruneTarget target;
  if (!a.target.empty()) target = load_target(a.target);
  auto set = [](std::optional<int64_t>& field, int64_t flag) {
    if (flag > 0) field = flag;
  };
  set(target.hidden_size, a.hidden);
  set(target.intermediate_size, a.ffn);
  set(target.num_attention_heads, a.attn_heads);
  set(target.num_key_value_heads, a.kv_heads);
  set(target.mamba_num_heads, a.mamba_heads);
  set(target.mamba_head_dim, a.mamba_head_dim);
  set(target.n_groups, a.n_groups);
  if (!a.drop_layers.empty()) target.drop_layers = parse_layer_list(a.drop_layers);
  if (a.drop_count >= 0) target.drop_count = a.drop_count;
  if (!a.depth_criterion.empty()) target.depth_criterion = a.depth_criterion;
  if (!a.mamba_head_criterion.empty()) target.mamba_head_criterion = a.mamba_head_criterion;
  if (a.group_removal) target.mamba_group_removal = true;
  set(target.n_routed_experts, a.experts);
  set(target.moe_intermediate_size, a.expert_ffn);
  set(target.moe_shared_expert_intermediate_size, a.shared_ffn);
  set(target.num_experts_per_tok, a.top_k);
  if (!a.expert_criterion.empty()) target.expert_criterion = a.expert_criterion;
  if (a.drop_mtp) target.drop_mtp = true;
  if (a.target.empty()) target.origin = "prune flags";

  std::unique_ptr<Scores> scores;
  if (!a.scores.empty()) {
    scores = std::make_unique<Scores>(read_scores(a.scores));
    check_scores_fit(*scores, ck.config(), a.scores);
  }
  // Everything is validated here, before the output directory is touched.
  PrunePlan plan = make_plan(ck.config(), target, scores.get());
  if (!a.dry_run) check_output_dir(a.output, a.overwrite);

  json summary = prune_summary(plan, static_cast<double>(dtype_size(ck.storage_dtype())));
  summary["parent"] = a.checkpoint;
  summary["output"] = a.dry_run ? json() : json(a.output);
  summary["target"] = target.origin;
  summary["scores"] = a.scores;
  summary["identity"] = plan.is_identity();
  std::fprintf(stderr, "%s", format_prune_summary(summary).c_str());
  if (!a.plan_json.empty()) write_json_file(a.plan_json, plan.to_json());
  if (a.dry_run) {
    if (!a.summary_json.empty()) write_json_file(a.summary_json, summary);
    return;
  }

  // The plan travels with the pruned checkpoint (kept indices: what distillation or a later audit needs).
  const std::string scratch = fs::join(fs::temp_directory(), "minipuzzle-prune-" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  struct Cleanup {
    std::string p;
    ~Cleanup() { fs::remove_all_quietly(p); }
  } cleanup{scratch};
  json provenance{{"summary", summary}, {"plan", plan.to_json()}};
  write_json_file(fs::join(scratch, "minipuzzle_prune.json"), provenance);

  PruneOptions options;
  options.overwrite = a.overwrite;
  options.max_shard_bytes = static_cast<uint64_t>(a.max_shard_gib * double(1ull << 30));
  options.threads = a.threads;
  options.extra_files = {fs::join(scratch, "minipuzzle_prune.json")};
  prune_checkpoint(ck, plan, a.output, options);
  if (!a.summary_json.empty()) write_json_file(a.summary_json, summary);
  log_info("wrote " + a.output);
}

void add(CLI::App& app) {
  auto args = std::make_shared<PruneArgs>();
  CLI::App* c = app.add_subcommand(
      "prune", "Cut depth and width of a checkpoint (group-aware for Mamba, GQA-aware for attention)");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_option("-o,--output", args->output, "output checkpoint directory (written atomically)");
  c->add_option("--scores", args->scores, "scores.json from `minipuzzle score` (needed to choose what goes)");
  c->add_option("--target", args->target,
                "target shape: JSON file, inline JSON, or REPORT.json#<candidate id> from `minipuzzle search`");
  c->add_option("--hidden", args->hidden, "hidden size (embedding channels)");
  c->add_option("--ffn", args->ffn, "MLP intermediate size");
  c->add_option("--attn-heads", args->attn_heads, "attention query heads (a multiple of the KV heads)");
  c->add_option("--kv-heads", args->kv_heads, "attention KV heads (fewer removes whole KV groups)");
  c->add_option("--mamba-heads", args->mamba_heads, "Mamba heads (a multiple of n_groups)");
  c->add_option("--mamba-head-dim", args->mamba_head_dim, "Mamba head_dim");
  c->add_option("--n-groups", args->n_groups, "Mamba SSM groups to keep (fewer removes whole groups)");
  c->add_flag("--mamba-group-removal", args->group_removal,
              "reach --mamba-heads by removing whole groups instead of heads within every group");
  c->add_option("--mamba-head-criterion", args->mamba_head_criterion,
                "heads (default) | heads_out | heads_flap | heads_nested | nested");
  c->add_option("--experts", args->experts, "MoE: routed experts kept per layer (a multiple of n_group)");
  c->add_option("--expert-ffn", args->expert_ffn, "MoE: routed expert width (moe_intermediate_size)");
  c->add_option("--shared-ffn", args->shared_ffn, "MoE: shared expert width");
  c->add_option("--top-k", args->top_k, "MoE: experts per token (num_experts_per_tok)");
  c->add_option("--expert-criterion", args->expert_criterion, "MoE: experts (default) | frequency | loss");
  c->add_flag("--drop-mtp", args->drop_mtp, "write the pruned model without its MTP layers (mtp.*)");
  c->add_option("--drop-layers", args->drop_layers, "parent layer indices to remove, e.g. 3,7");
  c->add_option("--drop-count", args->drop_count, "remove this many layers, the least important first");
  c->add_option("--depth-criterion", args->depth_criterion,
                "for --drop-count: lm_loss_increase (default) | kl | mse_hidden | mse_logits | block_influence | "
                "iterative");
  c->add_option("--summary-json", args->summary_json, "write the before/after summary as JSON");
  c->add_option("--plan-json", args->plan_json, "write the kept indices per layer as JSON");
  c->add_option("--max-shard-gib", args->max_shard_gib, "largest output shard")->capture_default_str();
  c->add_option("--threads", args->threads, "reading/cutting/writing threads (0: the cores, at most 8)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->add_flag("--dry-run", args->dry_run, "validate and summarise only; write no checkpoint");
  c->add_flag("--overwrite", args->overwrite, "replace an existing output directory");
  c->callback([args] {
    MP_CHECK(args->dry_run || !args->output.empty(), "prune: -o OUT is required (or --dry-run)");
    run(*args);
  });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(prune, mp::cli::add);
