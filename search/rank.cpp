// Enumeration, feasibility and staged ranking.
//
// Enumeration walks depth choices (outer) and widths (inner, FFN innermost and ascending). Memory and
// parameters only grow with the FFN width, so once a point is over the budget the rest of that FFN run is
// counted as over the budget without being costed: the search stays linear in the feasible region.
//
// Stage 1 ranks every feasible point by a proxy (SearchOptions::proxy): the product over axes of the importance
// mass kept (the sum of the kept units' scores over the sum of all, kept units being the top-k; uniform where no
// scores are given), or how close the point comes to the binding constraint (the largest student that fits first).
// Stage 2 re-ranks the best M by the zero-shot LM loss of the pruned model (a callback), stage 3 the best K of
// those by the LM loss after a short distillation (a callback).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/search.h"

namespace mp::search {

Proxy parse_proxy(const std::string& text) {
  if (text == "auto") return Proxy::Auto;
  if (text == "fill") return Proxy::Fill;
  if (text == "importance") return Proxy::Importance;
  fail("proxy \"", text, "\": expected auto, fill or importance");
}

const char* proxy_name(Proxy proxy) {
  switch (proxy) {
    case Proxy::Auto: return "auto";
    case Proxy::Fill: return "fill";
    case Proxy::Importance: return "importance";
  }
  return "?";
}

namespace {

// Fraction of importance kept when the top k units of an axis are kept.
struct AxisMass {
  std::vector<double> kept;  // kept[k] for k = 0..units
  void build(std::vector<double> scores, int64_t units, const char* axis) {
    if (scores.empty()) {
      kept.resize(static_cast<size_t>(units) + 1);
      for (int64_t k = 0; k <= units; ++k) kept[static_cast<size_t>(k)] = units ? double(k) / double(units) : 1.0;
      return;
    }
    MP_CHECK(static_cast<int64_t>(scores.size()) == units, "scores for ", axis, " have ", scores.size(),
             " entries but the parent has ", units, " (were the scores computed on this model?)");
    for (double& s : scores) s = std::max(0.0, s);
    std::sort(scores.begin(), scores.end(), std::greater<double>());
    kept.assign(scores.size() + 1, 0.0);
    for (size_t i = 0; i < scores.size(); ++i) kept[i + 1] = kept[i] + scores[i];
    double total = kept.back();
    for (double& v : kept) v = total > 0 ? v / total : 1.0;
  }
  double at(int64_t k) const {
    k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(kept.size()) - 1);
    return kept[static_cast<size_t>(k)];
  }
};

struct Depth {
  int64_t drop_mamba = 0, drop_attention = 0, drop_mlp = 0, drop_moe = 0;
  std::vector<int64_t> dropped;
  double mass = 1.0;  // importance of the kept layers over all layers
};

// A costed point, small enough to keep many of.
struct Point {
  int32_t depth = 0;
  Shape shape;
  double proxy = 0, memory = 0, params = 0, tokens_per_s = 0;
};

// Proxies equal up to rounding are ties: they are kept on a grid of 1e-12 (a proxy lies in [0, ~1]), so that two
// products of the same fractions taken in different orders compare equal, and the order stays a strict weak one.
double quantize_proxy(double v) { return std::round(v * 1e12) / 1e12; }

// Predicted rates on a grid of 1e-3 tokens/s, for the same reason: the enumeration takes them from a line through
// two roofline evaluations, a reference from its own evaluation, and the two may differ in the last bits.
double quantize_rate(double v) { return std::round(v * 1e3) / 1e3; }

// The report prints proxies with 4 decimals; candidates printed alike look tied to a reader.
constexpr double kShownScale = 1e4;

// Better stage-1 rank first: proxy; at equal proxy the higher predicted throughput (what a user of the student
// feels; without scores whole families of shapes tie on the proxy), then for the importance proxy the smaller
// student (the same importance kept at a lower cost), for fill the larger one; then the id-defining fields for
// determinism.
struct Better {
  bool smaller_first = false;
  bool operator()(const Point& a, const Point& b) const {
    if (a.proxy != b.proxy) return a.proxy > b.proxy;
    const double ra = quantize_rate(a.tokens_per_s), rb = quantize_rate(b.tokens_per_s);
    if (ra != rb) return ra > rb;
    if (a.params != b.params) return smaller_first ? a.params < b.params : a.params > b.params;
    if (a.depth != b.depth) return a.depth < b.depth;
    if (a.shape.hidden != b.shape.hidden) return a.shape.hidden > b.shape.hidden;
    if (a.shape.ffn != b.shape.ffn) return a.shape.ffn > b.shape.ffn;
    if (a.shape.mamba_heads != b.shape.mamba_heads) return a.shape.mamba_heads > b.shape.mamba_heads;
    if (a.shape.mamba_head_dim != b.shape.mamba_head_dim) return a.shape.mamba_head_dim > b.shape.mamba_head_dim;
    if (a.shape.attention_heads != b.shape.attention_heads) return a.shape.attention_heads > b.shape.attention_heads;
    if (a.shape.experts != b.shape.experts) return a.shape.experts > b.shape.experts;
    if (a.shape.expert_ffn != b.shape.expert_ffn) return a.shape.expert_ffn > b.shape.expert_ffn;
    return a.shape.shared_ffn > b.shape.shared_ffn;
  }
};

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  return buf;
}
std::string billions(double params) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3fB", params / 1e9);
  return buf;
}

class Searcher {
 public:
  Searcher(const ModelConfig& parent, const HardwareProfile& hw, const SearchOptions& o)
      : parent_(parent), hw_(hw), o_(o), base_(Shape::of(parent)) {
    budget_ = o.budget.usable_bytes();
    use_importance_ = o.proxy == Proxy::Importance || (o.proxy == Proxy::Auto && !o.scores.empty());
    hidden_.build(o.scores.hidden, parent.hidden_size, "hidden");
    ffn_.build(o.scores.ffn, parent.intermediate_size, "ffn");
    heads_.build(o.scores.mamba_heads, parent.mamba_num_heads, "mamba_heads");
    head_dim_.build(o.scores.mamba_head_dim, parent.mamba_head_dim, "mamba_head_dim");
    attn_.build(o.scores.attention_heads, parent.num_attention_heads, "attention_heads");
    if (base_.n_moe) {
      experts_.build(o.scores.experts, parent.n_routed_experts, "experts");
      expert_ffn_.build(o.scores.expert_ffn, parent.moe_intermediate_size, "expert_ffn");
      shared_ffn_.build(o.scores.shared_ffn, parent.moe_shared_expert_intermediate_size, "shared_ffn");
    }
    if (!o.scores.layer.empty())
      MP_CHECK(static_cast<int64_t>(o.scores.layer.size()) == parent.num_layers(), "layer importance has ",
               o.scores.layer.size(), " entries but the parent has ", parent.num_layers(), " layers");
    build_depths();
  }

  SearchResult run() {
    auto start = std::chrono::steady_clock::now();
    SearchResult r;
    r.proxy_kind = !use_importance_ ? "memory-closeness" : o_.scores.empty() ? "importance-uniform" : "importance";
    r.parent = evaluate_parent();
    for (auto& ref : o_.references) r.references.push_back(locate_reference(ref.first, ref.second));
    better_ = Better{use_importance_};
    ref_points_.clear();
    for (auto& ref : r.references) ref_points_.push_back(reference_point(ref));
    ref_better_.assign(r.references.size(), 0);
    enumerate();
    r.enumerated = enumerated_;
    r.feasible = feasible_;
    r.tied_at_best = tied_at_best_;
    r.shown_as_best = feasible_ ? shown_as_[std::llround(best_proxy_ * kShownScale)] : 0;
    r.proxy_best = best_proxy_;
    r.proxy_lowest = lowest_proxy_;
    r.ranking_note = ranking_note();
    for (auto& [reason, n] : reason_counts_) r.infeasible_by_reason.emplace_back(reason, n);
    std::sort(r.infeasible_by_reason.begin(), r.infeasible_by_reason.end(),
              [](auto& a, auto& b) { return a.second > b.second; });
    for (size_t i = 0; i < r.references.size(); ++i)
      if (r.references[i].candidate && r.references[i].candidate->feasible)
        r.references[i].candidate->rank = ref_better_[i] + 1;

    // Stage 1 order of the kept feasible points, plus Pareto points that fell outside the kept ones.
    std::sort(top_.begin(), top_.end(), better_);
    std::vector<Candidate> feasible;
    for (size_t i = 0; i < top_.size(); ++i) {
      Candidate c = materialize(top_[i]);
      c.rank = static_cast<int64_t>(i) + 1;
      c.stage = 1;
      feasible.push_back(std::move(c));
    }
    rank_stage2_and_3(feasible);
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < feasible.size(); ++i) index[feasible[i].id] = i;
    for (auto& [params, entry] : front_) {
      Candidate c = materialize(entry.second);
      auto it = index.find(c.id);
      if (it != index.end()) {
        feasible[it->second].pareto = true;
      } else {
        c.pareto = true;
        c.rank = 0;  // outside the kept stage-1 list; its stage-1 rank is not tracked
        c.stage = 1;
        feasible.push_back(std::move(c));
      }
    }
    r.candidates = std::move(feasible);
    std::sort(nearest_infeasible_.begin(), nearest_infeasible_.end(),
              [](const Point& a, const Point& b) { return a.memory < b.memory; });
    for (auto& p : nearest_infeasible_) r.candidates.push_back(materialize(p));
    for (auto& ref : r.references) {
      if (!ref.candidate || !ref.reachable) continue;
      for (auto& c : r.candidates)
        if (c.id == ref.candidate->id && c.rank > 0) ref.candidate->rank = c.rank, ref.candidate->stage = c.stage;
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
  }

 private:
  void build_depths() {
    const SearchSpace& s = o_.space;
    if (s.depth_per_type) {
      for (int64_t m : s.drop_mamba.values())
        for (int64_t a : s.drop_attention.values())
          for (int64_t f : s.drop_mlp.values())
            for (int64_t e : s.drop_moe.values()) {
              if (s.bound_total && (m + a + f + e < s.drop_total.min || m + a + f + e > s.drop_total.max)) continue;
              if (m > base_.n_mamba || a > base_.n_attention || f > base_.n_mlp || e > base_.n_moe) continue;
              if (m + a + f + e >= parent_.num_layers()) continue;
              // MoE axes need an MoE layer to size: a parent's MoE layers are never all dropped.
              if (base_.n_moe && e >= base_.n_moe) continue;
              Depth d{m, a, f, e, choose_dropped_layers(parent_, m, a, f, e, o_.scores.layer), 1.0};
              depths_.push_back(std::move(d));
            }
    } else {
      for (int64_t t : s.drop_total.values()) {
        if (t >= parent_.num_layers()) continue;
        Depth d;
        d.dropped = choose_dropped_layers_total(parent_, t, o_.scores.layer);
        for (int64_t i : d.dropped) {
          LayerType type = parent_.layers[static_cast<size_t>(i)];
          d.drop_mamba += type == LayerType::Mamba;
          d.drop_attention += type == LayerType::Attention;
          d.drop_mlp += type == LayerType::Mlp;
          d.drop_moe += type == LayerType::Moe;
        }
        if (base_.n_moe && d.drop_moe >= base_.n_moe) continue;
        depths_.push_back(std::move(d));
      }
    }
    MP_CHECK(!depths_.empty(), "the search space has no depth choice (check the drop ranges against the parent's ",
             base_.n_mamba, " Mamba, ", base_.n_attention, " attention, ", base_.n_mlp, " MLP and ", base_.n_moe,
             " MoE layers)");
    for (auto& d : depths_) d.mass = depth_mass(d.dropped);
  }

  double depth_mass(const std::vector<int64_t>& dropped) const {
    const auto& w = o_.scores.layer;
    if (w.empty()) return 1.0 - double(dropped.size()) / double(parent_.num_layers());
    double total = 0, lost = 0;
    for (double v : w) total += std::max(0.0, v);
    for (int64_t i : dropped) lost += std::max(0.0, w[static_cast<size_t>(i)]);
    return total > 0 ? (total - lost) / total : 1.0;
  }

  Shape shape_for(const Depth& d) const {
    Shape s = base_;
    s.n_mamba -= d.drop_mamba;
    s.n_attention -= d.drop_attention;
    s.n_mlp -= d.drop_mlp;
    s.n_moe -= d.drop_moe;
    return s;
  }

  double proxy(const Depth& d, const Shape& s, double memory) const { return quantize_proxy(raw_proxy(d, s, memory)); }
  double raw_proxy(const Depth& d, const Shape& s, double memory) const {
    if (!use_importance_) {
      // Closeness to the binding constraint: the largest student that fits comes first.
      double fill = memory / budget_;
      if (o_.space.max_params > 0 || o_.space.max_active_params > 0) {
        const ParamCounts p = count_params(s);
        if (o_.space.max_params > 0) fill = std::max(fill, static_cast<double>(p.total()) / o_.space.max_params);
        if (o_.space.max_active_params > 0)
          fill = std::max(fill, static_cast<double>(p.active()) / o_.space.max_active_params);
      }
      return fill;
    }
    double m = d.mass * hidden_.at(s.hidden);
    if (s.n_mlp) m *= ffn_.at(s.ffn);
    if (s.n_mamba) m *= heads_.at(s.mamba_heads) * head_dim_.at(s.mamba_head_dim);
    if (s.n_attention) m *= attn_.at(s.attention_heads);
    if (s.n_moe) m *= experts_.at(s.experts) * expert_ffn_.at(s.expert_ffn) * shared_ffn_.at(s.shared_ffn);
    return m;
  }

  // When stage 1 cannot tell its best candidates apart, what that means and what gives it something to go on:
  // exact ties at the best proxy, or, without scores, candidates the report prints with the best proxy (their
  // order then follows memory fill or unit counts in the fourth decimal, which says nothing about accuracy).
  std::string ranking_note() const {
    const int64_t shown = feasible_ ? shown_as_.at(std::llround(best_proxy_ * kShownScale)) : 0;
    const bool exact = tied_at_best_ > 1, shown_tie = o_.scores.empty() && shown > 1;
    if (feasible_ < 2 || (!exact && !shown_tie)) return "";
    const bool staged = o_.zero_shot_loss && o_.stage2_top > 0;
    char best[32];
    std::snprintf(best, sizeof best, "%.4f", best_proxy_);
    const std::string why = !use_importance_
                                ? "the fill proxy measures how much of the budget a student uses, not its accuracy"
                            : o_.scores.empty()
                                ? "without scores every unit counts the same, so shapes keeping the same fractions tie"
                                : "their kept importance is equal";
    std::string note = "stage 1 cannot tell its best candidates apart: " +
                       std::to_string(exact ? tied_at_best_ : shown) + " of " + std::to_string(feasible_) +
                       " feasible candidates " + (exact ? "tie at proxy " : "show proxy ") + best + " (" + why +
                       (lowest_proxy_ == best_proxy_ ? "; all feasible proxies are equal" : "") +
                       "); among them the order is predicted throughput, then parameters.";
    if (o_.scores.empty())
      note += " Pass --scores scores.json (from `minipuzzle score`) to rank by measured importance";
    else
      note += " Give scores for every axis, or rank further";
    note += staged ? "; stage 2 (zero-shot loss) re-ranked the best " + std::to_string(o_.stage2_top) + "."
                   : ", and --zero-shot-top M --calib FILE to re-rank the best M by the pruned model's loss.";
    return note;
  }

  // Reasons a point is infeasible (empty: feasible).
  std::vector<std::string> judge(double memory, double params, double active) const {
    std::vector<std::string> why;
    if (memory > budget_) why.push_back("memory " + gib(memory) + " > budget " + gib(budget_));
    if (o_.space.max_params > 0 && params > o_.space.max_params)
      why.push_back("parameters " + billions(params) + " > max " + billions(o_.space.max_params));
    if (o_.space.min_params > 0 && params < o_.space.min_params)
      why.push_back("parameters " + billions(params) + " < min " + billions(o_.space.min_params));
    if (o_.space.max_active_params > 0 && active > o_.space.max_active_params)
      why.push_back("active parameters " + billions(active) + " > max " + billions(o_.space.max_active_params));
    if (o_.space.min_active_params > 0 && active < o_.space.min_active_params)
      why.push_back("active parameters " + billions(active) + " < min " + billions(o_.space.min_active_params));
    return why;
  }
  // Active parameters of a point: the total for a dense shape.
  static double active_params(const Shape& s, double total) {
    return s.n_moe ? static_cast<double>(count_params(s).active()) : total;
  }
  static std::string reason_key(const std::string& reason) {
    if (reason.rfind("memory", 0) == 0) return "memory over budget";
    if (reason.rfind("active", 0) == 0)
      return reason.find("> max") != std::string::npos ? "active parameters above max" : "active parameters below min";
    if (reason.find("> max") != std::string::npos) return "parameters above max";
    return "parameters below min";
  }

  void enumerate() {
    const SearchSpace& s = o_.space;
    const auto hiddens = s.hidden.values(), heads = s.mamba_heads.values(), head_dims = s.mamba_head_dim.values(),
               attns = s.attention_heads.values();
    // An axis that sizes no layer of the parent is one point, the parent's (a range given for it would only
    // repeat candidates).
    const auto ffns = base_.n_mlp ? s.ffn.values() : std::vector<int64_t>{parent_.intermediate_size};
    const auto experts = base_.n_moe ? s.experts.values() : std::vector<int64_t>{base_.experts};
    const auto expert_ffns = base_.n_moe ? s.expert_ffn.values() : std::vector<int64_t>{base_.expert_ffn};
    const auto shared_ffns = base_.n_moe ? s.shared_ffn.values() : std::vector<int64_t>{base_.shared_ffn};
    if (base_.n_moe) {
      for (int64_t e : experts) {
        const std::string why = expert_count_problem(parent_, e);
        MP_CHECK(why.empty(), "experts range: ", why);
      }
      for (int64_t f : expert_ffns)
        MP_CHECK(f > 0 && f <= base_.expert_ffn, "expert_ffn ", f, " is outside 1..", base_.expert_ffn,
                 " (the parent's moe_intermediate_size)");
      for (int64_t f : shared_ffns)
        MP_CHECK(f >= 0 && f <= base_.shared_ffn, "shared_ffn ", f, " is outside 0..", base_.shared_ffn,
                 " (the parent's moe_shared_expert_intermediate_size)");
    }
    for (int64_t h : heads)
      MP_CHECK(base_.n_groups <= 0 || h % base_.n_groups == 0, "Mamba heads ", h, " is not a multiple of n_groups ",
               base_.n_groups, " (B and C are shared per group; heads are kept per group)");
    for (int64_t a : attns)
      MP_CHECK(base_.kv_heads <= 0 || a % base_.kv_heads == 0, "attention heads ", a,
               " is not a multiple of the KV heads ", base_.kv_heads);
    // Attention heads and the MoE widths (one point each for a dense parent), innermost but for the FFN run.
    struct Inner {
      int64_t attention_heads, experts, expert_ffn, shared_ffn;
    };
    std::vector<Inner> inner;
    for (int64_t na : attns)
      for (int64_t ne : experts)
        for (int64_t ef : expert_ffns)
          for (int64_t sf : shared_ffns) inner.push_back({na, ne, ef, sf});
    Progress progress("search", static_cast<int64_t>(depths_.size()), "depths");
    for (size_t di = 0; di < depths_.size(); ++di) {
      const Depth& d = depths_[di];
      Shape s = shape_for(d);
      for (int64_t hidden : hiddens)
        for (int64_t nh : heads)
          for (int64_t hd : head_dims)
            for (const Inner& in : inner) {
              s.hidden = hidden, s.mamba_heads = nh, s.mamba_head_dim = hd, s.attention_heads = in.attention_heads;
              s.experts = in.experts, s.expert_ffn = in.expert_ffn, s.shared_ffn = in.shared_ffn;
              // The workload's time is affine in the FFN width (bytes and FLOPs both are), so two roofline
              // evaluations per FFN run give every point of the run exactly.
              bool have_line = false;
              double time0 = 0, slope = 0;
              auto workload_seconds = [&](int64_t ffn) {
                if (!have_line) {
                  Shape a = s, b = s;
                  a.ffn = ffns[0];
                  Throughput ta = predict_throughput(a, o_.setup, hw_, o_.workload);
                  time0 = ta.prefill_s + ta.decode_s;
                  if (ffns.size() > 1) {
                    b.ffn = ffns[1];
                    Throughput tb = predict_throughput(b, o_.setup, hw_, o_.workload);
                    slope = (tb.prefill_s + tb.decode_s - time0) / static_cast<double>(ffns[1] - ffns[0]);
                  }
                  have_line = true;
                }
                return time0 + slope * static_cast<double>(ffn - ffns[0]);
              };
              const double output_tokens = static_cast<double>(o_.setup.batch * o_.workload.output_tokens);
              for (size_t fi = 0; fi < ffns.size(); ++fi) {
                s.ffn = ffns[fi];
                ++enumerated_;
                Point p;
                p.depth = static_cast<int32_t>(di);
                p.shape = s;
                MemoryBreakdown mem = estimate_memory(s, o_.setup);
                p.memory = mem.total();
                p.params = mem.weights / dtype_bytes(o_.setup.weights);  // exact: bytes per element is 2^k
                auto why = judge(p.memory, p.params, active_params(s, p.params));
                if (!why.empty()) {
                  ++reason_counts_[reason_key(why.front())];  // each point counted once, under its first reason
                  keep_infeasible(p);
                  if (p.memory > budget_) {
                    // Wider FFNs only need more: count the rest of this run without costing it.
                    int64_t rest = static_cast<int64_t>(ffns.size() - fi - 1);
                    enumerated_ += rest;
                    reason_counts_["memory over budget"] += rest;
                    break;
                  }
                  continue;
                }
                ++feasible_;
                p.proxy = proxy(d, s, p.memory);
                p.tokens_per_s = output_tokens / workload_seconds(s.ffn);
                if (feasible_ == 1 || p.proxy > best_proxy_) best_proxy_ = p.proxy, tied_at_best_ = 0;
                if (p.proxy == best_proxy_) ++tied_at_best_;
                lowest_proxy_ = feasible_ == 1 ? p.proxy : std::min(lowest_proxy_, p.proxy);
                ++shown_as_[std::llround(p.proxy * kShownScale)];
                for (size_t r = 0; r < ref_points_.size(); ++r) ref_better_[r] += better_(p, ref_points_[r]);
                keep_feasible(p);
                add_to_front(p);
              }
            }
      progress.advance(1, {{"feasible", feasible_}});
    }
    progress.finish({{"enumerated", enumerated_}, {"feasible", feasible_}});
  }

  void keep_feasible(const Point& p) {
    const Better& cmp = better_;  // heap top = worst kept
    if (static_cast<int64_t>(top_.size()) < std::max<int64_t>(o_.keep_feasible, 1)) {
      top_.push_back(p);
      std::push_heap(top_.begin(), top_.end(), cmp);
    } else if (better_(p, top_.front())) {
      std::pop_heap(top_.begin(), top_.end(), cmp);
      top_.back() = p;
      std::push_heap(top_.begin(), top_.end(), cmp);
    }
  }

  void keep_infeasible(const Point& p) {
    auto cmp = [](const Point& a, const Point& b) { return a.memory < b.memory; };  // heap top = farthest
    if (o_.keep_infeasible <= 0) return;
    if (static_cast<int64_t>(nearest_infeasible_.size()) < o_.keep_infeasible) {
      nearest_infeasible_.push_back(p);
      std::push_heap(nearest_infeasible_.begin(), nearest_infeasible_.end(), cmp);
    } else if (p.memory < nearest_infeasible_.front().memory) {
      std::pop_heap(nearest_infeasible_.begin(), nearest_infeasible_.end(), cmp);
      nearest_infeasible_.back() = p;
      std::push_heap(nearest_infeasible_.begin(), nearest_infeasible_.end(), cmp);
    }
  }

  // Staircase of (parameters up, predicted tokens/s up): keys ascending, tokens/s strictly descending.
  void add_to_front(const Point& p) {
    auto it = front_.lower_bound(p.params);
    if (it != front_.end() && it->second.first >= p.tokens_per_s) return;  // dominated (or equal)
    it = front_.insert_or_assign(p.params, std::make_pair(p.tokens_per_s, p)).first;
    while (it != front_.begin()) {
      auto prev = std::prev(it);
      if (prev->second.first <= p.tokens_per_s) front_.erase(prev);
      else break;
    }
  }

  Candidate evaluate(const Shape& s, const std::vector<int64_t>& dropped, double depth_mass_value) const {
    Candidate c;
    c.shape = s;
    c.dropped_layers = dropped;
    c.id = candidate_id(s, dropped);
    std::string pat;
    size_t k = 0;
    for (int64_t i = 0; i < parent_.num_layers(); ++i) {
      if (k < dropped.size() && dropped[k] == i) {
        ++k;
        continue;
      }
      pat += static_cast<char>(parent_.layers[static_cast<size_t>(i)]);
    }
    c.pattern = pat;
    c.params = count_params(s);
    c.memory = estimate_memory(s, o_.setup);
    c.reasons = judge(c.memory.total(), static_cast<double>(c.params.total()), static_cast<double>(c.params.active()));
    c.feasible = c.reasons.empty();
    c.throughput = predict_throughput(s, o_.setup, hw_, o_.workload);
    Depth d;
    d.mass = depth_mass_value;
    c.proxy = proxy(d, s, c.memory.total());
    return c;
  }

  // A reference shape as a point, to count the enumerated points ranked before it.
  Point reference_point(const ReferenceResult& ref) const {
    Point p;
    p.depth = -1;
    if (!ref.candidate) {
      p.proxy = -1;  // not a pruned form of the parent: every point counts as better
      return p;
    }
    const Candidate& c = *ref.candidate;
    for (size_t i = 0; i < depths_.size(); ++i)
      if (depths_[i].dropped == c.dropped_layers) p.depth = static_cast<int32_t>(i);
    p.shape = c.shape;
    p.proxy = c.proxy;
    const double seconds = c.throughput.prefill_s + c.throughput.decode_s;
    p.tokens_per_s = seconds > 0 ? static_cast<double>(o_.setup.batch * o_.workload.output_tokens) / seconds : 0;
    p.memory = c.memory.total();
    p.params = static_cast<double>(c.params.total());
    return p;
  }

  Candidate materialize(const Point& p) const {
    const Depth& d = depths_[static_cast<size_t>(p.depth)];
    return evaluate(p.shape, d.dropped, d.mass);
  }

  Candidate evaluate_parent() const {
    Candidate c = evaluate(base_, {}, 1.0);
    c.id = "parent";
    return c;
  }

  // The parent layers a published student dropped, when its pattern is a subsequence of the parent's.
  bool align(const ModelConfig& ref, std::vector<int64_t>& dropped) const {
    dropped.clear();
    size_t j = 0;
    for (int64_t i = 0; i < parent_.num_layers(); ++i) {
      if (j < ref.layers.size() && ref.layers[j] == parent_.layers[static_cast<size_t>(i)]) ++j;
      else dropped.push_back(i);
    }
    return j == ref.layers.size();
  }

  ReferenceResult locate_reference(const std::string& name, const ModelConfig& ref) const {
    ReferenceResult out;
    out.name = name;
    Shape s = Shape::of(ref);
    std::ostringstream note;
    const SearchSpace& sp = o_.space;
    if (s.vocab != base_.vocab || s.kv_heads != base_.kv_heads || s.head_dim != base_.head_dim ||
        s.n_groups != base_.n_groups || s.state != base_.state || s.conv_kernel != base_.conv_kernel) {
      out.note = "not a pruned form of the parent (vocab, KV heads, head_dim, n_groups, state or conv kernel differ)";
      return out;
    }
    if (s.n_moe && (ref.n_group != parent_.n_group || ref.topk_group != parent_.topk_group ||
                    s.experts_per_token != base_.experts_per_token || s.moe_latent != base_.moe_latent)) {
      out.note = "not a pruned form of the parent (MoE routing groups, experts per token or latent size differ)";
      return out;
    }
    int64_t dm = base_.n_mamba - s.n_mamba, da = base_.n_attention - s.n_attention, df = base_.n_mlp - s.n_mlp,
            de = base_.n_moe - s.n_moe;
    if (dm < 0 || da < 0 || df < 0 || de < 0) {
      out.note = "has more layers of some type than the parent";
      return out;
    }
    std::vector<int64_t> published;
    bool subsequence = align(ref, published);
    // The candidate the space would produce for these counts (the same id as the enumerated one).
    const Depth* match = nullptr;
    for (auto& d : depths_)
      if (d.drop_mamba == dm && d.drop_attention == da && d.drop_mlp == df && d.drop_moe == de) match = &d;
    std::vector<int64_t> dropped;
    double mass = 1.0;
    if (match) {
      dropped = match->dropped, mass = match->mass;
    } else {
      dropped = subsequence ? published : choose_dropped_layers(parent_, dm, da, df, de, o_.scores.layer);
      mass = depth_mass(dropped);
    }
    std::vector<std::string> outside;
    if (!match) outside.push_back("depth (drop " + std::to_string(dm) + " Mamba, " + std::to_string(da) +
                                  " attention, " + std::to_string(df) + " MLP" +
                                  (base_.n_moe ? ", " + std::to_string(de) + " MoE" : std::string()) + ")");
    if (!sp.hidden.contains(s.hidden)) outside.push_back("hidden " + std::to_string(s.hidden));
    if (s.n_mlp && !sp.ffn.contains(s.ffn)) outside.push_back("ffn " + std::to_string(s.ffn));
    if (s.n_mamba && !sp.mamba_heads.contains(s.mamba_heads)) outside.push_back("mamba heads " + std::to_string(s.mamba_heads));
    if (s.n_mamba && !sp.mamba_head_dim.contains(s.mamba_head_dim))
      outside.push_back("mamba head_dim " + std::to_string(s.mamba_head_dim));
    if (s.n_attention && !sp.attention_heads.contains(s.attention_heads))
      outside.push_back("attention heads " + std::to_string(s.attention_heads));
    if (s.n_moe && !sp.experts.contains(s.experts)) outside.push_back("experts " + std::to_string(s.experts));
    if (s.n_moe && !sp.expert_ffn.contains(s.expert_ffn))
      outside.push_back("expert_ffn " + std::to_string(s.expert_ffn));
    if (s.n_moe && !sp.shared_ffn.contains(s.shared_ffn))
      outside.push_back("shared_ffn " + std::to_string(s.shared_ffn));
    // Axes whose layers are all gone take the space's first value in enumerated candidates.
    Shape probe = s;
    if (!s.n_mlp) probe.ffn = base_.n_mlp ? sp.ffn.min : parent_.intermediate_size;
    out.reachable = outside.empty();
    out.candidate = evaluate(out.reachable ? probe : s, dropped, mass);
    if (out.reachable) {
      note << "reachable: the space holds this shape";
      if (subsequence) note << (dropped == published ? " with exactly the published dropped layers"
                                                     : "; the published layer pattern drops other layers of the same types");
    } else {
      std::string joined;
      for (auto& x : outside) joined += (joined.empty() ? "" : ", ") + x;
      note << "not reachable: outside the space in " << joined;
    }
    if (!subsequence) note << " (its pattern is not a subsequence of the parent's)";
    out.note = note.str();
    return out;
  }

  void rank_stage2_and_3(std::vector<Candidate>& ranked) const {
    if (o_.zero_shot_loss && o_.stage2_top > 0) {
      size_t m = std::min<size_t>(ranked.size(), static_cast<size_t>(o_.stage2_top));
      Progress progress("zero-shot loss", static_cast<int64_t>(m), "candidates");
      for (size_t i = 0; i < m; ++i) {
        ranked[i].zero_shot_loss = o_.zero_shot_loss(candidate_config(parent_, ranked[i]), ranked[i].dropped_layers);
        ranked[i].stage = 2;
        progress.advance(1, {{"id", ranked[i].id}, {"loss", *ranked[i].zero_shot_loss}});
      }
      std::stable_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(m),
                       [](const Candidate& a, const Candidate& b) { return *a.zero_shot_loss < *b.zero_shot_loss; });
      if (o_.distill_loss && o_.distill_top > 0) {
        size_t k = std::min<size_t>(m, static_cast<size_t>(o_.distill_top));
        Progress dp("distill", static_cast<int64_t>(k), "candidates");
        for (size_t i = 0; i < k; ++i) {
          ranked[i].distilled_loss = o_.distill_loss(candidate_config(parent_, ranked[i]), ranked[i].dropped_layers);
          ranked[i].stage = 3;
          dp.advance(1, {{"id", ranked[i].id}, {"loss", *ranked[i].distilled_loss}});
        }
        std::stable_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(k),
                         [](const Candidate& a, const Candidate& b) { return *a.distilled_loss < *b.distilled_loss; });
      }
      for (size_t i = 0; i < ranked.size(); ++i) ranked[i].rank = static_cast<int64_t>(i) + 1;
    }
  }

  const ModelConfig& parent_;
  const HardwareProfile& hw_;
  const SearchOptions& o_;
  Shape base_;
  double budget_ = 0;
  bool use_importance_ = false;
  AxisMass hidden_, ffn_, heads_, head_dim_, attn_, experts_, expert_ffn_, shared_ffn_;
  std::vector<Depth> depths_;
  int64_t enumerated_ = 0, feasible_ = 0;
  double best_proxy_ = 0, lowest_proxy_ = 0;
  int64_t tied_at_best_ = 0;  // feasible points whose proxy equals the best
  std::map<int64_t, int64_t> shown_as_;  // feasible points by their proxy as the report prints it (4 decimals)
  std::map<std::string, int64_t> reason_counts_;
  std::vector<Point> top_, nearest_infeasible_;
  std::map<double, std::pair<double, Point>> front_;
  Better better_;
  std::vector<Point> ref_points_;
  std::vector<int64_t> ref_better_;
};

}  // namespace

SearchResult run_search(const ModelConfig& parent, const HardwareProfile& hw, const SearchOptions& options) {
  Searcher s(parent, hw, options);
  return s.run();
}

json SearchResult::to_json(const ModelConfig& parent_config, const SearchOptions& o, const HardwareProfile& hw) const {
  json cands = json::array();
  for (auto& c : candidates) cands.push_back(candidate_to_json(parent_config, c));
  json refs = json::array();
  for (auto& r : references) {
    json e{{"name", r.name}, {"reachable", r.reachable}, {"note", r.note}};
    if (r.candidate) e["candidate"] = candidate_to_json(parent_config, *r.candidate);
    refs.push_back(e);
  }
  json reasons = json::object();
  for (auto& [k, n] : infeasible_by_reason) reasons[k] = n;
  json parent_json = candidate_to_json(parent_config, parent);
  return {{"format", "minipuzzle-search-report/1"},
          {"hardware", hw.to_json()},
          {"budget", o.budget.to_json()},
          {"setup", o.setup.to_json()},
          {"workload", {{"input_tokens", o.workload.input_tokens}, {"output_tokens", o.workload.output_tokens}}},
          {"space", o.space.to_json()},
          {"proxy", proxy_kind},
          {"stages",
           {{"stage2_top", o.zero_shot_loss ? o.stage2_top : 0}, {"distill_top", o.distill_loss ? o.distill_top : 0}}},
          {"enumerated", enumerated},
          {"feasible", feasible},
          {"ranking", {{"tied_at_best", tied_at_best},
                       {"shown_as_best", shown_as_best},
                       {"proxy_best", proxy_best},
                       {"proxy_lowest", proxy_lowest},
                       {"informative", ranking_note.empty()},
                       {"note", ranking_note}}},
          {"infeasible_by_reason", reasons},
          {"seconds", seconds},
          {"parent", parent_json},
          {"references", refs},
          {"candidates", cands}};
}

}  // namespace mp::search
