// Nested (elastic) students, after Nemotron Elastic (arXiv 2511.16664): every prunable axis of a model is put in
// importance order, best first, so that each smaller budget is a prefix of every axis (and, for depth, drops the
// last layers of one layer ranking). The nested model computes the same function as the original (a permutation of
// units changes nothing); a budget is then a slice of it: `minipuzzle slice` writes one as an ordinary checkpoint,
// and elastic distillation (`minipuzzle distill --elastic`) trains the shared weights of several budgets at once.
//
// What is permuted, group-aware (the same rules as the pruner, include/minipuzzle/pruning.h):
//   embedding channels (every tensor that reads or writes the residual stream), MLP neurons, attention KV groups
//   and the query heads within each group, Mamba SSM groups and the heads within each group (a head moves with its
//   z, x and dt rows of in_proj, its conv1d channels, A_log, D, dt_bias, gated-norm weights and out_proj columns),
//   Mamba head_dim positions (one order for all heads), MoE experts within their routing groups, each expert's
//   channels and the shared expert's channels.
// Each axis is ordered by its score, largest first, ties by the lower index first: exactly the pruner's choice,
// so a prefix of k units is the set `minipuzzle prune` keeps with the same scores (the pruned model and the slice
// differ only in the order of their units: the same function).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/json.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"

namespace mp {

struct Scores;

struct NestedOrderOptions {
  // Which layer importance ranks depth: a DepthScores key (default lm_loss_increase) or "iterative" (the scores'
  // iterative removal order). Without depth scores the ranking is left empty (budgets then cannot drop layers).
  std::string depth_criterion = "lm_loss_increase";
  std::string expert_criterion = "experts";  // MoeScores field that orders experts
  bool drop_mtp = false;  // MTP tensors read the residual stream: with a permuted hidden size they must go
};

struct NestedOrder {
  // A plan of the parent's very shape whose index lists are permutations, best unit first; applying it
  // (prune_checkpoint / prune_in_memory) gives the nested model.
  PrunePlan permutation;
  // Layer indices, most important first: a budget that drops k layers drops the last k. Its reverse is the
  // pruner's removal order for `--drop-count` with the same criterion (ties: the lower index goes first).
  std::vector<int64_t> layer_ranking;
  std::string depth_criterion;
};

// Scores (of this model) -> the order. Throws when the scores belong to another model.
NestedOrder make_nested_order(const ModelConfig& config, const Scores& scores, const NestedOrderOptions& options = {});

// ---------------------------------------------------------------- metadata of a nested checkpoint
// OUT/minipuzzle_elastic.json beside the weights:
// {"format": "minipuzzle-elastic", "version": 1, "layer_ranking": [...], "depth_criterion": "...",
//  "budgets": {"name": SHAPE, ...}, "order": <the permutation, PrunePlan::to_json>, "source": "...",
//  "training": [ {run summary}, ... ]}
constexpr const char* kElasticFile = "minipuzzle_elastic.json";

struct ElasticBudget {
  std::string name;
  json shape;  // a PruneTarget JSON ({} is the whole nested model)
};

struct ElasticInfo {
  std::vector<int64_t> layer_ranking;
  std::string depth_criterion;
  std::vector<ElasticBudget> budgets;
  json order, source, training = json::array();

  json to_json() const;
  static ElasticInfo from_json(const json& j, const std::string& what);
  const ElasticBudget* find(const std::string& name) const;
  void add_budgets(const std::vector<ElasticBudget>& more);  // replaces budgets of the same name
};

// The metadata of a nested checkpoint directory; nullopt when it has none.
std::optional<ElasticInfo> read_elastic_info(const std::string& checkpoint_dir);
void write_elastic_info(const std::string& path, const ElasticInfo& info);  // atomic

// A budgets file (configs/elastic/*.json) or inline JSON:
//   {"budgets": {"name": SHAPE, ...} | [{"name": "...", "shape": SHAPE}, ...],
//    "sampling": {"schedule": "all" | "uniform" | "weighted", "per_step": n, "weights": {"name": w, ...}}}
// SHAPE: any PruneTarget form (widths, "drop_count"); "drop_count" counts layers off the end of the ranking.
struct ElasticSampling {
  std::string schedule = "all";  // all: every budget every step; uniform / weighted: per_step budgets drawn
  int64_t per_step = 0;          // budgets per step (0: all of them)
  std::vector<double> weights;   // per budget (weighted); uniform: all 1
  json to_json() const;
};
struct ElasticBudgets {
  std::vector<ElasticBudget> budgets;
  ElasticSampling sampling;
};
ElasticBudgets load_budgets(const std::string& text);

// The budgets drawn for one step: indices into `budgets`, ascending, a deterministic function of (seed, step)
// (so a resumed run draws what the uninterrupted one would). Without replacement.
std::vector<size_t> sample_budgets(const ElasticSampling& sampling, size_t count, uint64_t seed, int64_t step);

// ---------------------------------------------------------------- slicing
// The prefix plan of a budget on a nested model: the first units of every axis, and with drop_count the last
// layers of `layer_ranking` removed. The target's criteria fields are ignored (the order is the criterion).
PrunePlan nested_plan(const ModelConfig& nested, const PruneTarget& budget, const std::vector<int64_t>& layer_ranking);
// --budget as given: the name of a budget in `info`, or a shape (JSON file or inline JSON).
ElasticBudget resolve_budget(const std::string& text, const ElasticInfo& info);

// The budget as a model whose tensors are slices of `nested`'s: index_select keeps the graph, so gradients of a
// loss on the slice reach the nested model's tensors (elastic distillation). Whole tensors are shared, not copied.
NemotronH slice_model(const NemotronH& nested, const PrunePlan& plan);

}  // namespace mp
