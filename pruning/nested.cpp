// Nested order (include/minipuzzle/elastic.h): a permutation plan from importance scores, the prefix plan of a
// budget on the nested model, and differentiable slices for elastic distillation.
//
// The permutation is a PrunePlan of the parent's own shape whose index lists are permutations: the pruner's tensor
// cuts (pruning/slice.cpp) then move every unit with all of its rows and columns, group-aware, with no new cutting
// code. The prefix plan of a budget is make_plan with synthetic scores that decrease along every axis, so the
// budget goes through every validation the pruner has (group divisibility, GQA, sizes) and keeps the first units.
#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "minipuzzle/elastic.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"

namespace mp {

namespace {

std::vector<int64_t> iota_from(int64_t first, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// `members` by score, largest first; ties keep their order (lower index first), as the pruner's top_k does.
std::vector<int64_t> best_first(const std::vector<double>& score, std::vector<int64_t> members) {
  if (score.empty()) return members;
  std::stable_sort(members.begin(), members.end(), [&](int64_t a, int64_t b) {
    return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)];
  });
  return members;
}

void append(std::vector<int64_t>& out, const std::vector<int64_t>& more) { out.insert(out.end(), more.begin(), more.end()); }

void order_attention(LayerPlan& lp, const ModelConfig& c, const LayerScores& ls) {
  const int64_t kv = c.num_key_value_heads, per_group = c.num_attention_heads / kv;
  std::vector<double> group_score = ls.attn_kv_groups;
  if (group_score.empty() && !ls.attn_heads.empty()) {
    group_score.assign(static_cast<size_t>(kv), 0.0);
    for (int64_t h = 0; h < c.num_attention_heads; ++h) group_score[static_cast<size_t>(h / per_group)] += ls.attn_heads[h];
  }
  lp.attn_kv_heads = best_first(group_score, iota_from(0, kv));
  for (int64_t g : lp.attn_kv_heads) append(lp.attn_heads, best_first(ls.attn_heads, iota_from(g * per_group, per_group)));
}

void order_mamba(LayerPlan& lp, const ModelConfig& c, const LayerScores& ls) {
  const MambaScores& ms = ls.mamba;
  const int64_t H = c.mamba_num_heads, G = c.n_groups, per_group = H / G;
  lp.mamba_head_dim = best_first(ms.head_dim, iota_from(0, c.mamba_head_dim));
  std::vector<double> group_score = ms.groups;
  if (group_score.empty() && !ms.heads.empty()) {
    group_score.assign(static_cast<size_t>(G), 0.0);
    for (int64_t h = 0; h < H; ++h) group_score[static_cast<size_t>(h / per_group)] += ms.heads[h];
  }
  lp.mamba_groups = best_first(group_score, iota_from(0, G));
  for (int64_t g : lp.mamba_groups) {
    if (!ms.heads.empty() || static_cast<int64_t>(ms.head_rank_in_group.size()) != G) {
      append(lp.mamba_heads, best_first(ms.heads, iota_from(g * per_group, per_group)));
      continue;
    }
    // Only the stored within-group ranking (the pruner's fallback for the "heads" criterion).
    const auto& rank = ms.head_rank_in_group[static_cast<size_t>(g)];
    MP_CHECK(static_cast<int64_t>(rank.size()) == per_group, "scores: head_rank_in_group of layer ", ls.index,
             " group ", g, " lists ", rank.size(), " heads, expected ", per_group);
    std::set<int64_t> seen;
    for (int64_t h : rank) {
      const int64_t head = h < per_group ? g * per_group + h : h;
      MP_CHECK(head / per_group == g && seen.insert(head).second, "scores: head_rank_in_group of layer ", ls.index,
               " group ", g, " names head ", h, " twice or outside the group");
      lp.mamba_heads.push_back(head);
    }
  }
}

const std::vector<double>& expert_score(const MoeScores& m, const std::string& criterion) {
  if (criterion == "experts") return m.experts;
  if (criterion == "frequency") return m.frequency;
  if (criterion == "loss") return m.loss;
  fail("nested order: expert criterion \"", criterion, "\" is unknown; expected experts, frequency or loss");
}

void order_moe(LayerPlan& lp, const ModelConfig& c, const LayerScores& ls, const std::string& criterion) {
  const int64_t E = c.n_routed_experts, F = c.moe_intermediate_size, per = E / c.n_group;
  const auto& score = expert_score(ls.moe, criterion);
  for (int64_t g = 0; g < c.n_group; ++g) append(lp.moe_experts, best_first(score, iota_from(g * per, per)));
  for (int64_t e : lp.moe_experts) {
    std::vector<double> mine;
    if (!ls.moe.expert_channels.empty())
      mine.assign(ls.moe.expert_channels.begin() + e * F, ls.moe.expert_channels.begin() + (e + 1) * F);
    lp.moe_channels.push_back(best_first(mine, iota_from(0, F)));
  }
  lp.moe_shared = best_first(ls.moe.shared, iota_from(0, c.moe_shared_expert_intermediate_size));
  lp.moe_top_k = c.num_experts_per_tok;
}

bool is_identity_order(const std::vector<int64_t>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<int64_t>(i)) return false;
  return true;
}

std::vector<int64_t> rank_layers(const ModelConfig& c, const Scores& scores, const std::string& criterion) {
  const int64_t L = c.num_layers();
  std::vector<int64_t> removal;  // least important first
  if (criterion == "iterative") {
    if (scores.removal_order.empty()) return {};
    std::set<int64_t> listed(scores.removal_order.begin(), scores.removal_order.end());
    MP_CHECK(listed.size() == scores.removal_order.size(), "scores: the iterative removal order lists a layer twice");
    removal = scores.removal_order;
    // Layers the iterative run never removed are the most important; among them the lower index is kept longer.
    std::vector<int64_t> rest;
    for (int64_t i = 0; i < L; ++i)
      if (!listed.count(i)) rest.push_back(i);
    removal.insert(removal.end(), rest.rbegin(), rest.rend());
  } else {
    std::vector<double> importance;
    for (auto& l : scores.layers) {
      auto it = l.depth.by_criterion.find(criterion);
      if (it == l.depth.by_criterion.end()) return {};  // no depth scores: budgets cannot drop layers
      importance.push_back(it->second);
    }
    removal = iota_from(0, L);  // the k lowest scores first, ties by the lower index (the pruner's drop_count)
    std::stable_sort(removal.begin(), removal.end(), [&](int64_t a, int64_t b) {
      return importance[static_cast<size_t>(a)] < importance[static_cast<size_t>(b)];
    });
  }
  return std::vector<int64_t>(removal.rbegin(), removal.rend());
}

// Scores that decrease along every axis (and a depth score from the ranking): make_plan keeps prefixes.
Scores prefix_scores(const ModelConfig& c, const std::vector<int64_t>& layer_ranking) {
  auto desc = [](int64_t n) {
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = double(n - i);
    return v;
  };
  Scores s;
  s.pattern = c.pattern();
  s.hidden = desc(c.hidden_size);
  const int64_t L = c.num_layers();
  std::vector<double> depth(static_cast<size_t>(L), 0.0);
  for (size_t r = 0; r < layer_ranking.size(); ++r) depth[static_cast<size_t>(layer_ranking[r])] = double(L - int64_t(r));
  for (int64_t i = 0; i < L; ++i) {
    LayerScores l;
    l.index = i;
    l.type = c.layers[static_cast<size_t>(i)];
    if (!layer_ranking.empty()) l.depth.by_criterion["elastic_rank"] = depth[static_cast<size_t>(i)];
    switch (l.type) {
      case LayerType::Mlp: l.mlp_neurons = desc(c.intermediate_size); break;
      case LayerType::Attention:
        l.attn_heads = desc(c.num_attention_heads);
        l.attn_kv_groups = desc(c.num_key_value_heads);
        break;
      case LayerType::Mamba:
        l.mamba.heads = desc(c.mamba_num_heads);
        l.mamba.head_dim = desc(c.mamba_head_dim);
        l.mamba.groups = desc(c.n_groups);
        break;
      case LayerType::Moe: {
        l.moe.experts = desc(c.n_routed_experts);
        const auto one = desc(c.moe_intermediate_size);
        for (int64_t e = 0; e < c.n_routed_experts; ++e) l.moe.expert_channels.insert(l.moe.expert_channels.end(), one.begin(), one.end());
        l.moe.shared = desc(c.moe_shared_expert_intermediate_size);
        break;
      }
    }
    s.layers.push_back(std::move(l));
  }
  return s;
}

std::vector<int64_t> int_list(const json& j, const std::string& what) {
  MP_CHECK(j.is_array(), what, " must be a list of integers");
  std::vector<int64_t> v;
  for (auto& x : j) {
    MP_CHECK(x.is_number_integer(), what, " must be a list of integers");
    v.push_back(x.get<int64_t>());
  }
  return v;
}

json parse_text_or_file(const std::string& text, const std::string& what) {
  std::string t = text;
  t.erase(0, t.find_first_not_of(" \t\n"));
  if (!t.empty() && t[0] == '{') {
    json j = json::parse(t, nullptr, false);
    MP_CHECK(!j.is_discarded(), what, ": not valid JSON: ", text);
    return j;
  }
  MP_CHECK(fs::exists(text), what, ": ", text, " is neither a file nor inline JSON");
  return read_json_file(text);
}

}  // namespace

NestedOrder make_nested_order(const ModelConfig& config, const Scores& scores, const NestedOrderOptions& options) {
  config.validate();
  check_scores_fit(scores, config, "scores");
  NestedOrder order;
  order.depth_criterion = options.depth_criterion;
  order.layer_ranking = rank_layers(config, scores, options.depth_criterion);
  PrunePlan& p = order.permutation;
  p.source = p.target = config;
  p.hidden = best_first(scores.hidden, iota_from(0, config.hidden_size));
  p.drop_mtp = options.drop_mtp;
  if (options.drop_mtp) p.target.num_nextn_predict_layers = 0;
  // MTP layers read the embeddings and the residual stream: copied unchanged only when the channels stay in place.
  p.mtp_shapes_unchanged = is_identity_order(p.hidden);
  for (int64_t i = 0; i < config.num_layers(); ++i) {
    const LayerScores& ls = scores.layers[static_cast<size_t>(i)];
    LayerPlan lp;
    lp.source = i;
    lp.type = config.layers[static_cast<size_t>(i)];
    switch (lp.type) {
      case LayerType::Mlp: lp.mlp_neurons = best_first(ls.mlp_neurons, iota_from(0, config.intermediate_size)); break;
      case LayerType::Attention: order_attention(lp, config, ls); break;
      case LayerType::Mamba: order_mamba(lp, config, ls); break;
      case LayerType::Moe: order_moe(lp, config, ls, options.expert_criterion); break;
    }
    p.layers.push_back(std::move(lp));
  }
  return order;
}

// ---------------------------------------------------------------- metadata

json ElasticSampling::to_json() const {
  json j{{"schedule", schedule}, {"per_step", per_step}};
  if (!weights.empty()) j["weights"] = weights;
  return j;
}

json ElasticInfo::to_json() const {
  // Budgets as a list keeps their order; an object would sort the names.
  json list = json::array();
  for (auto& x : budgets) list.push_back({{"name", x.name}, {"shape", x.shape}});
  return {{"format", "minipuzzle-elastic"}, {"version", 1},        {"layer_ranking", layer_ranking},
          {"depth_criterion", depth_criterion}, {"budgets", list}, {"order", order},
          {"source", source},                   {"training", training}};
}

ElasticInfo ElasticInfo::from_json(const json& j, const std::string& what) {
  MP_CHECK(j.is_object() && j.value("format", "") == "minipuzzle-elastic", what,
           ": not a minipuzzle-elastic file (written by `minipuzzle nest`)");
  MP_CHECK(j.value("version", 0) == 1, what, ": unsupported version ", j.value("version", 0));
  ElasticInfo info;
  if (j.contains("layer_ranking")) info.layer_ranking = int_list(j.at("layer_ranking"), what + ": layer_ranking");
  info.depth_criterion = j.value("depth_criterion", "");
  if (j.contains("budgets") && !j.at("budgets").empty()) {
    ElasticBudgets b = load_budgets(json{{"budgets", j.at("budgets")}}.dump());
    info.budgets = b.budgets;
  }
  if (j.contains("order")) info.order = j.at("order");
  if (j.contains("source")) info.source = j.at("source");
  if (j.contains("training")) info.training = j.at("training");
  return info;
}

const ElasticBudget* ElasticInfo::find(const std::string& name) const {
  for (auto& b : budgets)
    if (b.name == name) return &b;
  return nullptr;
}

void ElasticInfo::add_budgets(const std::vector<ElasticBudget>& more) {
  for (auto& b : more) {
    bool replaced = false;
    for (auto& old : budgets)
      if (old.name == b.name) old = b, replaced = true;
    if (!replaced) budgets.push_back(b);
  }
}

std::optional<ElasticInfo> read_elastic_info(const std::string& dir) {
  const std::string path = fs::join(dir, kElasticFile);
  if (!fs::exists(path)) return std::nullopt;
  return ElasticInfo::from_json(read_json_file(path), path);
}

void write_elastic_info(const std::string& path, const ElasticInfo& info) {
  fs::write_file_atomic(path, info.to_json().dump(1) + "\n");
}

ElasticBudgets load_budgets(const std::string& text) {
  const std::string what = "elastic budgets";
  json j = parse_text_or_file(text, what);
  MP_CHECK(j.is_object() && j.contains("budgets"), what, ": expected {\"budgets\": {\"name\": SHAPE, ...}} in ", text);
  ElasticBudgets out;
  const json& b = j.at("budgets");
  if (b.is_object()) {
    for (auto& [name, shape] : b.items()) out.budgets.push_back({name, shape});
  } else {
    MP_CHECK(b.is_array(), what, ": \"budgets\" must be an object or a list");
    for (auto& e : b) {
      MP_CHECK(e.is_object() && e.contains("name") && e.at("name").is_string(), what,
               ": each budget in the list needs a \"name\"");
      out.budgets.push_back({e.at("name").get<std::string>(), e.value("shape", json::object())});
    }
  }
  MP_CHECK(!out.budgets.empty(), what, ": no budgets");
  std::set<std::string> names;
  for (auto& x : out.budgets) {
    MP_CHECK(!x.name.empty() && names.insert(x.name).second, what, ": budget name \"", x.name, "\" is empty or repeated");
    MP_CHECK(x.shape.is_object(), what, ": budget \"", x.name, "\" must be a JSON object (a shape)");
    (void)PruneTarget::from_json(x.shape, what + " \"" + x.name + "\"");  // validates the fields now
  }
  ElasticSampling& s = out.sampling;
  if (j.contains("sampling")) {
    const json& sj = j.at("sampling");
    s.schedule = sj.value("schedule", "all");
    s.per_step = sj.value("per_step", int64_t(0));
    MP_CHECK(s.schedule == "all" || s.schedule == "uniform" || s.schedule == "weighted", what,
             ": sampling schedule must be all, uniform or weighted, found \"", s.schedule, "\"");
    MP_CHECK(s.per_step >= 0 && s.per_step <= int64_t(out.budgets.size()), what, ": per_step ", s.per_step,
             " must lie in 0..", out.budgets.size(), " (0: every budget)");
    if (s.schedule == "weighted") {
      MP_CHECK(sj.contains("weights") && sj.at("weights").is_object(), what,
               ": the weighted schedule needs \"weights\": {\"budget name\": weight, ...}");
      for (auto& x : out.budgets) {
        const json& w = sj.at("weights");
        MP_CHECK(w.contains(x.name) && w.at(x.name).is_number() && w.at(x.name).get<double>() > 0, what,
                 ": weights must give every budget a positive weight (missing or not positive: \"", x.name, "\")");
        s.weights.push_back(w.at(x.name).get<double>());
      }
    }
  }
  if (s.schedule == "all") s.per_step = 0;
  if (s.schedule == "uniform") s.weights.assign(out.budgets.size(), 1.0);
  return out;
}

std::vector<size_t> sample_budgets(const ElasticSampling& s, size_t count, uint64_t seed, int64_t step) {
  std::vector<size_t> all(count);
  std::iota(all.begin(), all.end(), size_t(0));
  if (s.schedule == "all" || s.per_step <= 0 || size_t(s.per_step) >= count) return all;
  // A generator per step, seeded from (seed, step): no state to checkpoint, the same draw after a resume.
  std::seed_seq seq{uint32_t(seed), uint32_t(seed >> 32), uint32_t(step), uint32_t(uint64_t(step) >> 32), 0xe1u};
  std::mt19937_64 rng(seq);
  std::vector<double> w = s.weights;
  if (w.size() != count) w.assign(count, 1.0);
  std::vector<size_t> chosen;
  for (int64_t k = 0; k < s.per_step; ++k) {
    double total = 0;
    for (double x : w) total += x;
    double u = std::uniform_real_distribution<double>(0.0, total)(rng);
    size_t pick = count;
    for (size_t i = 0; i < count; ++i) {
      if (w[i] <= 0) continue;
      pick = i;  // the last positive weight catches rounding at the end of the range
      if (u < w[i]) break;
      u -= w[i];
    }
    chosen.push_back(pick);
    w[pick] = 0;  // without replacement
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// ---------------------------------------------------------------- slicing

PrunePlan nested_plan(const ModelConfig& nested, const PruneTarget& budget, const std::vector<int64_t>& layer_ranking) {
  PruneTarget t = budget;
  if (t.drop_count > 0) {
    MP_CHECK(static_cast<int64_t>(layer_ranking.size()) == nested.num_layers(), t.origin, ": drop_count ", t.drop_count,
             " needs the nested model's layer ranking, which ", layer_ranking.empty() ? "is absent (the scores had no "
             "depth criterion \"lm_loss_increase\"; nest with --depth-criterion)" : "does not cover every layer");
    t.depth_criterion = "elastic_rank";
  }
  t.mamba_head_criterion = "heads";
  t.expert_criterion = "experts";
  std::set<int64_t> seen(layer_ranking.begin(), layer_ranking.end());
  MP_CHECK(seen.size() == layer_ranking.size() && (seen.empty() || (*seen.begin() >= 0 && *seen.rbegin() < nested.num_layers())),
           "elastic metadata: layer_ranking is not a permutation of the model's layers");
  const Scores s = prefix_scores(nested, layer_ranking);
  return make_plan(nested, t, &s);
}

ElasticBudget resolve_budget(const std::string& text, const ElasticInfo& info) {
  if (const ElasticBudget* b = info.find(text)) return *b;
  std::string t = text;
  t.erase(0, t.find_first_not_of(" \t\n"));
  if (t.empty() || (t[0] != '{' && !fs::exists(text))) {
    std::string names;
    for (auto& b : info.budgets) names += (names.empty() ? "" : ", ") + b.name;
    fail("--budget \"", text, "\" is neither a budget of this checkpoint (", names.empty() ? "it records none" : names,
         ") nor a shape (JSON file or inline JSON)");
  }
  json shape = parse_text_or_file(text, "--budget");
  (void)PruneTarget::from_json(shape, "--budget");
  return {t[0] == '{' ? "custom" : fs::stem(text), shape};
}

NemotronH slice_model(const NemotronH& nested, const PrunePlan& plan) {
  MP_CHECK(nested.config().pattern() == plan.source.pattern() && nested.num_parameters() == count_parameters(plan.source),
           "slice_model: the model is not the one the plan was made for");
  const auto& from = nested.parameters();
  std::map<std::string, at::Tensor> params;
  for (auto& cut : plan_tensor_cuts(plan)) {
    at::Tensor t = from.at(cut.source_name);
    auto index = [&](const std::vector<int64_t>& idx) {
      return at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(t.device());
    };
    if (!cut.rows.empty()) t = t.index_select(0, index(cut.rows));
    if (!cut.cols.empty()) t = t.index_select(1, index(cut.cols));
    params[cut.out.name] = t;
  }
  if (plan.target.tie_word_embeddings && from.at("lm_head.weight").is_same(from.at("backbone.embeddings.weight")))
    params["lm_head.weight"] = params["backbone.embeddings.weight"];
  return NemotronH(plan.target, std::move(params));
}

}  // namespace mp
