// scores.json: what the scoring stage measured, the one reader and writer of the file, and the checks that tie
// a scores file to one model. Computing scores is importance.h (mp_pruning); these types are in mp_io so that the
// search (which must not depend on pruning) reads the same file through the same reader.
//
// Schema (format "minipuzzle-scores", version 1) — the file `minipuzzle score` writes and the pruner and search read:
// {
//   "format": "minipuzzle-scores", "version": 1,
//   "model": {"fingerprint": "<shape fingerprint>", "pattern": "M-*-", "hidden_size": H, ...},
//   "calibration": {"source": "...", "samples": N, "seq_len": L, "tokens": N*L},
//   "reduction": "mean_l2",                      // how activations were aggregated (see Reduction)
//   "hidden": {"scores": [H floats]},            // embedding channels: pre-mixer norm outputs over all layers
//   "layers": [ {                                // one entry per layer, in order
//       "index": i, "type": "mamba" | "attention" | "mlp",
//       "depth": {"lm_loss_increase": x, "kl": x, "mse_hidden": x, "mse_logits": x, "block_influence": x},
//       "mlp":       {"neurons": [ffn floats]},
//       "attention": {"heads": [heads floats],           // input of o_proj per head (NVIDIA's criterion)
//                     "heads_out": [heads floats],       // each head's output through o_proj
//                     "kv_groups": [kv floats]},
//       "taylor":    {"mlp_neurons"|"attn_heads"|"mamba_heads": [...]}   // with --taylor
//       "moe":       {"experts": [E], "frequency": [E], "loss": [E],   // see MoeScores
//                     "expert_channels": [E*F], "shared": [S]}
//       "mamba":     {"heads": [H floats],              // from the x slice of in_proj (default criterion)
//                     "heads_out": [H floats],          // alternative: each head's output through out_proj
//                     "heads_flap": [H floats],         // alternative: FLAP (|W_out col|^2 x input variance)
//                     "head_dim": [P floats],           // head_dim positions, one global ranking
//                     "heads_nested": [H floats],       // Minitron-SSM: scored over the kept head_dim only
//                     "groups": [G floats], "channels": [H*P floats, head-major],
//                     "head_rank_in_group": [[ids best first] x G]}
//   } ],
//   "depth_blocks": {"k": k, "criterion": "...", "blocks": [{"start": i, "lm_loss_increase": x, ...}]},
//   "iterative_removal": {"criterion": "mse_logits", "order": [layer ids, first removed first],
//                         "scores": [x ...]}
// }
// Larger is more important everywhere. Fields that were not computed are absent.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"

namespace mp {

// Aggregation of an activation [B,T,C] into per-channel scores [C].
enum class Reduction {
  MeanL2,    // mean of |a| over the sequence, then L2 over samples (NVIDIA's default, Minitron's best)
  Mean,      // mean of |a| over sequence and samples
  L2,        // L2 over sequence and samples
  Variance,  // variance over all tokens
};
Reduction parse_reduction(const std::string& name);
const char* reduction_name(Reduction r);

// A stable fingerprint of the shape fields of a config, so a scores file is not applied to another model.
std::string shape_fingerprint(const ModelConfig& config);

struct MambaScores {
  std::vector<double> heads, heads_out, heads_flap, head_dim, heads_nested, groups;
  std::vector<double> channels;  // [H*P] per-channel x scores (head-major): the pruner's nested ranking input
  std::vector<std::vector<int64_t>> head_rank_in_group;
};

// MoE layers. Per routed expert: "experts" = the L2 norm over calibration tokens of each expert's
// router-weighted output ||w_e(x) E_e(x)|| (0 for tokens not routed to it; ModelOpt's criterion for Nemotron 3),
// "frequency" = the fraction of tokens routed to it, "loss" = the LM-loss increase when it is removed (masked
// out of the router; optional). Channels: "expert_channels" [E*F, expert-major] = per expert, the L2 norm of each
// relu^2 channel over its routed tokens; "shared" [S] = the shared expert's channels (the MLP-neuron reduction).
struct MoeScores {
  std::vector<double> experts, frequency, loss, expert_channels, shared;
};

struct DepthScores {
  std::map<std::string, double> by_criterion;  // "lm_loss_increase", "kl", "mse_hidden", "mse_logits", ...
};

struct LayerScores {
  int64_t index = 0;
  LayerType type = LayerType::Mlp;
  DepthScores depth;
  std::vector<double> mlp_neurons;
  std::vector<double> attn_heads, attn_kv_groups;
  std::vector<double> attn_heads_out;  // each head's output through o_proj
  MambaScores mamba;
  MoeScores moe;
  std::map<std::string, std::vector<double>> taylor;  // first-order Taylor: "mlp_neurons", "attn_heads", "mamba_heads"
};

struct BlockScore {
  int64_t start = 0;
  std::map<std::string, double> by_criterion;
};

struct Scores {
  std::string fingerprint;
  std::string pattern;
  json model;        // a few shape fields, for reports
  json calibration;  // source, samples, seq_len, tokens
  Reduction reduction = Reduction::MeanL2;
  std::vector<double> hidden;
  std::vector<LayerScores> layers;
  int64_t block_k = 0;
  std::string block_criterion;
  std::vector<BlockScore> blocks;
  std::string removal_criterion;
  std::vector<int64_t> removal_order;
  std::vector<double> removal_scores;

  json to_json() const;
  static Scores from_json(const json& j, const std::string& what);
  // Throws mp::Error when the scores were computed on a model of another shape.
  void check_matches(const ModelConfig& config, const std::string& what) const;
};

Scores read_scores(const std::string& path);
void write_scores(const std::string& path, const Scores& scores);
// Checks that scores describe a model of this shape (pattern, layer types, every width; the fingerprint when the
// file has one), naming the first mismatch. Throws mp::Error.
void check_scores_fit(const Scores& scores, const ModelConfig& config, const std::string& what);

}  // namespace mp
