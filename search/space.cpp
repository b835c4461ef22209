// The candidate space: ranges per axis, which parent layers a depth choice drops, stable candidate ids, and
// the student's config.json. Structural rules are built into the axes (Mamba heads a multiple of n_groups,
// attention heads a multiple of the KV heads) so that no enumerated shape is invalid.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/search.h"

namespace mp::search {

std::vector<int64_t> IntRange::values() const {
  std::vector<int64_t> out;
  MP_CHECK(step > 0, "range ", min, ":", max, " has step ", step, "; the step must be positive");
  for (int64_t v = min; v <= max; v += step) out.push_back(v);
  if (!extra.empty()) {
    out.insert(out.end(), extra.begin(), extra.end());
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  }
  return out;
}

IntRange parse_range(const std::string& text) {
  // "A:B:S", "A-B/S", "A:B" (step 1), "A" (single value).
  std::string t = text;
  for (auto& c : t)
    if (c == '-' || c == '/') c = ':';
  std::vector<int64_t> parts;
  size_t start = 0;
  while (start <= t.size()) {
    size_t colon = t.find(':', start);
    std::string item = t.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    start = colon == std::string::npos ? t.size() + 1 : colon + 1;
    try {
      size_t pos = 0;
      parts.push_back(std::stoll(item, &pos));
      MP_CHECK(pos == item.size(), "x");
    } catch (const std::exception&) {
      fail("range \"", text, "\": expected MIN:MAX:STEP (e.g. 4480:5120:128) or a single number");
    }
  }
  IntRange r;
  if (parts.size() == 1) r = {parts[0], parts[0], 1};
  else if (parts.size() == 2) r = {parts[0], parts[1], 1};
  else if (parts.size() == 3) r = {parts[0], parts[1], parts[2]};
  else fail("range \"", text, "\": expected MIN:MAX:STEP");
  MP_CHECK(r.min >= 0 && r.min <= r.max && r.step > 0, "range \"", text, "\": need 0 <= MIN <= MAX and STEP > 0");
  return r;
}

int64_t SearchSpace::combinations() const {
  int64_t depth = 0;
  if (depth_per_type) {
    for (int64_t m : drop_mamba.values())
      for (int64_t a : drop_attention.values())
        for (int64_t f : drop_mlp.values())
          for (int64_t e : drop_moe.values())
            if (!bound_total || (m + a + f + e >= drop_total.min && m + a + f + e <= drop_total.max)) ++depth;
  } else {
    depth = static_cast<int64_t>(drop_total.values().size());
  }
  // Unset MoE ranges (a space built by hand for a dense parent) count as one point each.
  auto points = [](const IntRange& r) { return r.max > 0 ? r.values().size() : size_t(1); };
  return depth * static_cast<int64_t>(hidden.values().size() * ffn.values().size() * mamba_heads.values().size() *
                                      mamba_head_dim.values().size() * attention_heads.values().size() *
                                      points(experts) * points(expert_ffn) * points(shared_ffn));
}

static json range_json(const IntRange& r) {
  json j{{"min", r.min}, {"max", r.max}, {"step", r.step}};
  if (!r.extra.empty()) j["extra"] = r.extra;
  return j;
}

json SearchSpace::to_json() const {
  json j{{"depth", depth_per_type ? "per-type" : "total"},
         {"hidden", range_json(hidden)},
         {"ffn", range_json(ffn)},
         {"mamba_heads", range_json(mamba_heads)},
         {"mamba_head_dim", range_json(mamba_head_dim)},
         {"attention_heads", range_json(attention_heads)},
         {"combinations", combinations()}};
  if (depth_per_type) {
    j["drop_mamba"] = range_json(drop_mamba);
    j["drop_attention"] = range_json(drop_attention);
    j["drop_mlp"] = range_json(drop_mlp);
    if (drop_moe.max > 0) j["drop_moe"] = range_json(drop_moe);
  }
  if (experts.max > 0) {
    j["experts"] = range_json(experts);
    j["expert_ffn"] = range_json(expert_ffn);
    j["shared_ffn"] = range_json(shared_ffn);
  }
  if (!depth_per_type || bound_total) j["drop_total"] = range_json(drop_total);
  if (min_params > 0) j["min_params"] = min_params;
  if (max_params > 0) j["max_params"] = max_params;
  if (min_active_params > 0) j["min_active_params"] = min_active_params;
  if (max_active_params > 0) j["max_active_params"] = max_active_params;
  return j;
}

// [ceil(lo_fraction * v) rounded up to `step`, v] keeping v itself reachable: values v - k*step.
static IntRange shrink_range(int64_t v, double max_prune, int64_t step) {
  if (v <= 0) return {0, 0, 1};
  step = std::max<int64_t>(1, std::min(step, v));
  int64_t lo = static_cast<int64_t>(std::ceil(static_cast<double>(v) * (1.0 - max_prune)));
  int64_t k = (v - lo) / step;
  return {v - k * step, v, step};
}

// shrink_range, with the held values on the grid: the largest step that is a multiple of `grain`, at most `step`,
// and divides every distance from v to a held value; the range reaches down to the smallest held value. When no
// such step exists, the default grid plus the held values as extra points.
static IntRange holding_range(int64_t v, double max_prune, int64_t step, int64_t grain, std::vector<int64_t> held) {
  held.erase(std::remove_if(held.begin(), held.end(), [&](int64_t h) { return h <= 0 || h >= v; }), held.end());
  IntRange r = shrink_range(v, max_prune, step);
  if (held.empty() || v <= 0) return r;
  grain = std::max<int64_t>(1, grain);
  for (int64_t t = std::max(grain, step / grain * grain); t >= grain; t -= grain) {
    if (!std::all_of(held.begin(), held.end(), [&](int64_t h) { return (v - h) % t == 0; })) continue;
    r = shrink_range(v, max_prune, t);
    r.min = std::min(r.min, *std::min_element(held.begin(), held.end()));
    return r;
  }
  for (int64_t h : held)
    if (!r.contains(h)) r.extra.push_back(h);
  std::sort(r.extra.begin(), r.extra.end());
  r.extra.erase(std::unique(r.extra.begin(), r.extra.end()), r.extra.end());
  return r;
}

std::string expert_count_problem(const ModelConfig& parent, int64_t e) {
  const int64_t G = std::max<int64_t>(1, parent.n_group), k = parent.num_experts_per_tok;
  std::ostringstream why;
  if (e <= 0 || e > parent.n_routed_experts)
    why << e << " experts: the parent has " << parent.n_routed_experts;
  else if (e % G != 0)
    why << e << " experts is not a multiple of n_group " << G << " (every routing group keeps the same number)";
  else if (G > 1 && e / G < 2)
    why << e << " experts leaves " << e / G << " per routing group; each group needs 2";
  else if (k > e || k > parent.topk_group * (e / G))
    why << e << " experts: num_experts_per_tok " << k << " exceeds the experts routing can choose from";
  return why.str();
}

// Could `c` come out of pruning `parent`: the same fixed dimensions, no axis and no layer type larger.
static bool pruned_form(const ModelConfig& parent, const ModelConfig& c) {
  const bool moe_ok = c.count(LayerType::Moe) == 0 ||
                      (c.n_group == parent.n_group && c.topk_group == parent.topk_group &&
                       c.num_experts_per_tok == parent.num_experts_per_tok && c.moe_latent_size == parent.moe_latent_size &&
                       c.n_routed_experts <= parent.n_routed_experts &&
                       c.moe_intermediate_size <= parent.moe_intermediate_size &&
                       c.moe_shared_expert_intermediate_size <= parent.moe_shared_expert_intermediate_size);
  return c.vocab_size == parent.vocab_size && c.num_key_value_heads == parent.num_key_value_heads &&
         c.head_dim == parent.head_dim && c.n_groups == parent.n_groups && c.ssm_state_size == parent.ssm_state_size &&
         c.conv_kernel == parent.conv_kernel && moe_ok && c.count(LayerType::Moe) <= parent.count(LayerType::Moe) &&
         c.num_layers() <= parent.num_layers() &&
         c.count(LayerType::Mamba) <= parent.count(LayerType::Mamba) &&
         c.count(LayerType::Attention) <= parent.count(LayerType::Attention) &&
         c.count(LayerType::Mlp) <= parent.count(LayerType::Mlp) && c.hidden_size <= parent.hidden_size &&
         c.intermediate_size <= parent.intermediate_size && c.mamba_num_heads <= parent.mamba_num_heads &&
         c.mamba_head_dim <= parent.mamba_head_dim && c.num_attention_heads <= parent.num_attention_heads;
}

SearchSpace default_space(const ModelConfig& parent, const std::vector<ModelConfig>& all_held) {
  std::vector<ModelConfig> hold;  // shapes of another family (a foreign reference) cannot be held
  for (auto& c : all_held)
    if (pruned_form(parent, c)) hold.push_back(c);
  SearchSpace s;
  const double width = 0.4, depth = 0.2;
  int64_t max_drop = static_cast<int64_t>(std::floor(depth * static_cast<double>(parent.num_layers())));
  // A held student that drops more layers than 20% widens the depth bound to reach it.
  for (auto& h : hold) max_drop = std::max<int64_t>(max_drop, parent.num_layers() - h.num_layers());
  auto drops = [&](LayerType t) {
    int64_t n = parent.count(t);
    // Keep at least one layer of each type the parent has.
    return IntRange{0, std::max<int64_t>(0, std::min(max_drop, n - 1)), 1};
  };
  s.depth_per_type = true;
  s.drop_mamba = drops(LayerType::Mamba);
  s.drop_attention = drops(LayerType::Attention);
  s.drop_mlp = drops(LayerType::Mlp);
  s.drop_moe = drops(LayerType::Moe);
  s.bound_total = true;
  s.drop_total = {0, max_drop, 1};
  auto held = [&](auto field) {
    std::vector<int64_t> v;
    for (auto& h : hold) v.push_back(field(h));
    return v;
  };
  s.hidden = holding_range(parent.hidden_size, width, 128, 64, held([](const ModelConfig& c) { return c.hidden_size; }));
  s.ffn = holding_range(parent.intermediate_size, width, 512, 64,
                        held([](const ModelConfig& c) { return c.count(LayerType::Mlp) ? c.intermediate_size : 0; }));
  // Without MLP layers the FFN width sizes nothing: one point, the parent's.
  if (!parent.count(LayerType::Mlp)) s.ffn = {parent.intermediate_size, parent.intermediate_size, 1};
  const int64_t groups = std::max<int64_t>(1, parent.n_groups);
  s.mamba_heads = holding_range(parent.mamba_num_heads, width, groups, groups,
                                held([](const ModelConfig& c) { return c.count(LayerType::Mamba) ? c.mamba_num_heads : 0; }));
  s.mamba_head_dim = holding_range(parent.mamba_head_dim, width, 8, 8,
                                   held([](const ModelConfig& c) { return c.count(LayerType::Mamba) ? c.mamba_head_dim : 0; }));
  const int64_t kv = std::max<int64_t>(1, parent.num_key_value_heads);
  s.attention_heads = holding_range(parent.num_attention_heads, width, kv, kv, held([](const ModelConfig& c) {
                                      return c.count(LayerType::Attention) ? c.num_attention_heads : 0;
                                    }));
  if (parent.count(LayerType::Moe)) {
    const int64_t G = std::max<int64_t>(1, parent.n_group);
    auto moe_held = [&](auto field) {
      return held([&](const ModelConfig& c) { return c.count(LayerType::Moe) ? field(c) : int64_t(0); });
    };
    // Steps of 8 experts (a multiple of n_group); one group's share per step when 8 would leave no pruned point.
    const int64_t E = parent.n_routed_experts;
    int64_t step = (8 + G - 1) / G * G;
    if (E - static_cast<int64_t>(std::ceil(static_cast<double>(E) * (1.0 - width))) < step) step = G;
    s.experts = holding_range(E, width, step, G, moe_held([](const ModelConfig& c) { return c.n_routed_experts; }));
    // No lower than routing allows (top-k, topk_group groups' worth, two per group).
    while (s.experts.min < parent.n_routed_experts && !expert_count_problem(parent, s.experts.min).empty())
      s.experts.min += s.experts.step;
    s.experts.extra.erase(std::remove_if(s.experts.extra.begin(), s.experts.extra.end(),
                                         [&](int64_t e) { return !expert_count_problem(parent, e).empty(); }),
                          s.experts.extra.end());
    s.expert_ffn = holding_range(parent.moe_intermediate_size, width, 256, 64,
                                 moe_held([](const ModelConfig& c) { return c.moe_intermediate_size; }));
    s.shared_ffn = holding_range(parent.moe_shared_expert_intermediate_size, width, 256, 64,
                                 moe_held([](const ModelConfig& c) { return c.moe_shared_expert_intermediate_size; }));
  }
  return s;
}

std::vector<std::pair<std::string, ModelConfig>> published_students(const ModelConfig& parent) {
  std::vector<std::pair<std::string, ModelConfig>> out;
  const double width = 0.4, depth = 0.2;
  for (const std::string& path : list_config_files("models")) {
    ModelConfig c;
    try {
      c = load_config(path);
    } catch (const Error&) {
      continue;  // not a model this search can read; the explicit --reference path reports such files
    }
    auto within = [&](int64_t child, int64_t v) {
      return child <= v && static_cast<double>(child) >= std::ceil((1.0 - width) * static_cast<double>(v)) - 1e-9;
    };
    bool fits = pruned_form(parent, c) &&
                parent.num_layers() - c.num_layers() <=
                    static_cast<int64_t>(std::floor(depth * static_cast<double>(parent.num_layers()))) &&
                within(c.hidden_size, parent.hidden_size) &&
                (!c.count(LayerType::Mlp) || within(c.intermediate_size, parent.intermediate_size)) &&
                (!c.count(LayerType::Mamba) || (within(c.mamba_num_heads, parent.mamba_num_heads) &&
                                                within(c.mamba_head_dim, parent.mamba_head_dim))) &&
                (!c.count(LayerType::Attention) || within(c.num_attention_heads, parent.num_attention_heads)) &&
                (!c.count(LayerType::Moe) || (within(c.n_routed_experts, parent.n_routed_experts) &&
                                              within(c.moe_intermediate_size, parent.moe_intermediate_size) &&
                                              within(c.moe_shared_expert_intermediate_size,
                                                     parent.moe_shared_expert_intermediate_size)));
    const bool is_parent = c.num_layers() == parent.num_layers() && c.pattern() == parent.pattern() &&
                           c.hidden_size == parent.hidden_size && c.intermediate_size == parent.intermediate_size &&
                           c.mamba_num_heads == parent.mamba_num_heads && c.mamba_head_dim == parent.mamba_head_dim &&
                           c.num_attention_heads == parent.num_attention_heads &&
                           c.n_routed_experts == parent.n_routed_experts &&
                           c.moe_intermediate_size == parent.moe_intermediate_size &&
                           c.moe_shared_expert_intermediate_size == parent.moe_shared_expert_intermediate_size;
    if (fits && !is_parent) {
      std::string name = path.substr(path.find_last_of('/') + 1);
      out.emplace_back(name.substr(0, name.size() - 5), c);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------- importance

bool ImportanceScores::empty() const {
  return layer.empty() && hidden.empty() && ffn.empty() && mamba_heads.empty() && mamba_head_dim.empty() &&
         attention_heads.empty() && experts.empty() && expert_ffn.empty() && shared_ffn.empty();
}

// Rank-wise pooling of per-layer unit scores (see the header): normalise each layer to sum 1, sort descending,
// average the i-th entries.
static std::vector<double> pool_rankwise(const std::vector<std::vector<double>>& per_layer, const std::string& what) {
  std::vector<double> out;
  if (per_layer.empty()) return out;
  out.assign(per_layer[0].size(), 0.0);
  for (auto layer : per_layer) {
    MP_CHECK(layer.size() == out.size(), what, ": per-layer score lists differ in length (", layer.size(), " vs ",
             out.size(), ")");
    for (double v : layer) MP_CHECK(std::isfinite(v), what, ": scores must be finite");
    double total = 0;
    for (double& v : layer) total += (v = std::max(0.0, v));
    std::sort(layer.begin(), layer.end(), std::greater<double>());
    for (size_t i = 0; i < layer.size(); ++i) out[i] += (total > 0 ? layer[i] / total : 1.0 / double(layer.size()));
  }
  for (double& v : out) v /= static_cast<double>(per_layer.size());
  return out;
}

ImportanceScores ImportanceScores::from_scores(const Scores& sc, const std::string& what, const std::string& depth_criterion) {
  ImportanceScores s;
  for (double v : sc.hidden) MP_CHECK(std::isfinite(v), what, " hidden: scores must be finite");
  s.hidden = sc.hidden;
  std::vector<std::vector<double>> ffn, attn, heads, head_dim, experts, expert_ffn, shared;
  auto add = [](const std::vector<double>& v, std::vector<std::vector<double>>& dst) {
    if (!v.empty()) dst.push_back(v);
  };
  for (const LayerScores& l : sc.layers) {
    add(l.mlp_neurons, ffn);
    add(l.attn_heads, attn);
    add(l.mamba.heads, heads);
    add(l.mamba.head_dim, head_dim);
    add(l.moe.experts, experts);
    add(l.moe.shared, shared);
    // Each expert's channels rank within that expert (the pruner keeps every expert's own best): pool them as if
    // every expert of every layer were a layer of its own.
    const std::vector<double>& channels = l.moe.expert_channels;
    if (!channels.empty() && !l.moe.experts.empty()) {
      const size_t n_experts = l.moe.experts.size(), total = channels.size();
      MP_CHECK(total % n_experts == 0, what, ": moe.expert_channels has ", total, " entries, not a multiple of the ",
               n_experts, " experts");
      const size_t width = total / n_experts;
      for (size_t e = 0; e < n_experts; ++e)
        expert_ffn.emplace_back(channels.begin() + static_cast<std::ptrdiff_t>(e * width),
                                channels.begin() + static_cast<std::ptrdiff_t>((e + 1) * width));
    }
  }
  s.ffn = pool_rankwise(ffn, what + " mlp.neurons");
  s.attention_heads = pool_rankwise(attn, what + " attention.heads");
  s.mamba_heads = pool_rankwise(heads, what + " mamba.heads");
  s.mamba_head_dim = pool_rankwise(head_dim, what + " mamba.head_dim");
  s.experts = pool_rankwise(experts, what + " moe.experts");
  s.expert_ffn = pool_rankwise(expert_ffn, what + " moe.expert_channels");
  s.shared_ffn = pool_rankwise(shared, what + " moe.shared");
  const bool has_iterative = !sc.removal_order.empty();
  std::string criterion = depth_criterion;
  if (criterion.empty()) {
    if (has_iterative) criterion = "iterative";
    else if (!sc.layers.empty())
      for (const char* c : {"mse_logits", "kl", "lm_loss_increase", "mse_hidden", "block_influence"})
        if (sc.layers[0].depth.by_criterion.count(c)) {
          criterion = c;
          break;
        }
  }
  const size_t n_layers = sc.layers.size();
  if (criterion == "iterative") {
    MP_CHECK(has_iterative, what, ": depth criterion \"iterative\" asked for but the file has no iterative_removal");
    // Removed first = least important: importance grows with the removal step; never-removed layers rank highest.
    const std::vector<int64_t>& order = sc.removal_order;
    s.layer.assign(n_layers, static_cast<double>(order.size()) + 1.0);
    for (size_t k = 0; k < order.size(); ++k) {
      const int64_t idx = order[k];
      MP_CHECK(idx >= 0 && idx < static_cast<int64_t>(n_layers), what, ": iterative_removal has layer ", idx);
      s.layer[static_cast<size_t>(idx)] = static_cast<double>(k) + 1.0;
    }
  } else if (!criterion.empty()) {
    for (const LayerScores& l : sc.layers) {
      auto it = l.depth.by_criterion.find(criterion);
      MP_CHECK(it != l.depth.by_criterion.end(), what, ": layer ", l.index, " has no depth score \"", criterion, "\"");
      MP_CHECK(std::isfinite(it->second), what, ": layer ", l.index, " depth score \"", criterion, "\" must be finite");
      s.layer.push_back(it->second);
    }
  }
  return s;
}

// ------------------------------------------------------------------------------------------- depth choice

// k of the n layers of one type (their stack positions given), spread evenly and sparing the ends.
static std::vector<int64_t> spread(const std::vector<int64_t>& positions, int64_t k) {
  const int64_t n = static_cast<int64_t>(positions.size());
  if (k <= 0) return {};
  if (k >= n) return positions;
  std::vector<int64_t> out;
  if (n - 2 >= k) {
    // Interior indices 1..n-2 split into k+1 equal gaps.
    for (int64_t i = 1; i <= k; ++i) {
      int64_t idx = 1 + ((n - 2) * i) / (k + 1);
      idx = std::min<int64_t>(std::max<int64_t>(idx, 1), n - 2);
      out.push_back(idx);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    // Fill collisions with the nearest unused interior index.
    for (int64_t idx = n - 2; static_cast<int64_t>(out.size()) < k && idx >= 1; --idx)
      if (!std::binary_search(out.begin(), out.end(), idx)) out.insert(std::upper_bound(out.begin(), out.end(), idx), idx);
  } else {
    for (int64_t idx = n - 1; static_cast<int64_t>(out.size()) < k; --idx) out.push_back(idx);
  }
  std::vector<int64_t> result;
  for (int64_t idx : out) result.push_back(positions[static_cast<size_t>(idx)]);
  std::sort(result.begin(), result.end());
  return result;
}

// The k least important of the given stack positions (ties: the later layer goes first).
static std::vector<int64_t> least_important(const std::vector<int64_t>& positions, int64_t k,
                                            const std::vector<double>& importance) {
  std::vector<int64_t> order = positions;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    double ia = importance[static_cast<size_t>(a)], ib = importance[static_cast<size_t>(b)];
    return ia != ib ? ia < ib : a > b;
  });
  order.resize(static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(order.size()))));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<int64_t> choose_dropped_layers(const ModelConfig& parent, int64_t drop_mamba, int64_t drop_attention,
                                           int64_t drop_mlp, const std::vector<double>& importance) {
  return choose_dropped_layers(parent, drop_mamba, drop_attention, drop_mlp, 0, importance);
}

std::vector<int64_t> choose_dropped_layers(const ModelConfig& parent, int64_t drop_mamba, int64_t drop_attention,
                                           int64_t drop_mlp, int64_t drop_moe, const std::vector<double>& importance) {
  MP_CHECK(importance.empty() || static_cast<int64_t>(importance.size()) == parent.num_layers(),
           "layer importance has ", importance.size(), " entries but the parent has ", parent.num_layers(), " layers");
  std::vector<int64_t> dropped;
  const std::pair<LayerType, int64_t> plan[] = {
      {LayerType::Mamba, drop_mamba}, {LayerType::Attention, drop_attention}, {LayerType::Mlp, drop_mlp},
      {LayerType::Moe, drop_moe}};
  for (auto& [type, k] : plan) {
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < parent.num_layers(); ++i)
      if (parent.layers[static_cast<size_t>(i)] == type) positions.push_back(i);
    MP_CHECK(k <= static_cast<int64_t>(positions.size()), "cannot drop ", k, " ", layer_type_name(type),
             " layers: the parent has ", positions.size());
    auto chosen = importance.empty() ? spread(positions, k) : least_important(positions, k, importance);
    dropped.insert(dropped.end(), chosen.begin(), chosen.end());
  }
  std::sort(dropped.begin(), dropped.end());
  return dropped;
}

std::vector<int64_t> choose_dropped_layers_total(const ModelConfig& parent, int64_t drop_total,
                                                 const std::vector<double>& importance) {
  MP_CHECK(drop_total < parent.num_layers(), "cannot drop ", drop_total, " of ", parent.num_layers(), " layers");
  std::vector<int64_t> all(static_cast<size_t>(parent.num_layers()));
  std::iota(all.begin(), all.end(), 0);
  if (importance.empty()) return spread(all, drop_total);
  MP_CHECK(static_cast<int64_t>(importance.size()) == parent.num_layers(), "layer importance has ", importance.size(),
           " entries but the parent has ", parent.num_layers(), " layers");
  return least_important(all, drop_total, importance);
}

std::string candidate_id(const Shape& s, const std::vector<int64_t>& dropped) {
  // FNV-1a over the dropped indices: two candidates of equal counts but different layers differ in id.
  uint64_t h = 1469598103934665603ull;
  for (int64_t i : dropped) {
    for (int b = 0; b < 8; ++b) {
      h ^= static_cast<uint64_t>((i >> (8 * b)) & 0xff);
      h *= 1099511628211ull;
    }
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "L%lld-M%lldA%lldF%lld-h%lld-f%lld-m%lldx%lld-a%lld-%06llx",
                static_cast<long long>(s.layers()), static_cast<long long>(s.n_mamba),
                static_cast<long long>(s.n_attention), static_cast<long long>(s.n_mlp), static_cast<long long>(s.hidden),
                static_cast<long long>(s.ffn), static_cast<long long>(s.mamba_heads),
                static_cast<long long>(s.mamba_head_dim), static_cast<long long>(s.attention_heads),
                static_cast<unsigned long long>(h & 0xffffff));
  std::string id = buf;
  if (s.n_moe) {  // MoE shapes: E MoE layers, experts x expert width, shared width (dense ids stay as they were)
    std::snprintf(buf, sizeof buf, "-E%lld-e%lldx%lld-s%lld", static_cast<long long>(s.n_moe),
                  static_cast<long long>(s.experts), static_cast<long long>(s.expert_ffn),
                  static_cast<long long>(s.shared_ffn));
    id += buf;
  }
  return id;
}

ModelConfig candidate_config(const ModelConfig& parent, const Candidate& c) {
  ModelConfig out = parent;
  out.layers.clear();
  size_t d = 0;
  for (int64_t i = 0; i < parent.num_layers(); ++i) {
    if (d < c.dropped_layers.size() && c.dropped_layers[d] == i) {
      ++d;
      continue;
    }
    out.layers.push_back(parent.layers[static_cast<size_t>(i)]);
  }
  out.hidden_size = c.shape.hidden;
  out.intermediate_size = c.shape.ffn;
  out.mamba_num_heads = c.shape.mamba_heads;
  out.mamba_head_dim = c.shape.mamba_head_dim;
  out.num_attention_heads = c.shape.attention_heads;
  if (parent.count(LayerType::Moe)) {
    out.n_routed_experts = c.shape.experts;
    out.moe_intermediate_size = c.shape.expert_ffn;
    out.moe_shared_expert_intermediate_size = c.shape.shared_ffn;
  }
  // The student is not the published model: drop provenance fields that would claim otherwise.
  if (out.raw.is_object()) {
    out.raw.erase("_source");
    out.raw.erase("_name_or_path");
  }
  out.validate();
  return out;
}

json candidate_to_json(const ModelConfig& parent, const Candidate& c) {
  // The pruner's target (the student's config and the parent layers it drops: "config", "dropped_layers"), which
  // `prune --target REPORT.json#id` reads back, plus what the search measured.
  json j = target_from_config(candidate_config(parent, c), c.dropped_layers).to_json();
  j.update(json{{"id", c.id},
                {"feasible", c.feasible},
                {"reasons", c.reasons},
                {"rank", c.rank},
                {"stage", c.stage},
                {"pareto", c.pareto},
                {"pattern", c.pattern},
                {"layers", {{"mamba", c.shape.n_mamba}, {"attention", c.shape.n_attention}, {"mlp", c.shape.n_mlp}}},
                {"params", c.params.to_json()},
                {"memory", c.memory.to_json()},
                {"throughput", c.throughput.to_json()},
         {"proxy", c.proxy}});
  if (c.shape.n_moe) {
    j["layers"]["moe"] = c.shape.n_moe;
    j["moe"] = {{"experts", c.shape.experts},
                {"experts_per_token", c.shape.experts_per_token},
                {"expert_ffn", c.shape.expert_ffn},
                {"shared_ffn", c.shape.shared_ffn}};
  }
  if (c.zero_shot_loss) j["zero_shot_loss"] = *c.zero_shot_loss;
  if (c.distilled_loss) j["distilled_loss"] = *c.distilled_loss;
  return j;
}

}  // namespace mp::search
