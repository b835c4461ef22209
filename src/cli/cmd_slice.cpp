// minipuzzle nest CKPT --scores scores.json -o OUT [--budgets BUDGETS]
//   the same model with every prunable axis in importance order (include/minipuzzle/elastic.h), plus
//   OUT/minipuzzle_elastic.json (layer ranking, budgets, the order applied).
// minipuzzle slice CKPT --budget NAME|SHAPE -o OUT
//   a budget of a nested checkpoint as an ordinary Hugging Face checkpoint (the first units of every axis).
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/elastic.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/pruning.h"
#include "src/cli/command.h"

namespace mp::cli {
namespace {

// A scratch directory for the files that travel with the written checkpoint; removed on every exit.
struct Scratch {
  std::string path;
  explicit Scratch(const std::string& tag)
      : path(fs::join(fs::temp_directory(), "minipuzzle-" + tag + "-" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~Scratch() { fs::remove_all_quietly(path); }
};

struct NestArgs {
  std::string checkpoint, scores, output, budgets, depth_criterion = "lm_loss_increase", expert_criterion = "experts";
  bool drop_mtp = false, overwrite = false;
};

void run_nest(const NestArgs& a) {
  Checkpoint ck = Checkpoint::open(a.checkpoint);
  MP_CHECK(!read_elastic_info(a.checkpoint), a.checkpoint, " is already nested (it has ", kElasticFile,
           "); slice it with `minipuzzle slice`, or nest the original");
  Scores scores = read_scores(a.scores);
  check_scores_fit(scores, ck.config(), a.scores);
  NestedOrderOptions options;
  options.depth_criterion = a.depth_criterion;
  options.expert_criterion = a.expert_criterion;
  options.drop_mtp = a.drop_mtp;
  NestedOrder order = make_nested_order(ck.config(), scores, options);
  ElasticInfo info;
  info.layer_ranking = order.layer_ranking;
  info.depth_criterion = order.layer_ranking.empty() ? "" : a.depth_criterion;
  info.order = order.permutation.to_json();
  info.source = {{"checkpoint", fs::absolute(a.checkpoint)}, {"scores", fs::absolute(a.scores)}};
  if (!a.budgets.empty()) {
    info.add_budgets(load_budgets(a.budgets).budgets);
    for (auto& b : info.budgets)  // every budget must be a valid slice of this model, checked before writing
      (void)nested_plan(ck.config(), PruneTarget::from_json(b.shape, "budget \"" + b.name + "\""), info.layer_ranking);
  }
  check_output_dir(a.output, a.overwrite);
  Scratch scratch("nest");
  const std::string meta = fs::join(scratch.path, kElasticFile);
  write_elastic_info(meta, info);
  PruneOptions po;
  po.overwrite = a.overwrite;
  po.extra_files = {meta};
  prune_checkpoint(ck, order.permutation, a.output, po);
  log_info("wrote " + a.output + " (nested order; layer ranking " +
           (info.layer_ranking.empty() ? std::string("absent: budgets cannot drop layers") : "by " + a.depth_criterion) +
           ", " + std::to_string(info.budgets.size()) + " budgets)");
}

struct SliceArgs {
  std::string checkpoint, budget, output, summary_json;
  bool overwrite = false, dry_run = false;
};

void run_slice(const SliceArgs& a) {
  Checkpoint ck = Checkpoint::open(a.checkpoint);
  auto info = read_elastic_info(a.checkpoint);
  MP_CHECK(info.has_value(), a.checkpoint, " is not a nested checkpoint (no ", kElasticFile,
           "); make one with `minipuzzle nest CKPT --scores scores.json -o OUT`");
  ElasticBudget budget = resolve_budget(a.budget, *info);
  PruneTarget target = PruneTarget::from_json(budget.shape, "budget \"" + budget.name + "\"");
  PrunePlan plan = nested_plan(ck.config(), target, info->layer_ranking);
  json summary = prune_summary(plan, static_cast<double>(dtype_size(ck.storage_dtype())));
  summary["parent"] = a.checkpoint;
  summary["budget"] = budget.name;
  summary["shape"] = budget.shape;
  std::fprintf(stderr, "%s", format_prune_summary(summary).c_str());
  if (a.dry_run) {
    if (!a.summary_json.empty()) write_json_file(a.summary_json, summary);
    return;
  }
  check_output_dir(a.output, a.overwrite);
  Scratch scratch("slice");
  // The slice records where it came from: the budget, its shape, and the parent units it keeps.
  const std::string prov = fs::join(scratch.path, "minipuzzle_slice.json");
  write_json_file(prov, {{"elastic_parent", fs::absolute(a.checkpoint)},
                         {"budget", budget.name},
                         {"shape", budget.shape},
                         {"summary", summary},
                         {"plan", plan.to_json()},
                         {"parent_training", info->training}});
  PruneOptions po;
  po.overwrite = a.overwrite;
  po.extra_files = {prov};
  prune_checkpoint(ck, plan, a.output, po);
  if (!a.summary_json.empty()) write_json_file(a.summary_json, summary);
  log_info("wrote " + a.output + " (budget " + budget.name + ")");
}

void add_nest(CLI::App& app) {
  auto args = std::make_shared<NestArgs>();
  CLI::App* c = app.add_subcommand(
      "nest", "Put every prunable axis in importance order, so that every budget is a prefix (elastic parent)");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_option("--scores", args->scores, "scores.json of this checkpoint (`minipuzzle score`)")->required();
  c->add_option("-o,--output", args->output, "output checkpoint directory (written atomically)")->required();
  c->add_option("--budgets", args->budgets, "budgets to record (configs/elastic/*.json or inline JSON)");
  c->add_option("--depth-criterion", args->depth_criterion,
                "layer ranking: lm_loss_increase (default) | kl | mse_hidden | mse_logits | block_influence | iterative")
      ->capture_default_str();
  c->add_option("--expert-criterion", args->expert_criterion, "MoE: experts (default) | frequency | loss");
  c->add_flag("--drop-mtp", args->drop_mtp, "write the nested model without its MTP layers (mtp.*)");
  c->add_flag("--overwrite", args->overwrite, "replace an existing output directory");
  c->callback([args] { run_nest(*args); });
}

void add_slice(CLI::App& app) {
  auto args = std::make_shared<SliceArgs>();
  CLI::App* c = app.add_subcommand("slice", "Write one budget of a nested (elastic) checkpoint as a plain checkpoint");
  c->add_option("checkpoint", args->checkpoint, "nested checkpoint (`minipuzzle nest` or `distill --elastic`)")->required();
  c->add_option("--budget", args->budget, "a budget name recorded in the checkpoint, or a shape (JSON file or inline)")
      ->required();
  c->add_option("-o,--output", args->output, "output checkpoint directory (written atomically)");
  c->add_option("--summary-json", args->summary_json, "write the before/after summary as JSON");
  c->add_flag("--dry-run", args->dry_run, "validate and summarise only");
  c->add_flag("--overwrite", args->overwrite, "replace an existing output directory");
  c->callback([args] {
    MP_CHECK(args->dry_run || !args->output.empty(), "slice: -o OUT is required (or --dry-run)");
    run_slice(*args);
  });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(nest, mp::cli::add_nest);
MP_REGISTER_COMMAND(slice, mp::cli::add_slice);
