// PruneTarget's JSON forms (minipuzzle/prune_target.h): a partial shape, a full student config.json, or a search
// candidate; and the target of a student config built in memory.
#include "minipuzzle/prune_target.h"

#include <set>

#include "minipuzzle/error.h"

namespace mp {

namespace {

std::optional<int64_t> int_field(const json& j, std::initializer_list<const char*> keys, const std::string& what) {
  for (const char* k : keys) {
    if (!j.contains(k) || j.at(k).is_null()) continue;
    const json& v = j.at(k);
    MP_CHECK(v.is_number_integer() && v.get<int64_t>() > 0, what, ": \"", k, "\" must be a positive integer, found ",
             v.dump());
    return v.get<int64_t>();
  }
  return std::nullopt;
}

std::vector<int64_t> layer_list(const json& v, const char* key, const std::string& what) {
  MP_CHECK(v.is_array(), what, ": \"", key, "\" must be a list of layer indices, found ", v.dump());
  std::vector<int64_t> out;
  for (auto& e : v) {
    MP_CHECK(e.is_number_integer(), what, ": \"", key, "\" must hold integers, found ", e.dump());
    out.push_back(e.get<int64_t>());
  }
  return out;
}

const std::set<std::string>& shape_keys() {
  static const std::set<std::string> keys = {
      "hidden_size", "hidden", "intermediate_size", "ffn", "num_attention_heads", "attn_heads",
      "num_key_value_heads", "kv_heads", "mamba_num_heads", "mamba_heads", "mamba_head_dim", "n_groups",
      "drop_layers", "dropped_layers", "drop_count", "depth_criterion", "mamba_group_removal",
      "mamba_head_criterion", "id", "n_routed_experts", "experts", "moe_intermediate_size", "expert_ffn",
      "moe_shared_expert_intermediate_size", "shared_ffn", "num_experts_per_tok", "top_k", "expert_criterion",
      "drop_mtp"};
  return keys;
}

// The fields of the target that are not widths: they may sit beside a full config.
const std::vector<const char*>& target_only_keys() {
  static const std::vector<const char*> keys = {"drop_layers", "dropped_layers", "drop_count", "depth_criterion",
                                                "mamba_group_removal", "mamba_head_criterion", "expert_criterion",
                                                "drop_mtp", "id"};
  return keys;
}

// A full student config: every width of a layer type the student has is given.
void set_full_config(PruneTarget& t, const ModelConfig& c) {
  t.full_config = c;
  t.hidden_size = c.hidden_size;
  if (c.count(LayerType::Mlp)) t.intermediate_size = c.intermediate_size;
  if (c.count(LayerType::Attention)) {
    t.num_attention_heads = c.num_attention_heads;
    t.num_key_value_heads = c.num_key_value_heads;
  }
  if (c.count(LayerType::Mamba)) {
    t.mamba_num_heads = c.mamba_num_heads;
    t.mamba_head_dim = c.mamba_head_dim;
    t.n_groups = c.n_groups;
  }
  if (c.count(LayerType::Moe)) {
    t.n_routed_experts = c.n_routed_experts;
    t.moe_intermediate_size = c.moe_intermediate_size;
    t.moe_shared_expert_intermediate_size = c.moe_shared_expert_intermediate_size;
    t.num_experts_per_tok = c.num_experts_per_tok;
  }
}

}  // namespace

PruneTarget PruneTarget::from_json(const json& j, const std::string& what) {
  MP_CHECK(j.is_object(), what, ": a pruning target must be a JSON object, found ", j.dump().substr(0, 80));
  if (j.contains("config") && j.at("config").is_object()) {
    // A search candidate: the student's config plus the parent layers it drops.
    json merged = j.at("config");
    MP_CHECK(j.contains("dropped_layers"), what, ": search candidate has a \"config\" but no \"dropped_layers\"");
    merged["dropped_layers"] = j.at("dropped_layers");
    std::string id = j.contains("id") && j.at("id").is_string() ? j.at("id").get<std::string>() : "";
    return from_json(merged, id.empty() ? what : what + " (candidate " + id + ")");
  }
  PruneTarget t;
  t.origin = what;
  const char* drop_key = j.contains("dropped_layers") ? "dropped_layers" : "drop_layers";
  if (j.contains(drop_key) && !j.at(drop_key).is_null()) t.drop_layers = layer_list(j.at(drop_key), drop_key, what);

  if (j.contains("hybrid_override_pattern") || j.contains("layers_block_type")) {
    // A full student config.json: every width is given; the pattern must be the parent's minus dropped layers.
    ModelConfig c = ModelConfig::from_json(j, what);
    // The target's own fields are not the student's config (to_json puts them back beside it).
    for (const char* key : target_only_keys()) c.raw.erase(key);
    set_full_config(t, c);
  } else {
    for (auto& [key, _] : j.items()) {
      MP_CHECK(shape_keys().count(key), what, ": unknown field \"", key,
               "\" (expected hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, "
               "mamba_num_heads, mamba_head_dim, n_groups, drop_layers, drop_count, depth_criterion, "
               "mamba_group_removal, mamba_head_criterion, n_routed_experts, moe_intermediate_size, "
               "moe_shared_expert_intermediate_size, num_experts_per_tok, expert_criterion, drop_mtp)");
    }
    t.hidden_size = int_field(j, {"hidden_size", "hidden"}, what);
    t.intermediate_size = int_field(j, {"intermediate_size", "ffn"}, what);
    t.num_attention_heads = int_field(j, {"num_attention_heads", "attn_heads"}, what);
    t.num_key_value_heads = int_field(j, {"num_key_value_heads", "kv_heads"}, what);
    t.mamba_num_heads = int_field(j, {"mamba_num_heads", "mamba_heads"}, what);
    t.mamba_head_dim = int_field(j, {"mamba_head_dim"}, what);
    t.n_groups = int_field(j, {"n_groups"}, what);
    t.n_routed_experts = int_field(j, {"n_routed_experts", "experts"}, what);
    t.moe_intermediate_size = int_field(j, {"moe_intermediate_size", "expert_ffn"}, what);
    t.moe_shared_expert_intermediate_size = int_field(j, {"moe_shared_expert_intermediate_size", "shared_ffn"}, what);
    t.num_experts_per_tok = int_field(j, {"num_experts_per_tok", "top_k"}, what);
  }
  if (j.contains("drop_count")) {
    MP_CHECK(j.at("drop_count").is_number_integer() && j.at("drop_count").get<int64_t>() >= 0, what,
             ": \"drop_count\" must be a non-negative integer");
    t.drop_count = j.at("drop_count").get<int64_t>();
  }
  for (const char* key : {"depth_criterion", "mamba_head_criterion", "expert_criterion"})
    MP_CHECK(!j.contains(key) || j.at(key).is_string(), what, ": \"", key, "\" must be a string, found ",
             j.at(key).dump().substr(0, 80));
  if (j.contains("depth_criterion")) t.depth_criterion = j.at("depth_criterion").get<std::string>();
  if (j.contains("mamba_head_criterion")) t.mamba_head_criterion = j.at("mamba_head_criterion").get<std::string>();
  if (j.contains("expert_criterion")) t.expert_criterion = j.at("expert_criterion").get<std::string>();
  if (j.contains("drop_mtp")) {
    MP_CHECK(j.at("drop_mtp").is_boolean(), what, ": \"drop_mtp\" must be true or false");
    t.drop_mtp = j.at("drop_mtp").get<bool>();
  }
  if (j.contains("mamba_group_removal")) {
    MP_CHECK(j.at("mamba_group_removal").is_boolean(), what, ": \"mamba_group_removal\" must be true or false");
    t.mamba_group_removal = j.at("mamba_group_removal").get<bool>();
  }
  return t;
}

json PruneTarget::to_json() const {
  json j = json::object();
  const PruneTarget defaults;
  if (drop_count) j["drop_count"] = drop_count;
  if (depth_criterion != defaults.depth_criterion) j["depth_criterion"] = depth_criterion;
  if (mamba_head_criterion != defaults.mamba_head_criterion) j["mamba_head_criterion"] = mamba_head_criterion;
  if (expert_criterion != defaults.expert_criterion) j["expert_criterion"] = expert_criterion;
  if (mamba_group_removal) j["mamba_group_removal"] = true;
  if (drop_mtp) j["drop_mtp"] = true;
  if (full_config) {  // the search candidate form; the widths are the config's
    json config = full_config->to_json();
    config.update(j);
    return json{{"config", std::move(config)}, {"dropped_layers", drop_layers}};
  }
  const std::pair<const char*, const std::optional<int64_t>*> widths[] = {
      {"hidden_size", &hidden_size},
      {"intermediate_size", &intermediate_size},
      {"num_attention_heads", &num_attention_heads},
      {"num_key_value_heads", &num_key_value_heads},
      {"mamba_num_heads", &mamba_num_heads},
      {"mamba_head_dim", &mamba_head_dim},
      {"n_groups", &n_groups},
      {"n_routed_experts", &n_routed_experts},
      {"moe_intermediate_size", &moe_intermediate_size},
      {"moe_shared_expert_intermediate_size", &moe_shared_expert_intermediate_size},
      {"num_experts_per_tok", &num_experts_per_tok}};
  for (auto& [key, value] : widths)
    if (*value) j[key] = **value;
  if (!drop_layers.empty()) j["drop_layers"] = drop_layers;
  return j;
}

PruneTarget target_from_config(const ModelConfig& student, const std::vector<int64_t>& dropped_layers) {
  student.validate();
  PruneTarget t;
  t.origin = "candidate " + student.pattern();
  t.drop_layers = dropped_layers;
  set_full_config(t, student);
  return t;
}

}  // namespace mp
