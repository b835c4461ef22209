// Pruning targets from JSON: a partial shape, a full student config.json, a search candidate, or a candidate
// looked up by id in a search report (REPORT.json#id).
#include <fstream>
#include <set>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/pruning.h"


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

PruneTarget target_from_config(const ModelConfig& student, const std::vector<int64_t>& dropped_layers) {
  json j = student.to_json();
  j["dropped_layers"] = dropped_layers;
  return PruneTarget::from_json(j, "candidate " + student.pattern());
}

static std::string read_text(const std::string& path) {
  std::ifstream f(path);
  MP_CHECK(f.good(), path, ": cannot read the target file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static const json* find_candidate(const json& report, const std::string& id) {
  auto matches = [&](const json& c) { return c.is_object() && c.contains("id") && c.at("id") == id; };
  if (report.contains("candidates") && report.at("candidates").is_array())
    for (auto& c : report.at("candidates"))
      if (matches(c)) return &c;
  if (report.contains("parent") && matches(report.at("parent"))) return &report.at("parent");
  if (report.contains("references") && report.at("references").is_array())
    for (auto& r : report.at("references")) {
      if (!r.contains("candidate")) continue;
      if (matches(r.at("candidate")) || (r.contains("name") && r.at("name") == id)) return &r.at("candidate");
    }
  return nullptr;
}

PruneTarget load_target(const std::string& text) {
  std::string trimmed = text;
  trimmed.erase(0, trimmed.find_first_not_of(" \t\n"));
  if (!trimmed.empty() && trimmed[0] == '{') return PruneTarget::from_json(parse_json_lenient(trimmed, "--target"), "--target");
  auto hash = text.rfind('#');
  if (hash != std::string::npos && !fs::exists(text)) {
    std::string path = text.substr(0, hash), id = text.substr(hash + 1);
    MP_CHECK(!id.empty(), text, ": expected REPORT.json#<candidate id>");
    json report = parse_json_lenient(read_text(path), path);
    const json* c = find_candidate(report, id);
    if (!c) {
      std::string some;
      if (report.contains("candidates") && report.at("candidates").is_array()) {
        int n = 0;
        for (auto& e : report.at("candidates")) {
          if (n++ == 5) break;
          if (e.contains("id")) some += (some.empty() ? "" : ", ") + e.at("id").get<std::string>();
        }
      }
      fail(path, ": no candidate with id \"", id, "\" in this search report",
           some.empty() ? std::string() : " (first ids: " + some + ")");
    }
    return PruneTarget::from_json(*c, path + "#" + id);
  }
  return PruneTarget::from_json(parse_json_lenient(read_text(text), text), text);
}

}  // namespace mp
