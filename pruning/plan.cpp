// Target shape + importance scores -> which units of which parent layer survive. Every rule that keeps the
// pruned model loadable and meaningful is checked here, before any byte is written:
//  - Mamba heads: the same count in every SSM group (B and C are shared per group), chosen by rank within the
//    group; whole groups may go instead (then n_groups shrinks); head_dim positions one ranking for all heads.
//  - Attention: the same count of query heads in every kept KV group, so the GQA grouping stays valid.
//  - Nothing grows; dropped layers exist; scores describe this very model.
#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/pruning.h"

namespace mp {

namespace {

std::vector<int64_t> all_of(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// The k candidates with the largest score (ties: lower index first), returned in ascending index order.
std::vector<int64_t> top_k(const std::vector<double>& score, std::vector<int64_t> candidates, int64_t k) {
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](int64_t a, int64_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  candidates.resize(static_cast<size_t>(k));
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

const std::vector<double>& mamba_head_scores(const MambaScores& m, const std::string& criterion) {
  if (criterion == "heads") return m.heads;
  if (criterion == "heads_out") return m.heads_out;
  if (criterion == "heads_flap") return m.heads_flap;
  if (criterion == "heads_nested") return m.heads_nested;
  fail("--mamba-head-criterion \"", criterion,
       "\" is unknown; expected heads, heads_out, heads_flap, heads_nested or nested");
}

// Resolved widths of the target, each checked against the parent.
struct Widths {
  int64_t hidden, ffn, heads, kv, mamba_heads, mamba_head_dim, groups;
  int64_t experts = 0, expert_ffn = 0, shared_ffn = 0, top_k = 0;
};

// MoE widths: experts kept per layer (an equal share of every routing group, so the pruned groups are the
// parent's groups minus the removed experts and routing is unchanged for the rest), widths, experts per token.
void resolve_moe_widths(const ModelConfig& s, const PruneTarget& t, Widths& w) {
  const std::string& what = t.origin;
  w.experts = t.n_routed_experts.value_or(s.n_routed_experts);
  w.expert_ffn = t.moe_intermediate_size.value_or(s.moe_intermediate_size);
  w.shared_ffn = t.moe_shared_expert_intermediate_size.value_or(s.moe_shared_expert_intermediate_size);
  w.top_k = t.num_experts_per_tok.value_or(std::min(s.num_experts_per_tok, w.experts));
  if (!s.count(LayerType::Moe)) {
    MP_CHECK(w.experts == s.n_routed_experts && w.expert_ffn == s.moe_intermediate_size &&
                 w.shared_ffn == s.moe_shared_expert_intermediate_size && w.top_k == s.num_experts_per_tok,
             what, ": MoE widths are set but the parent has no moe layers");
    return;
  }
  auto not_larger = [&](int64_t target, int64_t source, const char* name) {
    MP_CHECK(target > 0, what, ": ", name, " must be positive, found ", target);
    MP_CHECK(target <= source, what, ": ", name, " ", target, " is larger than the parent's ", source,
             "; pruning only removes units");
  };
  not_larger(w.experts, s.n_routed_experts, "n_routed_experts");
  not_larger(w.expert_ffn, s.moe_intermediate_size, "moe_intermediate_size");
  not_larger(w.shared_ffn, s.moe_shared_expert_intermediate_size, "moe_shared_expert_intermediate_size");
  not_larger(w.top_k, s.num_experts_per_tok, "num_experts_per_tok");
  MP_CHECK(w.experts % s.n_group == 0, what, ": n_routed_experts ", w.experts, " is not a multiple of n_group ",
           s.n_group, "; routing ranks experts within groups, so every group keeps the same number of experts (try ",
           s.n_group * std::max<int64_t>(1, w.experts / s.n_group), ")");
  MP_CHECK(s.n_group == 1 || w.experts / s.n_group >= 2, what, ": ", w.experts, " experts over n_group ", s.n_group,
           " leaves ", w.experts / s.n_group, " per group; transformers ranks a group by its two best experts, so each "
           "group needs at least 2 (keep at least ", 2 * s.n_group, " experts)");
  MP_CHECK(w.top_k <= w.experts, what, ": num_experts_per_tok ", w.top_k, " exceeds the ", w.experts,
           " experts kept; lower it with num_experts_per_tok");
  MP_CHECK(w.top_k <= s.topk_group * (w.experts / s.n_group), what, ": num_experts_per_tok ", w.top_k,
           " exceeds the experts in the topk_group (", s.topk_group, ") best groups of ", w.experts / s.n_group);
}

Widths resolve_widths(const ModelConfig& s, const PruneTarget& t) {
  const std::string& what = t.origin;
  Widths w{t.hidden_size.value_or(s.hidden_size),  t.intermediate_size.value_or(s.intermediate_size),
           t.num_attention_heads.value_or(s.num_attention_heads), t.num_key_value_heads.value_or(s.num_key_value_heads),
           t.mamba_num_heads.value_or(s.mamba_num_heads),         t.mamba_head_dim.value_or(s.mamba_head_dim),
           s.n_groups};
  auto not_larger = [&](int64_t target, int64_t source, const char* name) {
    MP_CHECK(target > 0, what, ": ", name, " must be positive, found ", target);
    MP_CHECK(target <= source, what, ": ", name, " ", target, " is larger than the parent's ", source,
             "; pruning only removes units");
  };
  not_larger(w.hidden, s.hidden_size, "hidden_size");

  auto unchanged_without = [&](LayerType type, int64_t target, int64_t source, const char* name) {
    MP_CHECK(s.count(type) > 0 || target == source, what, ": ", name, " is set to ", target,
             " but the parent has no ", layer_type_name(type), " layers");
  };
  unchanged_without(LayerType::Mlp, w.ffn, s.intermediate_size, "intermediate_size");
  unchanged_without(LayerType::Attention, w.heads, s.num_attention_heads, "num_attention_heads");
  unchanged_without(LayerType::Attention, w.kv, s.num_key_value_heads, "num_key_value_heads");
  unchanged_without(LayerType::Mamba, w.mamba_heads, s.mamba_num_heads, "mamba_num_heads");
  unchanged_without(LayerType::Mamba, w.mamba_head_dim, s.mamba_head_dim, "mamba_head_dim");

  if (s.count(LayerType::Mlp)) not_larger(w.ffn, s.intermediate_size, "intermediate_size (FFN)");
  if (s.count(LayerType::Attention)) {
    not_larger(w.heads, s.num_attention_heads, "num_attention_heads");
    not_larger(w.kv, s.num_key_value_heads, "num_key_value_heads");
    MP_CHECK(w.heads % w.kv == 0, what, ": num_key_value_heads ", w.kv, " does not divide num_attention_heads ",
             w.heads, "; grouped-query attention needs the same number of query heads per KV head (try ",
             w.kv * std::max<int64_t>(1, w.heads / w.kv), " heads)");
    const int64_t per_group = s.num_attention_heads / s.num_key_value_heads;
    MP_CHECK(w.heads / w.kv <= per_group, what, ": ", w.heads, " query heads over ", w.kv, " KV heads is ",
             w.heads / w.kv, " per KV group, but the parent's groups hold only ", per_group,
             " (removing KV groups removes their query heads: at most ", w.kv * per_group, " heads remain)");
  }
  if (s.count(LayerType::Mamba)) {
    not_larger(w.mamba_heads, s.mamba_num_heads, "mamba_num_heads");
    not_larger(w.mamba_head_dim, s.mamba_head_dim, "mamba_head_dim");
    const int64_t per_group = s.mamba_num_heads / s.n_groups;
    if (t.n_groups) {
      w.groups = *t.n_groups;
      not_larger(w.groups, s.n_groups, "n_groups");
    } else if (t.mamba_group_removal) {
      MP_CHECK(w.mamba_heads % per_group == 0, what, ": whole-group Mamba removal keeps ", per_group,
               " heads per group, so mamba_num_heads must be a multiple of ", per_group, ", found ", w.mamba_heads);
      w.groups = w.mamba_heads / per_group;
    }
    MP_CHECK(w.mamba_heads % w.groups == 0, what, ": mamba_num_heads ", w.mamba_heads,
             " is not a multiple of n_groups ", w.groups,
             "; B and C are shared per group, so every group must keep the same number of heads (try ",
             w.groups * std::max<int64_t>(1, w.mamba_heads / w.groups), ")");
    MP_CHECK(w.mamba_heads / w.groups <= per_group, what, ": ", w.mamba_heads, " Mamba heads over ", w.groups,
             " groups is ", w.mamba_heads / w.groups, " per group, but the parent's groups hold only ", per_group);
  }
  resolve_moe_widths(s, t, w);
  if (t.full_config) {  // fields that pruning cannot change must be the parent's
    const ModelConfig& c = *t.full_config;
    auto same = [&](int64_t a, int64_t b, const char* name) {
      MP_CHECK(a == b, what, ": ", name, " is ", a, " but the parent's is ", b, "; pruning cannot change it");
    };
    same(c.vocab_size, s.vocab_size, "vocab_size");
    if (c.count(LayerType::Attention)) same(c.head_dim, s.head_dim, "head_dim (attention)");
    if (c.count(LayerType::Mamba)) {
      same(c.ssm_state_size, s.ssm_state_size, "ssm_state_size");
      same(c.conv_kernel, s.conv_kernel, "conv_kernel");
    }
    same(c.use_bias, s.use_bias, "use_bias");
    same(c.use_conv_bias, s.use_conv_bias, "use_conv_bias");
    same(c.mlp_bias, s.mlp_bias, "mlp_bias");
    if (c.count(LayerType::Moe)) {
      same(c.moe_latent_size, s.moe_latent_size, "moe_latent_size");
      same(c.n_group, s.n_group, "n_group");
      same(c.topk_group, s.topk_group, "topk_group");
      same(c.norm_topk_prob, s.norm_topk_prob, "norm_topk_prob");
      MP_CHECK(c.routed_scaling_factor == s.routed_scaling_factor, what, ": routed_scaling_factor differs from the "
               "parent's; pruning cannot change it");
    }
  }
  return w;
}

std::vector<int64_t> choose_dropped(const ModelConfig& s, const PruneTarget& t, const Scores* scores) {
  const std::string& what = t.origin;
  const int64_t L = s.num_layers();
  MP_CHECK(t.drop_layers.empty() || t.drop_count == 0, what,
           ": give either drop_layers (explicit indices) or drop_count (chosen by importance), not both");
  std::vector<int64_t> dropped = t.drop_layers;
  for (auto i : dropped)
    MP_CHECK(i >= 0 && i < L, what, ": layer index ", i, " does not exist; the parent has ", L, " layers (0..",
             L - 1, ", pattern ", s.pattern(), ")");
  std::sort(dropped.begin(), dropped.end());
  MP_CHECK(std::adjacent_find(dropped.begin(), dropped.end()) == dropped.end(), what,
           ": drop_layers lists a layer twice (", join(t.drop_layers), ")");
  if (t.drop_count > 0) {
    MP_CHECK(t.drop_count < L, what, ": drop_count ", t.drop_count, " would remove every layer (the parent has ", L, ")");
    MP_CHECK(scores, what, ": drop_count needs depth importance; pass --scores (from `minipuzzle score`)");
    if (t.depth_criterion == "iterative") {
      MP_CHECK(static_cast<int64_t>(scores->removal_order.size()) >= t.drop_count, what,
               ": the scores' iterative removal order has ", scores->removal_order.size(), " layers, fewer than ",
               t.drop_count, " to drop (score with more --iterative-steps)");
      dropped.assign(scores->removal_order.begin(), scores->removal_order.begin() + t.drop_count);
    } else {
      std::vector<double> importance;
      for (auto& l : scores->layers) {
        auto it = l.depth.by_criterion.find(t.depth_criterion);
        if (it == l.depth.by_criterion.end()) {
          std::string have;
          for (auto& [k, _] : l.depth.by_criterion) have += (have.empty() ? "" : ", ") + k;
          fail(what, ": the scores have no depth criterion \"", t.depth_criterion, "\" for layer ", l.index,
               " (available: ", have.empty() ? "none; score with depth on" : have, ", or \"iterative\")");
        }
        importance.push_back(it->second);
      }
      // Least important first: the k lowest scores.
      std::vector<double> negated(importance.size());
      for (size_t i = 0; i < importance.size(); ++i) negated[i] = -importance[i];
      dropped = top_k(negated, all_of(L), t.drop_count);
    }
    std::sort(dropped.begin(), dropped.end());
  }
  MP_CHECK(static_cast<int64_t>(dropped.size()) < L, what, ": dropping ", dropped.size(), " of ", L,
           " layers leaves none");
  return dropped;
}

bool needs_scores(const ModelConfig& s, const Widths& w, const PruneTarget& t) {
  return w.hidden < s.hidden_size || (s.count(LayerType::Mlp) && w.ffn < s.intermediate_size) ||
         (s.count(LayerType::Attention) && (w.heads < s.num_attention_heads || w.kv < s.num_key_value_heads)) ||
         (s.count(LayerType::Mamba) && (w.mamba_heads < s.mamba_num_heads || w.mamba_head_dim < s.mamba_head_dim)) ||
         (s.count(LayerType::Moe) && (w.experts < s.n_routed_experts || w.expert_ffn < s.moe_intermediate_size ||
                                      w.shared_ffn < s.moe_shared_expert_intermediate_size)) ||
         t.drop_count > 0;
}

const LayerScores& layer_scores(const Scores* scores, int64_t i) { return scores->layers[static_cast<size_t>(i)]; }

void require(bool present, const std::string& field, int64_t layer) {
  MP_CHECK(present, "the scores have no ", field, " for layer ", layer,
           ", which this target prunes (score with width importance on)");
}

void plan_attention(LayerPlan& lp, const ModelConfig& s, const Widths& w, const Scores* scores) {
  const int64_t kv = s.num_key_value_heads, per_group = s.num_attention_heads / kv;
  const int64_t keep_per_group = w.heads / w.kv;
  if (w.heads == s.num_attention_heads) {
    lp.attn_heads = all_of(s.num_attention_heads);
    lp.attn_kv_heads = all_of(kv);
    return;
  }
  const LayerScores& ls = layer_scores(scores, lp.source);
  require(!ls.attn_heads.empty() || keep_per_group == per_group, "attention head scores", lp.source);
  if (w.kv == kv) {
    lp.attn_kv_heads = all_of(kv);
  } else {  // whole KV groups go: rank them by their own score, or by the sum of their query heads'
    std::vector<double> group_score = ls.attn_kv_groups;
    if (group_score.empty()) {
      require(!ls.attn_heads.empty(), "attention head or KV-group scores", lp.source);
      group_score.assign(static_cast<size_t>(kv), 0.0);
      for (int64_t h = 0; h < s.num_attention_heads; ++h) group_score[h / per_group] += ls.attn_heads[h];
    }
    lp.attn_kv_heads = top_k(group_score, all_of(kv), w.kv);
  }
  for (int64_t g : lp.attn_kv_heads) {
    std::vector<int64_t> members(static_cast<size_t>(per_group));
    std::iota(members.begin(), members.end(), g * per_group);
    auto kept = keep_per_group == per_group ? members : top_k(ls.attn_heads, members, keep_per_group);
    lp.attn_heads.insert(lp.attn_heads.end(), kept.begin(), kept.end());
  }
}

void plan_mamba(LayerPlan& lp, const ModelConfig& s, const Widths& w, const PruneTarget& t, const Scores* scores) {
  const int64_t H = s.mamba_num_heads, G = s.n_groups, per_group = H / G;
  const int64_t keep_per_group = w.mamba_heads / w.groups;
  if (w.mamba_head_dim == s.mamba_head_dim) {
    lp.mamba_head_dim = all_of(s.mamba_head_dim);
  } else {
    const auto& pos = layer_scores(scores, lp.source).mamba.head_dim;
    require(!pos.empty(), "Mamba head_dim scores", lp.source);
    lp.mamba_head_dim = top_k(pos, all_of(s.mamba_head_dim), w.mamba_head_dim);
  }
  if (w.mamba_heads == H) {
    lp.mamba_groups = all_of(G);
    lp.mamba_heads = all_of(H);
    return;
  }
  const MambaScores& ms = layer_scores(scores, lp.source).mamba;
  std::vector<double> nested;
  if (t.mamba_head_criterion == "nested") {  // Minitron-SSM: heads scored over the head_dim positions kept here
    require(!ms.channels.empty() && !ms.head_dim.empty(), "Mamba channel and head_dim scores (for \"nested\")",
            lp.source);
    nested = nested_mamba_head_scores(ms, H, s.mamba_head_dim, w.mamba_head_dim);
  }
  const std::vector<double>& head_score =
      t.mamba_head_criterion == "nested" ? nested : mamba_head_scores(ms, t.mamba_head_criterion);
  // Rank within a group from the chosen head scores; else from the stored within-group ranking.
  auto rank_in_group = [&](int64_t g) -> std::vector<int64_t> {
    std::vector<int64_t> members(static_cast<size_t>(per_group));
    std::iota(members.begin(), members.end(), g * per_group);
    if (keep_per_group == per_group) return members;
    if (!head_score.empty()) return top_k(head_score, members, keep_per_group);
    require(t.mamba_head_criterion == "heads" && static_cast<int64_t>(ms.head_rank_in_group.size()) == G,
            "Mamba head scores (\"" + t.mamba_head_criterion + "\")", lp.source);
    const auto& order = ms.head_rank_in_group[static_cast<size_t>(g)];
    MP_CHECK(static_cast<int64_t>(order.size()) == per_group, "scores: head_rank_in_group of layer ", lp.source,
             " group ", g, " lists ", order.size(), " heads, expected ", per_group);
    std::vector<int64_t> kept;
    for (int64_t k = 0; k < keep_per_group; ++k) {
      int64_t h = order[static_cast<size_t>(k)];
      // Accept both within-group positions (0..per_group-1) and absolute head ids.
      kept.push_back(h < per_group ? g * per_group + h : h);
      MP_CHECK(kept.back() / per_group == g, "scores: head_rank_in_group of layer ", lp.source, " group ", g,
               " names head ", h, ", which is not in that group");
    }
    std::sort(kept.begin(), kept.end());
    return kept;
  };
  if (w.groups == G) {
    lp.mamba_groups = all_of(G);
  } else {
    std::vector<double> group_score = ms.groups;
    if (group_score.empty()) {
      require(!head_score.empty(), "Mamba group or head scores", lp.source);
      group_score.assign(static_cast<size_t>(G), 0.0);
      for (int64_t h = 0; h < H; ++h) group_score[h / per_group] += head_score[h];
    }
    lp.mamba_groups = top_k(group_score, all_of(G), w.groups);
  }
  for (int64_t g : lp.mamba_groups) {
    auto kept = rank_in_group(g);
    lp.mamba_heads.insert(lp.mamba_heads.end(), kept.begin(), kept.end());
  }
}

const std::vector<double>& expert_scores(const MoeScores& m, const std::string& criterion) {
  if (criterion == "experts") return m.experts;
  if (criterion == "frequency") return m.frequency;
  if (criterion == "loss") return m.loss;
  fail("expert_criterion \"", criterion, "\" is unknown; expected experts, frequency or loss");
}

void plan_moe(LayerPlan& lp, const ModelConfig& s, const Widths& w, const PruneTarget& t, const Scores* scores) {
  const int64_t E = s.n_routed_experts, F = s.moe_intermediate_size, G = s.n_group;
  lp.moe_top_k = w.top_k;
  if (w.experts == E) {
    lp.moe_experts = all_of(E);
  } else {
    const std::vector<double>& score = expert_scores(layer_scores(scores, lp.source).moe, t.expert_criterion);
    require(!score.empty(), "MoE expert scores (\"" + t.expert_criterion + "\")", lp.source);
    const int64_t per = E / G;
    for (int64_t g = 0; g < G; ++g) {  // the best w.experts / G of every group
      std::vector<int64_t> members(static_cast<size_t>(per));
      std::iota(members.begin(), members.end(), g * per);
      auto kept = top_k(score, members, w.experts / G);
      lp.moe_experts.insert(lp.moe_experts.end(), kept.begin(), kept.end());
    }
  }
  const auto& channel_scores = scores ? layer_scores(scores, lp.source).moe.expert_channels : std::vector<double>();
  if (w.expert_ffn < F) require(!channel_scores.empty(), "MoE expert channel scores", lp.source);
  for (int64_t e : lp.moe_experts) {
    if (w.expert_ffn == F) {
      lp.moe_channels.push_back(all_of(F));
      continue;
    }
    std::vector<double> mine(channel_scores.begin() + e * F, channel_scores.begin() + (e + 1) * F);
    lp.moe_channels.push_back(top_k(mine, all_of(F), w.expert_ffn));
  }
  const int64_t S = s.moe_shared_expert_intermediate_size;
  if (w.shared_ffn == S) {
    lp.moe_shared = all_of(S);
  } else {
    const auto& sh = layer_scores(scores, lp.source).moe.shared;
    require(!sh.empty(), "MoE shared-expert channel scores", lp.source);
    lp.moe_shared = top_k(sh, all_of(S), w.shared_ffn);
  }
}

}  // namespace

std::vector<int64_t> LayerPlan::mamba_channels(int64_t parent_head_dim) const {
  std::vector<int64_t> c;
  c.reserve(mamba_heads.size() * mamba_head_dim.size());
  for (int64_t h : mamba_heads)
    for (int64_t p : mamba_head_dim) c.push_back(h * parent_head_dim + p);
  return c;
}

PrunePlan make_plan(const ModelConfig& source, const PruneTarget& target, const Scores* scores) {
  source.validate();
  const Widths w = resolve_widths(source, target);
  if (scores) check_scores_fit(*scores, source, "scores");
  MP_CHECK(scores || !needs_scores(source, w, target), target.origin,
           ": this target removes units, which are chosen by importance; pass --scores (from `minipuzzle score`)");

  PrunePlan plan;
  plan.source = source;
  plan.dropped_layers = choose_dropped(source, target, scores);

  ModelConfig& out = plan.target;
  out = source;
  out.layers.clear();
  for (int64_t i = 0; i < source.num_layers(); ++i)
    if (!std::binary_search(plan.dropped_layers.begin(), plan.dropped_layers.end(), i)) out.layers.push_back(source.layers[i]);
  out.hidden_size = w.hidden;
  out.intermediate_size = w.ffn;
  out.num_attention_heads = w.heads;
  out.num_key_value_heads = w.kv;
  out.mamba_num_heads = w.mamba_heads;
  out.mamba_head_dim = w.mamba_head_dim;
  out.n_groups = w.groups;
  if (source.count(LayerType::Moe)) {
    out.n_routed_experts = w.experts;
    out.moe_intermediate_size = w.expert_ffn;
    out.moe_shared_expert_intermediate_size = w.shared_ffn;
    out.num_experts_per_tok = w.top_k;
  }
  // MTP layers have the main model's hidden size, attention and MoE shapes: copied only if those are unchanged.
  plan.drop_mtp = target.drop_mtp;
  plan.mtp_shapes_unchanged = w.hidden == source.hidden_size && w.heads == source.num_attention_heads &&
                              w.kv == source.num_key_value_heads && out.n_routed_experts == source.n_routed_experts &&
                              out.moe_intermediate_size == source.moe_intermediate_size &&
                              out.moe_shared_expert_intermediate_size == source.moe_shared_expert_intermediate_size;
  if (target.drop_mtp) out.num_nextn_predict_layers = 0;
  if (target.full_config) {
    MP_CHECK(target.full_config->pattern() == out.pattern(), target.origin, ": the target's layer pattern ",
             target.full_config->pattern(), " is not the parent's ", source.pattern(), " without layers [",
             join(plan.dropped_layers), "] (which gives ", out.pattern(), ")");
  }
  out.validate();

  if (w.hidden == source.hidden_size) {
    plan.hidden = all_of(source.hidden_size);
  } else {
    MP_CHECK(!scores->hidden.empty(), "the scores have no embedding-channel (hidden) scores, which this target prunes");
    plan.hidden = top_k(scores->hidden, all_of(source.hidden_size), w.hidden);
  }
  for (int64_t i = 0; i < source.num_layers(); ++i) {
    if (std::binary_search(plan.dropped_layers.begin(), plan.dropped_layers.end(), i)) continue;
    LayerPlan lp;
    lp.source = i;
    lp.type = source.layers[i];
    switch (lp.type) {
      case LayerType::Mlp:
        if (w.ffn == source.intermediate_size) {
          lp.mlp_neurons = all_of(source.intermediate_size);
        } else {
          require(!layer_scores(scores, i).mlp_neurons.empty(), "MLP neuron scores", i);
          lp.mlp_neurons = top_k(layer_scores(scores, i).mlp_neurons, all_of(source.intermediate_size), w.ffn);
        }
        break;
      case LayerType::Attention: plan_attention(lp, source, w, scores); break;
      case LayerType::Mamba: plan_mamba(lp, source, w, target, scores); break;
      case LayerType::Moe: plan_moe(lp, source, w, target, scores); break;
    }
    plan.layers.push_back(std::move(lp));
  }
  return plan;
}

bool PrunePlan::is_identity() const {
  if (!dropped_layers.empty() || static_cast<int64_t>(hidden.size()) != source.hidden_size) return false;
  for (auto& l : layers) {
    if (l.type == LayerType::Mlp && static_cast<int64_t>(l.mlp_neurons.size()) != source.intermediate_size) return false;
    if (l.type == LayerType::Attention && static_cast<int64_t>(l.attn_heads.size()) != source.num_attention_heads) return false;
    if (l.type == LayerType::Mamba && static_cast<int64_t>(l.mamba_channels(source.mamba_head_dim).size()) != source.mamba_d_inner())
      return false;
    if (l.type == LayerType::Moe) {
      if (static_cast<int64_t>(l.moe_experts.size()) != source.n_routed_experts ||
          static_cast<int64_t>(l.moe_shared.size()) != source.moe_shared_expert_intermediate_size ||
          l.moe_top_k != source.num_experts_per_tok)
        return false;
      for (auto& c : l.moe_channels)
        if (static_cast<int64_t>(c.size()) != source.moe_intermediate_size) return false;
    }
  }
  return true;
}

std::map<int64_t, LayerMask> PrunePlan::parent_masks() const {
  auto mask_of = [](int64_t n, const std::vector<int64_t>& kept) {
    at::Tensor m = at::zeros({n}, at::kFloat);
    m.index_fill_(0, at::tensor(kept, at::kLong), 1.0);
    return m;
  };
  std::map<int64_t, LayerMask> masks;
  for (auto& l : layers) {
    LayerMask m;
    if (l.type == LayerType::Mlp && static_cast<int64_t>(l.mlp_neurons.size()) < source.intermediate_size)
      m.mlp_neurons = mask_of(source.intermediate_size, l.mlp_neurons);
    if (l.type == LayerType::Attention && static_cast<int64_t>(l.attn_heads.size()) < source.num_attention_heads)
      m.attn_heads = mask_of(source.num_attention_heads, l.attn_heads);
    if (l.type == LayerType::Mamba) {
      auto channels = l.mamba_channels(source.mamba_head_dim);
      if (static_cast<int64_t>(channels.size()) < source.mamba_d_inner()) m.mamba_channels = mask_of(source.mamba_d_inner(), channels);
    }
    if (l.type == LayerType::Moe) {
      const int64_t E = source.n_routed_experts, F = source.moe_intermediate_size;
      if (static_cast<int64_t>(l.moe_experts.size()) < E) m.moe_experts = mask_of(E, l.moe_experts);
      if (static_cast<int64_t>(l.moe_shared.size()) < source.moe_shared_expert_intermediate_size)
        m.moe_shared_channels = mask_of(source.moe_shared_expert_intermediate_size, l.moe_shared);
      if (!l.moe_channels.empty() && static_cast<int64_t>(l.moe_channels[0].size()) < F) {
        m.moe_expert_channels = at::ones({E, F}, at::kFloat);  // removed experts never run: their rows do not matter
        for (size_t k = 0; k < l.moe_experts.size(); ++k) m.moe_expert_channels[l.moe_experts[k]] = mask_of(F, l.moe_channels[k]);
      }
      if (l.moe_top_k != source.num_experts_per_tok) m.moe_top_k = l.moe_top_k;
    }
    if (m.mlp_neurons.defined() || m.attn_heads.defined() || m.mamba_channels.defined() || m.moe_experts.defined() ||
        m.moe_shared_channels.defined() || m.moe_expert_channels.defined() || m.moe_top_k > 0)
      masks[l.source] = m;
  }
  return masks;
}

std::vector<bool> PrunePlan::parent_skip_layers() const {
  std::vector<bool> skip(static_cast<size_t>(source.num_layers()), false);
  for (auto i : dropped_layers) skip[static_cast<size_t>(i)] = true;
  return skip;
}

json PrunePlan::to_json() const {
  json layers_json = json::array();
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerPlan& l = layers[i];
    json e{{"index", i}, {"source", l.source}, {"type", layer_type_name(l.type)}};
    if (l.type == LayerType::Mlp) e["mlp_neurons"] = l.mlp_neurons;
    if (l.type == LayerType::Attention) {
      e["attn_heads"] = l.attn_heads;
      e["attn_kv_heads"] = l.attn_kv_heads;
    }
    if (l.type == LayerType::Mamba) {
      e["mamba_groups"] = l.mamba_groups;
      e["mamba_heads"] = l.mamba_heads;
      e["mamba_head_dim"] = l.mamba_head_dim;
    }
    if (l.type == LayerType::Moe) {
      e["moe_experts"] = l.moe_experts;
      e["moe_expert_channels"] = l.moe_channels;
      e["moe_shared"] = l.moe_shared;
      e["num_experts_per_tok"] = l.moe_top_k;
    }
    layers_json.push_back(e);
  }
  return {{"source_pattern", source.pattern()}, {"target_pattern", target.pattern()},
          {"dropped_layers", dropped_layers},   {"hidden", hidden},
          {"layers", layers_json}};
}

}  // namespace mp
