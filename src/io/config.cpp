// config.json <-> ModelConfig. Defaults follow transformers' NemotronHConfig where it has them; sizes that
// define the tensors have no sensible default and are required.
#include "minipuzzle/config.h"

#include <cmath>
#include <limits>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"


namespace mp {

const char* layer_type_name(LayerType type) {
  switch (type) {
    case LayerType::Mamba: return "mamba";
    case LayerType::Attention: return "attention";
    case LayerType::Mlp: return "mlp";
    case LayerType::Moe: return "moe";
  }
  return "?";
}

static const char* hf_block_type(LayerType type) {
  switch (type) {
    case LayerType::Mamba: return "linear_attention";
    case LayerType::Attention: return "full_attention";
    case LayerType::Mlp: return "mlp";
    case LayerType::Moe: return "moe";
  }
  return "?";
}

std::vector<LayerType> parse_pattern(const std::string& pattern, const std::string& what) {
  std::vector<LayerType> layers;
  for (char c : pattern) {
    switch (c) {
      case 'M': layers.push_back(LayerType::Mamba); break;
      case '*': layers.push_back(LayerType::Attention); break;
      case '-': layers.push_back(LayerType::Mlp); break;
      case 'E': layers.push_back(LayerType::Moe); break;
      default: fail(what, ": hybrid_override_pattern has '", std::string(1, c), "'; expected M, *, - or E");
    }
  }
  return layers;
}

static LayerType parse_block_type(const std::string& s, const std::string& what) {
  if (s == "linear_attention" || s == "mamba" || s == "M") return LayerType::Mamba;
  if (s == "full_attention" || s == "attention" || s == "*") return LayerType::Attention;
  if (s == "mlp" || s == "-") return LayerType::Mlp;
  if (s == "moe" || s == "E") return LayerType::Moe;
  fail(what, ": layers_block_type has \"", s, "\"; expected linear_attention, full_attention, mlp or moe");
}

int64_t ModelConfig::count(LayerType type) const {
  int64_t n = 0;
  for (auto t : layers) n += (t == type);
  return n;
}

std::string ModelConfig::pattern() const {
  std::string s;
  for (auto t : layers) s += static_cast<char>(t);
  return s;
}

namespace {
struct Reader {
  const json& j;
  const std::string& what;
  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  int64_t required_int(const char* key) const {
    MP_CHECK(has(key), what, ": missing field \"", key, "\" (needed for this architecture)");
    return as_int(key);
  }
  int64_t as_int(const char* key) const {
    const json& v = j.at(key);
    MP_CHECK(v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()),
             what, ": field \"", key, "\" must be an integer, found ", v.dump());
    // 2^63 and above do not fit int64 (converting them is undefined behaviour); the size limits come later.
    MP_CHECK(!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(INT64_MAX), what, ": field \"", key,
             "\" is too large: ", v.dump());
    MP_CHECK(!v.is_number_float() || std::fabs(v.get<double>()) < 9.2e18, what, ": field \"", key,
             "\" is too large: ", v.dump());
    return v.get<int64_t>();
  }
  int64_t optional_int(const char* key, int64_t dflt) const { return has(key) ? as_int(key) : dflt; }
  double optional_double(const char* key, double dflt) const {
    return has(key) ? json_to_double(j.at(key), what + " field \"" + key + "\"") : dflt;
  }
  bool optional_bool(const char* key, bool dflt) const {
    if (!has(key)) return dflt;
    MP_CHECK(j.at(key).is_boolean(), what, ": field \"", key, "\" must be true or false");
    return j.at(key).get<bool>();
  }
  std::string optional_string(const char* key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    MP_CHECK(j.at(key).is_string(), what, ": field \"", key, "\" must be a string");
    return j.at(key).get<std::string>();
  }
};
}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& what) {
  MP_CHECK(j.is_object(), what, ": expected a JSON object");
  Reader r{j, what};
  ModelConfig c;
  c.raw = j;
  if (r.has("layers_block_type")) {
    MP_CHECK(j.at("layers_block_type").is_array(), what, ": layers_block_type must be a list");
    for (auto& v : j.at("layers_block_type")) {
      MP_CHECK(v.is_string(), what, ": layers_block_type entries must be strings");
      c.layers.push_back(parse_block_type(v.get<std::string>(), what));
    }
    if (r.has("hybrid_override_pattern")) {
      MP_CHECK(j.at("hybrid_override_pattern").is_string(), what, ": hybrid_override_pattern must be a string");
      auto from_pattern = parse_pattern(j.at("hybrid_override_pattern").get<std::string>(), what);
      MP_CHECK(from_pattern == c.layers, what, ": hybrid_override_pattern and layers_block_type disagree");
    }
  } else if (r.has("hybrid_override_pattern")) {
    MP_CHECK(j.at("hybrid_override_pattern").is_string(), what, ": hybrid_override_pattern must be a string");
    c.layers = parse_pattern(j.at("hybrid_override_pattern").get<std::string>(), what);
  } else {
    fail(what, ": missing field \"hybrid_override_pattern\" (or \"layers_block_type\"): the layer list");
  }
  MP_CHECK(!c.layers.empty(), what, ": the layer list is empty");
  if (r.has("num_hidden_layers")) {
    int64_t n = r.as_int("num_hidden_layers");
    MP_CHECK(n == c.num_layers(), what, ": num_hidden_layers is ", n, " but the layer pattern has ", c.num_layers(),
             " layers");
  }

  c.vocab_size = r.required_int("vocab_size");
  c.hidden_size = r.required_int("hidden_size");
  c.layer_norm_epsilon = r.optional_double("layer_norm_epsilon", 1e-5);
  c.tie_word_embeddings = r.optional_bool("tie_word_embeddings", false);
  c.torch_dtype = r.optional_string("torch_dtype", r.optional_string("dtype", "bfloat16"));

  if (c.count(LayerType::Attention)) {
    c.num_attention_heads = r.required_int("num_attention_heads");
    c.num_key_value_heads = r.optional_int("num_key_value_heads", c.num_attention_heads);
    int64_t dflt_head_dim = c.num_attention_heads ? c.hidden_size / c.num_attention_heads : 0;
    c.head_dim = r.optional_int("head_dim", r.optional_int("attention_head_dim", dflt_head_dim));
  } else {
    c.num_attention_heads = r.optional_int("num_attention_heads", 0);
    c.num_key_value_heads = r.optional_int("num_key_value_heads", c.num_attention_heads);
    c.head_dim = r.optional_int("head_dim", r.optional_int("attention_head_dim", 0));
  }
  if (c.count(LayerType::Mlp)) {
    c.intermediate_size = r.required_int("intermediate_size");
  } else {
    c.intermediate_size = r.optional_int("intermediate_size", 0);
  }
  c.mlp_hidden_act = r.optional_string("mlp_hidden_act", "relu2");
  c.mlp_bias = r.optional_bool("mlp_bias", false);

  bool mamba = c.count(LayerType::Mamba) > 0;
  auto mamba_int = [&](const char* key, int64_t dflt) { return mamba ? r.required_int(key) : r.optional_int(key, dflt); };
  c.mamba_num_heads = mamba_int("mamba_num_heads", 0);
  c.mamba_head_dim = mamba_int("mamba_head_dim", 0);
  c.ssm_state_size = mamba_int("ssm_state_size", 0);
  c.n_groups = r.optional_int("n_groups", r.optional_int("mamba_n_groups", 8));
  c.conv_kernel = r.optional_int("conv_kernel", r.optional_int("mamba_d_conv", 4));
  c.chunk_size = r.optional_int("chunk_size", r.optional_int("mamba_chunk_size", 128));
  c.time_step_min = r.optional_double("time_step_min", 0.001);
  if (r.has("time_step_limit")) {
    const json& lim = j.at("time_step_limit");
    MP_CHECK(lim.is_array() && lim.size() == 2, what, ": time_step_limit must be a list of two numbers");
    c.time_step_limit = {json_to_double(lim[0], what), json_to_double(lim[1], what)};
  }
  c.use_bias = r.optional_bool("use_bias", false);
  c.use_conv_bias = r.optional_bool("use_conv_bias", true);
  c.mamba_hidden_act = r.optional_string("mamba_hidden_act", "silu");
  c.mamba_ssm_cache_dtype = r.optional_string("mamba_ssm_cache_dtype", "float32");

  // MoE: the sizes that define tensors are required when there are 'E' layers; the routing options default as
  // in transformers' NemotronHConfig. `num_local_experts` is transformers' alias of n_routed_experts.
  bool moe = c.count(LayerType::Moe) > 0;
  auto moe_int = [&](const char* key, int64_t dflt) { return moe ? r.required_int(key) : r.optional_int(key, dflt); };
  c.n_routed_experts = r.has("n_routed_experts") || !r.has("num_local_experts") ? moe_int("n_routed_experts", 0)
                                                                                  : r.as_int("num_local_experts");
  c.num_experts_per_tok = moe_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = moe_int("moe_intermediate_size", 0);
  c.moe_shared_expert_intermediate_size = moe_int("moe_shared_expert_intermediate_size", 0);
  c.moe_latent_size = r.optional_int("moe_latent_size", 0);
  c.n_group = r.optional_int("n_group", 1);
  c.topk_group = r.optional_int("topk_group", 1);
  c.norm_topk_prob = r.optional_bool("norm_topk_prob", true);
  c.routed_scaling_factor = r.optional_double("routed_scaling_factor", 1.0);
  c.num_nextn_predict_layers = r.optional_int("num_nextn_predict_layers", 0);
  c.validate();
  return c;
}

void ModelConfig::validate() const {
  const std::string what = "config";
  MP_CHECK(vocab_size > 0, what, ": vocab_size must be positive, found ", vocab_size);
  MP_CHECK(hidden_size > 0, what, ": hidden_size must be positive, found ", hidden_size);
  // Limits on outside input: every size, and every tensor's element count, far above any real model but low
  // enough that shape products and parameter sums cannot overflow int64 anywhere downstream.
  MP_CHECK(num_layers() <= kMaxConfigLayers, what, ": ", num_layers(), " layers exceed the limit of ",
           kMaxConfigLayers, " (corrupt config?)");
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size},         {"hidden_size", hidden_size},       {"intermediate_size", intermediate_size},
      {"num_attention_heads", num_attention_heads}, {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},             {"mamba_num_heads", mamba_num_heads}, {"mamba_head_dim", mamba_head_dim},
      {"n_groups", n_groups},             {"ssm_state_size", ssm_state_size}, {"conv_kernel", conv_kernel},
      {"chunk_size", chunk_size},         {"n_routed_experts", n_routed_experts},
      {"num_experts_per_tok", num_experts_per_tok}, {"moe_intermediate_size", moe_intermediate_size},
      {"moe_shared_expert_intermediate_size", moe_shared_expert_intermediate_size},
      {"moe_latent_size", moe_latent_size}, {"n_group", n_group}, {"topk_group", topk_group},
      {"num_nextn_predict_layers", num_nextn_predict_layers}};
  for (auto& [name, value] : sizes)
    MP_CHECK(value >= 0 && value <= kMaxConfigSize, what, ": ", name, " is ", value, "; expected 0..", kMaxConfigSize,
             " (corrupt config?)");
  // The largest tensor of each kind (embedding / lm_head, MLP, attention q/o, Mamba in_proj, conv1d), in 128 bits.
  using wide = __int128;
  const wide h = hidden_size;
  const std::pair<const char*, wide> tensors[] = {
      {"embedding (vocab_size x hidden_size)", wide(vocab_size) * h},
      {"MLP (intermediate_size x hidden_size)", wide(intermediate_size) * h},
      {"attention (num_attention_heads x head_dim x hidden_size)", wide(num_attention_heads) * head_dim * h},
      {"attention (num_key_value_heads x head_dim x hidden_size)", wide(num_key_value_heads) * head_dim * h},
      {"Mamba in_proj", (2 * wide(mamba_num_heads) * mamba_head_dim + 2 * wide(n_groups) * ssm_state_size +
                         mamba_num_heads) * h},
      {"Mamba conv1d", (wide(mamba_num_heads) * mamba_head_dim + 2 * wide(n_groups) * ssm_state_size) * conv_kernel},
      {"MoE expert (moe_intermediate_size x expert dim)", wide(moe_intermediate_size) * moe_expert_dim()},
      {"MoE experts of one layer", wide(n_routed_experts) * moe_intermediate_size * moe_expert_dim()},
      {"MoE shared expert", wide(moe_shared_expert_intermediate_size) * h}};
  for (auto& [name, n] : tensors)
    MP_CHECK(n <= kMaxConfigTensorElements, what, ": the ", name, " tensor would have ", static_cast<double>(n),
             " elements, over the limit of ", kMaxConfigTensorElements, " (corrupt config?)");
  if (count(LayerType::Attention)) {
    MP_CHECK(num_attention_heads > 0 && head_dim > 0, what, ": attention layers need num_attention_heads and head_dim > 0");
    MP_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0, what,
             ": num_key_value_heads (", num_key_value_heads, ") must divide num_attention_heads (",
             num_attention_heads, ")");
  }
  if (count(LayerType::Mlp)) {
    MP_CHECK(intermediate_size > 0, what, ": MLP layers need intermediate_size > 0");
    MP_CHECK(mlp_hidden_act == "relu2", what, ": mlp_hidden_act \"", mlp_hidden_act,
             "\" is not supported (Nemotron-H uses relu2)");
  }
  if (count(LayerType::Mamba)) {
    MP_CHECK(mamba_num_heads > 0 && mamba_head_dim > 0 && ssm_state_size > 0, what,
             ": Mamba layers need mamba_num_heads, mamba_head_dim and ssm_state_size > 0");
    MP_CHECK(n_groups > 0 && mamba_num_heads % n_groups == 0, what, ": n_groups (", n_groups,
             ") must divide mamba_num_heads (", mamba_num_heads, ")");
    MP_CHECK(conv_kernel > 0 && chunk_size > 0, what, ": conv_kernel and chunk_size must be positive");
    MP_CHECK(mamba_hidden_act == "silu", what, ": mamba_hidden_act \"", mamba_hidden_act, "\" is not supported");
  }
  if (count(LayerType::Moe)) {
    MP_CHECK(n_routed_experts > 0 && moe_intermediate_size > 0 && moe_shared_expert_intermediate_size > 0, what,
             ": MoE layers need n_routed_experts, moe_intermediate_size and moe_shared_expert_intermediate_size > 0");
    MP_CHECK(num_experts_per_tok > 0 && num_experts_per_tok <= n_routed_experts, what, ": num_experts_per_tok (",
             num_experts_per_tok, ") must be 1..n_routed_experts (", n_routed_experts, ")");
    MP_CHECK(n_group > 0 && n_routed_experts % n_group == 0, what, ": n_group (", n_group,
             ") must divide n_routed_experts (", n_routed_experts, ")");
    // transformers scores a group by the sum of its two best experts, so a group needs two when there are groups.
    MP_CHECK(n_group == 1 || n_routed_experts / n_group >= 2, what, ": with n_group ", n_group,
             " each group must hold at least 2 experts (transformers sums a group's top two); n_routed_experts is ",
             n_routed_experts);
    MP_CHECK(topk_group > 0 && topk_group <= n_group, what, ": topk_group (", topk_group, ") must be 1..n_group (",
             n_group, ")");
    MP_CHECK(num_experts_per_tok <= topk_group * (n_routed_experts / n_group), what, ": num_experts_per_tok (",
             num_experts_per_tok, ") exceeds the experts in topk_group (", topk_group, ") groups of ",
             n_routed_experts / n_group);
    MP_CHECK(mlp_hidden_act == "relu2", what, ": mlp_hidden_act \"", mlp_hidden_act,
             "\" is not supported (Nemotron-H experts use relu2)");
    MP_CHECK(std::isfinite(routed_scaling_factor), what, ": routed_scaling_factor must be finite");
  }
}

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  if (!j.contains("architectures")) j["architectures"] = {"NemotronHForCausalLM"};
  if (!j.contains("model_type")) j["model_type"] = "nemotron_h";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers();
  j["hybrid_override_pattern"] = pattern();
  json types = json::array();
  for (auto t : layers) types.push_back(hf_block_type(t));
  j["layers_block_type"] = types;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  if (j.contains("attention_head_dim")) j["attention_head_dim"] = head_dim;
  j["mamba_num_heads"] = mamba_num_heads;
  j["mamba_head_dim"] = mamba_head_dim;
  j["n_groups"] = n_groups;
  j["ssm_state_size"] = ssm_state_size;
  j["conv_kernel"] = conv_kernel;
  j["chunk_size"] = chunk_size;
  j["layer_norm_epsilon"] = layer_norm_epsilon;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["use_bias"] = use_bias;
  j["use_conv_bias"] = use_conv_bias;
  j["mlp_bias"] = mlp_bias;
  if (count(LayerType::Moe) || j.contains("n_routed_experts")) {
    j["n_routed_experts"] = n_routed_experts;
    j.erase("num_local_experts");
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["moe_shared_expert_intermediate_size"] = moe_shared_expert_intermediate_size;
    if (moe_latent_size > 0) j["moe_latent_size"] = moe_latent_size;
    else if (j.contains("moe_latent_size")) j["moe_latent_size"] = nullptr;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
  }
  if (num_nextn_predict_layers > 0 || j.contains("num_nextn_predict_layers"))
    j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  auto boxed = [](double v) -> json {
    if (std::isinf(v)) return json{{"__float__", v > 0 ? "Infinity" : "-Infinity"}};
    if (std::isnan(v)) return json{{"__float__", "NaN"}};
    return v;
  };
  j["time_step_limit"] = json::array({boxed(time_step_limit.first), boxed(time_step_limit.second)});
  return j;
}

ModelConfig load_config(const std::string& path) {
  std::string p = path;
  if (fs::is_directory(p)) p = fs::join(p, "config.json");
  MP_CHECK(fs::exists(p), p, ": no config.json found (is this a Hugging Face checkpoint directory?)");
  return ModelConfig::from_json(read_json_file(p), p);
}

}  // namespace mp
