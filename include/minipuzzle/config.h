// Nemotron-H architecture configuration: every config.json field that changes the math, read from either
// layer-list form (NVIDIA's `hybrid_override_pattern` string or transformers 5.x `layers_block_type` list).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "minipuzzle/json.h"

namespace mp {

// Limits on outside input (config.json), checked by validate(): far above any real model, low enough that
// shape products and parameter counts cannot overflow int64 (layers x tensors x elements < 2^58).
constexpr int64_t kMaxConfigLayers = int64_t(1) << 14;
constexpr int64_t kMaxConfigSize = int64_t(1) << 24;            // any single size field
constexpr int64_t kMaxConfigTensorElements = int64_t(1) << 40;  // any single tensor

enum class LayerType : char { Mamba = 'M', Attention = '*', Mlp = '-', Moe = 'E' };

const char* layer_type_name(LayerType type);  // "mamba", "attention", "mlp", "moe"

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  std::vector<LayerType> layers;

  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;

  int64_t mamba_num_heads = 0;
  int64_t mamba_head_dim = 0;
  int64_t n_groups = 1;
  int64_t ssm_state_size = 0;
  int64_t conv_kernel = 4;
  int64_t chunk_size = 128;
  double time_step_min = 0.001;  // transformers clamps dt to [time_step_min, inf)
  std::pair<double, double> time_step_limit{0.0, 1.0 / 0.0};

  double layer_norm_epsilon = 1e-5;
  bool use_bias = false;       // in_proj / out_proj bias of the Mamba mixer
  bool use_conv_bias = true;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string mlp_hidden_act = "relu2";
  std::string mamba_hidden_act = "silu";
  std::string mamba_ssm_cache_dtype = "float32";
  std::string torch_dtype = "bfloat16";

  // Mixture-of-experts layers ('E', transformers' NemotronHMoE): a sigmoid top-k router (selection by score +
  // e_score_correction_bias, optionally within the best topk_group of n_group groups), routed experts that are
  // non-gated relu^2 MLPs of moe_intermediate_size (on moe_latent_size channels when that is set, with
  // fc1/fc2 latent projections around them), and one always-on shared-expert MLP.
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t moe_shared_expert_intermediate_size = 0;
  int64_t moe_latent_size = 0;  // 0: none (experts work on hidden_size channels)
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  // Multi-token-prediction layers (`mtp.*` tensors). transformers ignores them; we carry them through.
  int64_t num_nextn_predict_layers = 0;

  // The file as read, so that writing keeps fields we do not model (tokens ids, MoE/MTP fields, ...).
  json raw;

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t count(LayerType type) const;
  std::string pattern() const;  // "M-M*-..."
  int64_t mamba_d_inner() const { return mamba_num_heads * mamba_head_dim; }
  int64_t mamba_conv_dim() const { return mamba_d_inner() + 2 * n_groups * ssm_state_size; }
  int64_t mamba_in_proj_dim() const { return 2 * mamba_d_inner() + 2 * n_groups * ssm_state_size + mamba_num_heads; }
  int64_t moe_expert_dim() const { return moe_latent_size > 0 ? moe_latent_size : hidden_size; }  // experts' in/out

  // Throws mp::Error naming the field when the configuration cannot describe a valid model.
  void validate() const;
  // config.json text for this configuration (raw fields kept, ours updated, both layer-list forms written).
  json to_json() const;
  static ModelConfig from_json(const json& j, const std::string& what = "config.json");
};

ModelConfig load_config(const std::string& path);  // a config.json file or a directory holding one
std::vector<LayerType> parse_pattern(const std::string& pattern, const std::string& what);

}  // namespace mp
