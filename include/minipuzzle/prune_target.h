// The pruning target: the shape a parent is pruned to (widths, MoE axes, dropped layers, ranking criteria), and
// its one JSON reader and writer. The search writes every candidate in its report in this form and the pruner
// reads it back (`prune --target REPORT.json#id`); in-process callers build it with target_from_config. It lives
// in mp_io, below both the search and pruning libraries (neither includes the other).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"

namespace mp {

// The shape to prune to. Unset widths keep the parent's.
struct PruneTarget {
  std::optional<int64_t> hidden_size, intermediate_size, num_attention_heads, num_key_value_heads;
  std::optional<int64_t> mamba_num_heads, mamba_head_dim, n_groups;
  // MoE layers: routed experts kept per layer (the same count in every layer, so transformers' config describes
  // it; which experts go differs per layer), expert and shared-expert widths, experts per token.
  std::optional<int64_t> n_routed_experts, moe_intermediate_size, moe_shared_expert_intermediate_size,
      num_experts_per_tok;
  // Which MoeScores field ranks experts: "experts" (router-weighted output norm), "frequency" or "loss".
  std::string expert_criterion = "experts";
  // MTP layers (`mtp.*`) are copied unchanged when the target leaves every width they depend on (hidden size,
  // attention heads, MoE widths and expert count) as it was; otherwise pruning refuses unless drop_mtp is set.
  bool drop_mtp = false;
  std::vector<int64_t> drop_layers;  // parent layer indices to remove
  int64_t drop_count = 0;            // or: remove this many, the least important by `depth_criterion`
  // A DepthScores key ("lm_loss_increase", "kl", "mse_hidden", "mse_logits", "block_influence") or "iterative"
  // (the scores' iterative removal order).
  std::string depth_criterion = "lm_loss_increase";
  bool mamba_group_removal = false;            // reach mamba_num_heads by removing whole groups
  // heads | heads_out | heads_flap | heads_nested (stored scores), or nested: Minitron-SSM's heads scored over
  // the head_dim positions this target keeps (from the scores' per-channel x scores).
  std::string mamba_head_criterion = "heads";
  // Set when the target came as a full student config.json (search candidate): fields pruning cannot change
  // (vocab, state size, attention head_dim, ...) are checked against the parent, and the layer pattern after
  // dropping must equal this one.
  std::optional<ModelConfig> full_config;
  std::string origin = "target";  // where it came from, for error messages

  // Accepted forms: {"hidden_size"|"hidden", "intermediate_size"|"ffn", "num_attention_heads"|"attn_heads",
  // "num_key_value_heads"|"kv_heads", "mamba_num_heads"|"mamba_heads", "mamba_head_dim", "n_groups",
  // "drop_layers": [..], "drop_count": n, "depth_criterion", "mamba_group_removal", "mamba_head_criterion",
  // "n_routed_experts"|"experts", "moe_intermediate_size"|"expert_ffn", "moe_shared_expert_intermediate_size"|
  // "shared_ffn", "num_experts_per_tok"|"top_k", "expert_criterion", "drop_mtp"};
  // a full student config.json (has "hybrid_override_pattern" or "layers_block_type") with "dropped_layers";
  // a search candidate {"id", "config": {...}, "dropped_layers": [...]}.
  static PruneTarget from_json(const json& j, const std::string& what);
  // The form from_json reads back: a target with a full_config as a search candidate {"config": {...},
  // "dropped_layers": [...]} (the candidate entries of a search report are this plus the search's own fields),
  // otherwise the partial shape with the long field names. Only settings that differ from the defaults are
  // written (for a full config, inside "config", where from_json reads them).
  json to_json() const;
};

// A student config (e.g. a search candidate's) plus the parent layers it drops, as a target (full_config set).
PruneTarget target_from_config(const ModelConfig& student, const std::vector<int64_t>& dropped_layers);

}  // namespace mp
