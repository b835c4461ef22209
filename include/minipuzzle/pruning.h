// Structured pruning of Nemotron-H: a target shape plus importance scores become a plan (which units of which
// parent layer survive), and the plan is realised tensor by tensor into a Hugging Face checkpoint that
// transformers loads, or in memory (for the search's zero-shot ranking).
//
// Group awareness, the point of this stage: Mamba-2 heads share B and C within their group, so every group keeps
// the same number of heads, chosen by rank within the group; a head carries its z, x and dt rows of in_proj, its
// conv1d channels, A_log, D, dt_bias, gated-norm weights and out_proj columns. Attention keeps the same number of
// query heads in every KV group (or drops whole KV groups). Everything is validated before anything is written.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/config.h"
#include "minipuzzle/json.h"
#include "minipuzzle/model.h"
#include "minipuzzle/prune_target.h"
#include "minipuzzle/scores.h"

namespace mp {

// ---------------------------------------------------------------- target
// PruneTarget (the shape to prune to, and its JSON forms) is minipuzzle/prune_target.h.

// TARGET as given on the command line: a JSON file, inline JSON text ("{...}"), or REPORT.json#<candidate id>
// (a `minipuzzle search` report; the candidate's config and dropped layers).
PruneTarget load_target(const std::string& text);

// ---------------------------------------------------------------- plan
// Kept units of one layer of the pruned model, as parent indices in ascending order.
struct LayerPlan {
  int64_t source = 0;  // the parent layer this one comes from
  LayerType type = LayerType::Mlp;
  std::vector<int64_t> mlp_neurons;
  std::vector<int64_t> attn_heads, attn_kv_heads;
  std::vector<int64_t> mamba_groups;    // kept SSM groups (their B and C rows stay whole)
  std::vector<int64_t> mamba_heads;     // kept heads, group by group
  std::vector<int64_t> mamba_head_dim;  // kept positions within every head (the same for all heads)
  std::vector<int64_t> moe_experts;                  // kept routed experts (ascending; equal count per n_group group)
  std::vector<std::vector<int64_t>> moe_channels;    // per kept expert (in moe_experts order): its kept channels
  std::vector<int64_t> moe_shared;                   // kept shared-expert channels
  int64_t moe_top_k = 0;                             // experts per token in the pruned model
  // Kept channels of d_inner (x, z, gated norm, out_proj columns): head h, position p -> h * head_dim + p.
  std::vector<int64_t> mamba_channels(int64_t parent_head_dim) const;
};

struct PrunePlan {
  ModelConfig source, target;
  std::vector<int64_t> hidden;          // kept embedding channels
  std::vector<int64_t> dropped_layers;  // parent indices, ascending
  std::vector<LayerPlan> layers;        // one per layer of the pruned model
  bool drop_mtp = false;                // the target drops the MTP layers (num_nextn_predict_layers -> 0)
  bool mtp_shapes_unchanged = true;     // the widths MTP tensors depend on are the parent's: copy them as they are

  bool is_identity() const;
  // Masks over the parent that zero exactly the removed width units (MLP neurons, attention heads, Mamba
  // channels); with skip_layers for dropped layers, the masked parent computes what the pruned model computes
  // when the hidden size is unchanged. Keys are parent layer indices.
  std::map<int64_t, LayerMask> parent_masks() const;
  std::vector<bool> parent_skip_layers() const;
  json to_json() const;  // kept indices per layer (for provenance files and debugging)
};

// Target shape + scores -> validated plan. Throws mp::Error before anything is written when the target is invalid
// (larger than the parent, heads not a multiple of groups, KV heads not dividing heads, unknown layer index, ...)
// or when the scores belong to another model. `scores` may be null when no axis needs ranking.
PrunePlan make_plan(const ModelConfig& source, const PruneTarget& target, const Scores* scores);

// ---------------------------------------------------------------- slicing
// How one tensor of the pruned model is cut from a parent tensor: index lists for dims 0 and 1 (empty: all).
struct TensorCut {
  TensorSpec out;  // name and shape in the pruned model
  std::string source_name;
  std::vector<int64_t> rows, cols;
  bool identity() const { return rows.empty() && cols.empty(); }
};
// One cut per tensor of expected_tensors(plan.target), in that order.
std::vector<TensorCut> plan_tensor_cuts(const PrunePlan& plan);
// Applies a cut (any device); the result is a new contiguous tensor.
at::Tensor cut_tensor(const at::Tensor& source, const TensorCut& cut);

// ---------------------------------------------------------------- realising a plan
struct PruneOptions {
  bool overwrite = false;
  uint64_t max_shard_bytes = 5ull << 30;
  bool copy_tokenizer = true;  // tokenizer / generation files beside the weights
  std::vector<std::string> extra_files;  // further files copied into the output (e.g. the plan as JSON)
  int threads = 0;  // reading, cutting and writing threads; 0: MINIPUZZLE_PRUNE_THREADS, else the cores (at most 8)
};

// Streams the parent checkpoint into `out_dir`: pieces of at most 16 MiB (a block of one tensor's rows) are read
// from the memory map, cut and written in place by a few threads (pages of the parent are released as they go),
// so peak memory is about threads x 2 pieces.
// Tensors keep their stored dtype; a plan equal to the parent gives the same bytes per tensor.
void prune_checkpoint(const Checkpoint& parent, const PrunePlan& plan, const std::string& out_dir,
                      const PruneOptions& options = {});

// The pruned model in memory, on the parent's device and dtype (every tensor a new copy).
NemotronH prune_in_memory(const NemotronH& parent, const PrunePlan& plan);

// Before/after parameters and weight memory (at `bytes_per_param`), and per-layer widths.
json prune_summary(const PrunePlan& plan, double bytes_per_param = 2.0);
// The same as a short fixed-width table for the terminal.
std::string format_prune_summary(const json& summary);

}  // namespace mp
