// Before/after summary of a pruning plan: parameters, weight memory, shape, and each layer's widths.
#include <cstdio>
#include <sstream>

#include "minipuzzle/pruning.h"

namespace mp {

namespace {

json shape_json(const ModelConfig& c) {
  return {{"layers", c.num_layers()},
          {"pattern", c.pattern()},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads},
          {"mamba_num_heads", c.mamba_num_heads},
          {"mamba_head_dim", c.mamba_head_dim},
          {"n_groups", c.n_groups},
          {"parameters", count_parameters(c)}};
}

json shape_json_with_moe(const ModelConfig& c) {
  json j = shape_json(c);
  if (c.count(LayerType::Moe)) {
    j["n_routed_experts"] = c.n_routed_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["moe_shared_expert_intermediate_size"] = c.moe_shared_expert_intermediate_size;
  }
  return j;
}

std::string layer_width(const json& l) {
  const std::string type = l.at("type");
  char buf[128];
  if (type == "mlp") {
    std::snprintf(buf, sizeof buf, "ffn %lld", static_cast<long long>(l.at("ffn").get<int64_t>()));
  } else if (type == "attention") {
    std::snprintf(buf, sizeof buf, "%lld heads / %lld kv", static_cast<long long>(l.at("heads").get<int64_t>()),
                  static_cast<long long>(l.at("kv_heads").get<int64_t>()));
  } else if (type == "moe") {
    std::snprintf(buf, sizeof buf, "%lld experts x %lld, top %lld, shared %lld",
                  static_cast<long long>(l.at("experts").get<int64_t>()),
                  static_cast<long long>(l.at("expert_ffn").get<int64_t>()),
                  static_cast<long long>(l.at("top_k").get<int64_t>()),
                  static_cast<long long>(l.at("shared_ffn").get<int64_t>()));
  } else {
    std::snprintf(buf, sizeof buf, "%lld heads x %lld (%lld groups)", static_cast<long long>(l.at("heads").get<int64_t>()),
                  static_cast<long long>(l.at("head_dim").get<int64_t>()),
                  static_cast<long long>(l.at("groups").get<int64_t>()));
  }
  return buf;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v), out;
  int n = 0;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    if (n && n % 3 == 0 && *it != '-') out.insert(out.begin(), ',');
    out.insert(out.begin(), *it);
    ++n;
  }
  return out;
}

}  // namespace

json prune_summary(const PrunePlan& plan, double bytes_per_param) {
  json layers = json::array();
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const LayerPlan& l = plan.layers[i];
    json e{{"index", i}, {"source", l.source}, {"type", layer_type_name(l.type)}};
    if (l.type == LayerType::Mlp) e["ffn"] = l.mlp_neurons.size();
    if (l.type == LayerType::Attention) {
      e["heads"] = l.attn_heads.size();
      e["kv_heads"] = l.attn_kv_heads.size();
    }
    if (l.type == LayerType::Mamba) {
      e["heads"] = l.mamba_heads.size();
      e["head_dim"] = l.mamba_head_dim.size();
      e["groups"] = l.mamba_groups.size();
    }
    if (l.type == LayerType::Moe) {
      e["experts"] = l.moe_experts.size();
      e["expert_ffn"] = l.moe_channels.empty() ? 0 : l.moe_channels[0].size();
      e["shared_ffn"] = l.moe_shared.size();
      e["top_k"] = l.moe_top_k;
    }
    layers.push_back(e);
  }
  const int64_t before = count_parameters(plan.source), after = count_parameters(plan.target);
  return {{"before", shape_json_with_moe(plan.source)},
          {"after", shape_json_with_moe(plan.target)},
          {"dropped_layers", plan.dropped_layers},
          {"parameters", {{"before", before}, {"after", after}, {"ratio", before ? double(after) / before : 0.0}}},
          {"weight_bytes",
           {{"bytes_per_param", bytes_per_param}, {"before", before * bytes_per_param}, {"after", after * bytes_per_param}}},
          {"layers", layers}};
}

std::string format_prune_summary(const json& s) {
  std::ostringstream os;
  char line[256];
  const json& b = s.at("before");
  const json& a = s.at("after");
  std::snprintf(line, sizeof line, "%-18s %-28s %-28s\n", "", "parent", "pruned");
  os << line;
  auto row = [&](const char* name, const std::string& x, const std::string& y) {
    std::snprintf(line, sizeof line, "%-18s %-28s %-28s\n", name, x.c_str(), y.c_str());
    os << line;
  };
  auto num = [](const json& v) { return std::to_string(v.get<int64_t>()); };
  row("layers", num(b["layers"]), num(a["layers"]));
  row("pattern", b["pattern"].get<std::string>().substr(0, 28), a["pattern"].get<std::string>().substr(0, 28));
  row("hidden", num(b["hidden_size"]), num(a["hidden_size"]));
  row("ffn", num(b["intermediate_size"]), num(a["intermediate_size"]));
  row("attention heads", num(b["num_attention_heads"]) + " / " + num(b["num_key_value_heads"]) + " kv",
      num(a["num_attention_heads"]) + " / " + num(a["num_key_value_heads"]) + " kv");
  row("mamba heads", num(b["mamba_num_heads"]) + " x " + num(b["mamba_head_dim"]) + " (" + num(b["n_groups"]) + " groups)",
      num(a["mamba_num_heads"]) + " x " + num(a["mamba_head_dim"]) + " (" + num(a["n_groups"]) + " groups)");
  const double ratio = s["parameters"]["ratio"].get<double>();
  char pct[32];
  std::snprintf(pct, sizeof pct, " (%.1f%%)", 100.0 * ratio);
  row("parameters", with_commas(s["parameters"]["before"].get<int64_t>()),
      with_commas(s["parameters"]["after"].get<int64_t>()) + pct);
  auto gib = [](double bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, bytes >= (1 << 30) ? "%.2f GiB" : "%.2f MiB",
                  bytes >= (1 << 30) ? bytes / (1 << 30) : bytes / (1 << 20));
    return std::string(buf);
  };
  char mem_label[32];
  std::snprintf(mem_label, sizeof mem_label, "weights (%gB/p)", s["weight_bytes"]["bytes_per_param"].get<double>());
  row(mem_label, gib(s["weight_bytes"]["before"].get<double>()), gib(s["weight_bytes"]["after"].get<double>()));
  if (!s["dropped_layers"].empty()) row("dropped layers", s["dropped_layers"].dump(), "");
  os << "layer  from  type       width\n";
  for (auto& l : s.at("layers")) {
    std::snprintf(line, sizeof line, "%-6lld %-5lld %-10s %s\n", static_cast<long long>(l["index"].get<int64_t>()),
                  static_cast<long long>(l["source"].get<int64_t>()), l["type"].get<std::string>().c_str(),
                  layer_width(l).c_str());
    os << line;
  }
  return os.str();
}

}  // namespace mp
