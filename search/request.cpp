// A search as data (configs/search/*.json or the CLI's flags, one set of names): parsing and resolution into
// the parent config, the hardware profile and SearchOptions. The CLI overlays the flags it was given on the file.
#include <algorithm>
#include <cmath>
#include <set>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/search.h"


namespace mp::search {

namespace {

// The keys a request may hold, and the JSON kinds each accepts.
enum class Kind { Text, Integer, Number, List };
const std::vector<std::pair<const char*, Kind>>& known_keys() {
  static const std::vector<std::pair<const char*, Kind>> keys = {
      {"source", Kind::Text},          {"hardware", Kind::Text},         {"context", Kind::Text},
      {"batch", Kind::Integer},        {"workload", Kind::Text},         {"scores", Kind::Text},
      {"depth_criterion", Kind::Text}, {"budget_gib", Kind::Number},     {"reserve", Kind::Text},
      {"margin_gib", Kind::Number},    {"weights_dtype", Kind::Text},    {"kv_dtype", Kind::Text},
      {"conv_state_dtype", Kind::Text}, {"ssm_state_dtype", Kind::Text}, {"prefill_chunk", Kind::Integer},
      {"depth", Kind::Text},           {"drop_mamba", Kind::Text},       {"drop_attention", Kind::Text},
      {"drop_mlp", Kind::Text},        {"drop_total", Kind::Text},       {"hidden", Kind::Text},
      {"ffn", Kind::Text},             {"mamba_heads", Kind::Text},      {"mamba_head_dim", Kind::Text},
      {"attention_heads", Kind::Text}, {"min_params", Kind::Number},     {"max_params", Kind::Number},
      {"proxy", Kind::Text},           {"keep", Kind::Integer},          {"keep_infeasible", Kind::Integer},
      {"reference", Kind::List},       {"drop_moe", Kind::Text},         {"experts", Kind::Text},
      {"expert_ffn", Kind::Text},      {"shared_ffn", Kind::Text},       {"min_active_params", Kind::Number},
      {"max_active_params", Kind::Number}};
  return keys;
}

std::string normalise(std::string key) {
  std::replace(key.begin(), key.end(), '-', '_');
  return key;
}

const Kind* kind_of(const std::string& key) {
  for (auto& [k, kind] : known_keys())
    if (key == k) return &kind;
  return nullptr;
}

// Numbers given where text is expected (ranges, contexts) become their decimal text.
json coerce(const std::string& key, const json& v, Kind kind, const std::string& what) {
  auto bad = [&](const char* expected) -> json {
    fail(what, ": \"", key, "\" must be ", expected, ", found ", v.dump());
  };
  switch (kind) {
    case Kind::Text:
      if (v.is_string()) return v;
      if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
      return bad("a string (or an integer)");
    case Kind::Integer:
      if (v.is_number_integer()) return v;
      if (v.is_string()) {
        try {
          size_t pos = 0;
          int64_t n = std::stoll(v.get<std::string>(), &pos);
          if (pos == v.get<std::string>().size()) return n;
        } catch (const std::exception&) {
        }
      }
      return bad("an integer");
    case Kind::Number:
      if (v.is_number()) {
        double d = v.get<double>();
        if (std::isfinite(d)) return d;
      }
      if (v.is_string()) {
        try {
          size_t pos = 0;
          double d = std::stod(v.get<std::string>(), &pos);
          if (pos == v.get<std::string>().size() && std::isfinite(d)) return d;
        } catch (const std::exception&) {
        }
      }
      return bad("a number");
    case Kind::List: {
      json out = json::array();
      if (v.is_string()) out.push_back(v);
      else if (v.is_array()) {
        for (auto& e : v) {
          if (!e.is_string()) return bad("a list of strings");
          out.push_back(e);
        }
      } else {
        return bad("a list of strings");
      }
      return out;
    }
  }
  return v;
}

std::string text_or(const json& values, const char* key, const std::string& fallback) {
  return values.contains(key) ? values.at(key).get<std::string>() : fallback;
}

}  // namespace

SearchRequest SearchRequest::from_json(const json& j, const std::string& what) {
  MP_CHECK(j.is_object(), what, ": a search request must be a JSON object of option names and values");
  SearchRequest r;
  r.origin = what;
  for (auto& [raw, value] : j.items()) {
    if (raw.empty() || raw[0] == '_' || raw == "description") continue;
    r.set(raw, value);
  }
  return r;
}

SearchRequest SearchRequest::load(const std::string& name_or_path) {
  std::string path = find_config_file("search", name_or_path);
  return from_json(read_json_file(path), path);
}

void SearchRequest::set(const std::string& raw, json value) {
  std::string key = normalise(raw);
  const Kind* kind = kind_of(key);
  if (!kind) {
    std::string known;
    for (auto& [k, _] : known_keys()) known += (known.empty() ? "" : ", ") + std::string(k);
    fail(origin, ": unknown key \"", raw, "\" (known: ", known, ")");
  }
  values[key] = coerce(key, value, *kind, origin);
}

bool SearchRequest::has(const std::string& key) const { return values.contains(normalise(key)); }

ModelConfig load_model_source(const std::string& source) {
  if (fs::exists(source)) return load_config(source);
  return load_config(find_config_file("models", source));
}

PreparedSearch prepare_search(const SearchRequest& request) {
  const json& v = request.values;
  const std::string& what = request.origin;
  MP_CHECK(v.contains("source"), what, ": no source (a checkpoint, a config.json or a configs/models name)");
  MP_CHECK(v.contains("hardware"), what, ": no hardware (a configs/hardware name such as a10g, or a profile path)");
  PreparedSearch p;
  p.parent = load_model_source(v.at("source").get<std::string>());
  p.hardware = load_hardware(v.at("hardware").get<std::string>());
  SearchOptions& o = p.options;
  auto integer = [&](const char* key, int64_t fallback) { return v.contains(key) ? v.at(key).get<int64_t>() : fallback; };
  auto number = [&](const char* key, double fallback) { return v.contains(key) ? v.at(key).get<double>() : fallback; };
  auto range = [&](const char* key, const IntRange& fallback) {
    if (!v.contains(key)) return fallback;
    try {
      return parse_range(v.at(key).get<std::string>());
    } catch (const Error& e) {
      fail(what, ": \"", key, "\": ", e.what());
    }
  };

  o.setup.context = parse_token_count(text_or(v, "context", "131072"));
  o.setup.batch = integer("batch", 1);
  MP_CHECK(o.setup.batch > 0, what, ": batch must be positive");
  o.setup.weights = parse_dtype(text_or(v, "weights_dtype", "bfloat16"));
  o.setup.kv_cache = parse_dtype(text_or(v, "kv_dtype", "bfloat16"));
  o.setup.conv_state = parse_dtype(text_or(v, "conv_state_dtype", "bfloat16"));
  o.setup.ssm_state = parse_dtype(text_or(v, "ssm_state_dtype", p.parent.mamba_ssm_cache_dtype));
  o.setup.prefill_chunk = integer("prefill_chunk", 2048);
  MP_CHECK(o.setup.prefill_chunk >= 0, what, ": prefill_chunk must not be negative");
  const double margin = number("margin_gib", 0);
  MP_CHECK(margin >= 0, what, ": margin_gib must not be negative");
  o.setup.runtime_margin_bytes = margin * kGiB;
  o.workload = parse_workload(text_or(v, "workload", "8k-in,16k-out"));
  const std::string reserve = text_or(v, "reserve", "");
  const double budget_gib = number("budget_gib", 0);
  o.budget = make_budget(p.hardware, reserve.empty() ? std::vector<Reservation>{} : parse_reservations(reserve),
                         budget_gib > 0 ? std::optional<double>(budget_gib) : std::nullopt);

  if (v.contains("reference"))
    for (auto& r : v.at("reference")) {
      const std::string name = r.get<std::string>();
      o.references.emplace_back(fs::stem(name), load_model_source(name));
    }
  // The default grids hold the published students of this parent (configs/models) and the references, so that
  // a search without ranges can land on the shapes NVIDIA shipped.
  std::vector<ModelConfig> hold;
  for (auto& [_, c] : published_students(p.parent)) hold.push_back(c);
  for (auto& [_, c] : o.references) hold.push_back(c);
  const SearchSpace d = default_space(p.parent, hold);
  SearchSpace& s = o.space;
  s = d;
  const std::string depth = text_or(v, "depth", "per-type");
  MP_CHECK(depth == "per-type" || depth == "total", what, ": depth must be per-type or total, found \"", depth, "\"");
  s.depth_per_type = depth == "per-type";
  s.drop_mamba = range("drop_mamba", d.drop_mamba);
  s.drop_attention = range("drop_attention", d.drop_attention);
  s.drop_mlp = range("drop_mlp", d.drop_mlp);
  s.drop_moe = range("drop_moe", d.drop_moe);
  s.drop_total = range("drop_total", d.drop_total);
  // Per-type depth: the default bounds the total at NVIDIA's 20%; an explicit drop_total replaces that bound.
  s.bound_total = s.depth_per_type ? (v.contains("drop_total") ? true : d.bound_total) : true;
  s.hidden = range("hidden", d.hidden);
  s.ffn = range("ffn", d.ffn);
  s.mamba_heads = range("mamba_heads", d.mamba_heads);
  s.mamba_head_dim = range("mamba_head_dim", d.mamba_head_dim);
  s.attention_heads = range("attention_heads", d.attention_heads);
  s.experts = range("experts", d.experts);
  s.expert_ffn = range("expert_ffn", d.expert_ffn);
  s.shared_ffn = range("shared_ffn", d.shared_ffn);
  s.min_params = number("min_params", 0) * 1e9;
  s.max_params = number("max_params", 0) * 1e9;
  MP_CHECK(s.min_params >= 0 && s.max_params >= 0, what, ": min_params and max_params must not be negative");
  s.min_active_params = number("min_active_params", 0) * 1e9;
  s.max_active_params = number("max_active_params", 0) * 1e9;
  MP_CHECK(s.min_active_params >= 0 && s.max_active_params >= 0, what,
           ": min_active_params and max_active_params must not be negative");

  if (v.contains("scores")) {
    const std::string path = v.at("scores").get<std::string>();
    const Scores scores = read_scores(path);
    check_scores_fit(scores, p.parent, path);
    o.scores = ImportanceScores::from_scores(scores, path, text_or(v, "depth_criterion", ""));
  }
  o.proxy = parse_proxy(text_or(v, "proxy", "auto"));
  o.keep_feasible = integer("keep", 200);
  o.keep_infeasible = integer("keep_infeasible", 50);
  MP_CHECK(o.keep_feasible >= 0 && o.keep_infeasible >= 0, what, ": keep and keep_infeasible must not be negative");
  return p;
}

}  // namespace mp::search
