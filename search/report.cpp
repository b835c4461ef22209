// The search report: report.json (everything, machine-readable; candidates as full configs + dropped layers),
// report.md (tables) and report.html (the same with SVG plots: memory per candidate against the budget, and
// parameters or importance proxy against predicted throughput with the Pareto front).
#include <algorithm>
#include <cstdio>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/report.h"
#include "minipuzzle/search.h"


namespace mp::search {

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string layer_counts(const Candidate& c) {
  return std::to_string(c.shape.layers()) + " (" + std::to_string(c.shape.n_mamba) + "/" +
         std::to_string(c.shape.n_attention) + "/" + std::to_string(c.shape.n_mlp) +
         (c.shape.n_moe ? "/" + std::to_string(c.shape.n_moe) : std::string()) + ")";
}

// Total parameters, and for MoE shapes the active ones beside them ("22.277 / A3.000").
std::string params_text(const Candidate& c) {
  std::string t = fixed(double(c.params.total()) / 1e9, 3);
  if (c.shape.n_moe) t += " / A" + fixed(double(c.params.active()) / 1e9, 3);
  return t;
}

std::string reasons_text(const Candidate& c) {
  std::string out;
  for (auto& r : c.reasons) out += (out.empty() ? "" : "; ") + r;
  return out;
}

report::Table candidate_table(const std::vector<const Candidate*>& list, bool with_losses, bool moe) {
  report::Table t;
  t.header = {"rank", "id", moe ? "layers (M/*/-/E)" : "layers (M/*/-)", "hidden", "FFN", "Mamba heads x dim",
              "attn heads", moe ? "params (B): total / active" : "params (B)", "memory (GiB)", "out tok/s", "proxy"};
  if (moe) t.header.insert(t.header.begin() + 7, {"experts x FFN", "shared FFN"});
  if (with_losses) t.header.insert(t.header.end(), {"zero-shot loss", "distilled loss"});
  t.header.push_back("verdict");
  t.right_align.assign(t.header.size(), true);
  t.right_align[1] = false;
  t.right_align.back() = false;
  for (auto* c : list) {
    std::vector<std::string> row = {c->rank > 0 ? std::to_string(c->rank) : "-",
                                    c->id,
                                    layer_counts(*c),
                                    std::to_string(c->shape.hidden),
                                    c->shape.n_mlp ? std::to_string(c->shape.ffn) : "-",
                                    std::to_string(c->shape.mamba_heads) + " x " + std::to_string(c->shape.mamba_head_dim),
                                    std::to_string(c->shape.attention_heads),
                                    params_text(*c),
                                    fixed(c->memory.total() / kGiB, 2),
                                    fixed(c->throughput.output_tokens_per_s, 1),
                                    fixed(c->proxy, 4)};
    if (moe)
      row.insert(row.begin() + 7, {c->shape.n_moe ? std::to_string(c->shape.experts) + " x " +
                                                      std::to_string(c->shape.expert_ffn)
                                                : "-",
                                   c->shape.n_moe ? std::to_string(c->shape.shared_ffn) : "-"});
    if (with_losses) {
      row.push_back(c->zero_shot_loss ? fixed(*c->zero_shot_loss, 4) : "");
      row.push_back(c->distilled_loss ? fixed(*c->distilled_loss, 4) : "");
    }
    row.push_back(c->feasible ? (c->pareto ? "fits, Pareto" : "fits") : "does not fit: " + reasons_text(*c));
    t.rows.push_back(row);
    t.row_class.push_back(c->feasible ? (c->pareto ? "good" : "") : "bad");
  }
  return t;
}

report::Table memory_table(const std::vector<std::pair<std::string, const Candidate*>>& list, double budget) {
  report::Table t;
  t.header = {"model", "weights", "KV cache", "conv state", "SSM state", "activations", "margin", "total", "budget",
              "fits"};
  t.right_align.assign(t.header.size(), true);
  t.right_align[0] = false;
  for (auto& [name, c] : list) {
    const MemoryBreakdown& m = c->memory;
    t.rows.push_back({name, fixed(m.weights / kGiB, 3), fixed(m.kv_cache / kGiB, 3), fixed(m.conv_state / kGiB, 3),
                      fixed(m.ssm_state / kGiB, 3), fixed(m.activations / kGiB, 3), fixed(m.runtime_margin / kGiB, 3),
                      fixed(m.total() / kGiB, 3), fixed(budget / kGiB, 3), c->feasible ? "yes" : "no"});
    t.row_class.push_back(c->feasible ? "good" : "bad");
  }
  return t;
}

}  // namespace

std::vector<std::string> write_search_report(const std::string& dir, const ModelConfig& parent,
                                             const HardwareProfile& hw, const SearchOptions& o,
                                             const SearchResult& r) {
  fs::create_directories(dir);
  const double budget = o.budget.usable_bytes();
  const bool moe = parent.count(LayerType::Moe) > 0;  // MoE columns: experts, widths, active parameters
  const bool losses = std::any_of(r.candidates.begin(), r.candidates.end(),
                                  [](const Candidate& c) { return c.zero_shot_loss || c.distilled_loss; });

  std::vector<const Candidate*> feasible, infeasible;
  for (auto& c : r.candidates) (c.feasible ? feasible : infeasible).push_back(&c);
  std::vector<const Candidate*> ranked;
  for (auto* c : feasible)
    if (c->rank > 0) ranked.push_back(c);
  std::vector<std::pair<std::string, const Candidate*>> memory_rows{{"parent", &r.parent}};
  for (auto& ref : r.references)
    if (ref.candidate) memory_rows.emplace_back(ref.name, &*ref.candidate);
  for (size_t i = 0; i < std::min<size_t>(ranked.size(), 5); ++i)
    memory_rows.emplace_back("#" + std::to_string(ranked[i]->rank), ranked[i]);

  // ---- summary shared by Markdown and HTML
  std::vector<std::pair<std::string, std::string>> summary = {
      {"parent", fixed(double(r.parent.params.total()) / 1e9, 3) + "B parameters" +
                     (moe ? " (" + fixed(double(r.parent.params.active()) / 1e9, 3) + "B active: " +
                                std::to_string(parent.num_experts_per_tok) + " of " +
                                std::to_string(parent.n_routed_experts) + " experts per token)"
                          : std::string()) +
                     ", " + std::to_string(parent.num_layers()) + " layers (" +
                     std::to_string(parent.count(LayerType::Mamba)) + " Mamba / " +
                     std::to_string(parent.count(LayerType::Attention)) + " attention / " +
                     std::to_string(parent.count(LayerType::Mlp)) + " MLP" +
                     (moe ? " / " + std::to_string(parent.count(LayerType::Moe)) + " MoE" : std::string()) + ")"},
      {"hardware", hw.name + " (" + fixed(hw.memory_bytes / kGiB, 2) + " GiB, " +
                       fixed(hw.bandwidth_bytes_per_s / 1e9, 0) + " GB/s, " + fixed(hw.bf16_flops / 1e12, 0) +
                       " bf16 TFLOP/s)"},
      {"budget", fixed(budget / kGiB, 3) + " GiB" +
                     (o.budget.explicit_bytes ? " (given explicitly)" : "")},
      {"serving", "context " + std::to_string(o.setup.context) + " tokens, batch " + std::to_string(o.setup.batch) +
                      ", weights " + dtype_name(o.setup.weights) + ", KV " + dtype_name(o.setup.kv_cache) +
                      ", conv state " + dtype_name(o.setup.conv_state) + ", SSM state " +
                      dtype_name(o.setup.ssm_state) + ", prefill chunk " + std::to_string(o.setup.prefill_chunk)},
      {"workload", o.workload.text()},
      {"space", std::to_string(o.space.combinations()) + " combinations; enumerated " + std::to_string(r.enumerated) +
                    ", feasible " + std::to_string(r.feasible)},
      {"stage-1 proxy", r.proxy_kind == "importance"           ? "importance mass kept (product over axes, scores.json)"
                        : r.proxy_kind == "importance-uniform" ? "units kept (product over axes; importance mass with "
                                                                 "every unit equal: no scores given)"
                                                               : "fill of the binding constraint (memory / budget, "
                                                                 "params / max params)"},
      {"stage-1 ranking", r.ranking_note.empty()
                              ? "informative: the best proxy " + fixed(r.proxy_best, 6) + " is held by " +
                                    std::to_string(r.tied_at_best) + " candidate(s), " +
                                    std::to_string(r.shown_as_best) + " print as " + fixed(r.proxy_best, 4) +
                                    "; feasible proxies span " +
                                    fixed(r.proxy_lowest, 6) + " to " + fixed(r.proxy_best, 6)
                              : "UNINFORMATIVE: " + r.ranking_note},
      {"search time", fixed(r.seconds * 1e3, 1) + " ms"}};
  for (auto& b : o.budget.reservations)
    summary.emplace_back("reserved: " + b.name, fixed((b.fraction * o.budget.device_bytes + b.bytes) / kGiB, 3) + " GiB" +
                                                    (o.budget.explicit_bytes ? " (not applied: explicit budget)" : ""));
  std::string reason_text;
  for (auto& [k, n] : r.infeasible_by_reason) reason_text += (reason_text.empty() ? "" : ", ") + k + ": " + std::to_string(n);
  summary.emplace_back("infeasible by reason", reason_text.empty() ? "none" : reason_text);

  report::Table refs;
  refs.header = {"reference", "reachable", "fits", "stage-1 rank", moe ? "params (B): total / active" : "params (B)",
                 "memory (GiB)", "note"};
  for (auto& ref : r.references) {
    const Candidate* c = ref.candidate ? &*ref.candidate : nullptr;
    refs.rows.push_back({ref.name, ref.reachable ? "yes" : "no", c ? (c->feasible ? "yes" : "no: " + reasons_text(*c)) : "-",
                         c && c->rank > 0 ? std::to_string(c->rank) + " of " + std::to_string(r.feasible) : "-",
                         c ? params_text(*c) : "-", c ? fixed(c->memory.total() / kGiB, 3) : "-",
                         ref.note});
  }

  // ---- JSON
  std::string json_path = fs::join(dir, "report.json");
  write_json_file(json_path, r.to_json(parent, o, hw));

  // ---- Markdown
  std::string md = "# Architecture search: " + hw.name + ", " + std::to_string(o.setup.context) + " tokens\n\n";
  if (!r.ranking_note.empty()) md += "> **The stage-1 order is not an accuracy ranking.** " + r.ranking_note + "\n\n";
  for (auto& [k, v] : summary) md += "- **" + k + "**: " + v + "\n";
  md += "\n## Memory (GiB)\n\n" + memory_table(memory_rows, budget).markdown();
  if (!r.references.empty()) md += "\n## Reference shapes\n\n" + refs.markdown();
  md += "\n## Feasible candidates (best " + std::to_string(feasible.size()) + ")\n\n" +
        candidate_table(feasible, losses, moe).markdown();
  md += "\n## Infeasible candidates nearest the budget\n\n" + candidate_table(infeasible, false, moe).markdown();
  md += "\nCandidate ids are stable: prune one with `minipuzzle prune --target " + fs::join(dir, "report.json") +
        "#<id>`. Formulas: search/MEMORY_MODEL.md.\n";
  std::string md_path = fs::join(dir, "report.md");
  report::write_text_file(md_path, md);

  // ---- HTML
  report::HtmlPage page("Architecture search: " + hw.name + ", " + std::to_string(o.setup.context) + " tokens");
  if (!r.ranking_note.empty()) page.paragraph("The stage-1 order is not an accuracy ranking. " + r.ranking_note);
  page.key_values(summary);
  page.heading("Memory per candidate");
  {
    std::vector<std::string> cats;
    std::vector<report::Series> series(6);
    const char* names[] = {"weights", "KV cache", "conv state", "SSM state", "activations", "margin"};
    for (int k = 0; k < 6; ++k) series[static_cast<size_t>(k)].name = names[k];
    std::vector<std::pair<std::string, const Candidate*>> bars = memory_rows;
    for (size_t i = 5; i < std::min<size_t>(ranked.size(), 20); ++i)
      bars.emplace_back("#" + std::to_string(ranked[i]->rank), ranked[i]);
    for (size_t i = 0; i < std::min<size_t>(infeasible.size(), 3); ++i)
      bars.emplace_back("x" + std::to_string(i + 1) + " (no fit)", infeasible[i]);
    for (auto& [name, c] : bars) {
      cats.push_back(name.size() > 24 ? name.substr(0, 24) : name);
      const MemoryBreakdown& m = c->memory;
      double v[6] = {m.weights, m.kv_cache, m.conv_state, m.ssm_state, m.activations, m.runtime_margin};
      for (int k = 0; k < 6; ++k) series[static_cast<size_t>(k)].y.push_back(v[k] / kGiB);
    }
    report::PlotOptions po;
    po.title = "Inference memory (GiB) against the budget";
    po.y_label = "GiB";
    po.width = 960;
    po.height = 420;
    page.figure(report::bar_chart(cats, series, po, true, budget / kGiB, "budget " + fixed(budget / kGiB, 2) + " GiB"),
                "Stacked memory terms of the parent, the reference shapes, the best candidates (#rank, ids in the "
                "table) and the nearest infeasible ones (x1..); the dashed line is the usable budget.");
  }
  page.table(memory_table(memory_rows, budget), "Memory terms in GiB");
  auto scatter = [&](bool by_proxy) {
    std::vector<report::ScatterPoint> pts;
    for (auto& c : r.candidates) {
      report::ScatterPoint p;
      p.x = by_proxy ? c.proxy : double(c.params.total()) / 1e9;
      p.y = c.throughput.output_tokens_per_s;
      p.label = c.id;
      p.highlight = c.feasible && c.pareto && !by_proxy;
      p.dimmed = !c.feasible;
      p.labelled = c.rank >= 1 && c.rank <= 3;
      if (p.labelled) p.label = "#" + std::to_string(c.rank);
      pts.push_back(p);
    }
    {
      report::ScatterPoint p;
      p.x = by_proxy ? r.parent.proxy : double(r.parent.params.total()) / 1e9;
      p.y = r.parent.throughput.output_tokens_per_s;
      p.label = r.parent.feasible ? "parent" : "parent (does not fit)";
      p.labelled = true;
      p.dimmed = !r.parent.feasible;
      pts.push_back(p);
    }
    for (auto& ref : r.references) {
      if (!ref.candidate) continue;
      report::ScatterPoint p;
      p.x = by_proxy ? ref.candidate->proxy : double(ref.candidate->params.total()) / 1e9;
      p.y = ref.candidate->throughput.output_tokens_per_s;
      p.label = ref.name;
      p.labelled = true;
      pts.push_back(p);
    }
    if (by_proxy) {
      std::vector<double> xs, ys;
      for (auto& p : pts) xs.push_back(p.dimmed ? -1e300 : p.x), ys.push_back(p.dimmed ? -1e300 : p.y);
      for (size_t i : report::pareto_front(xs, ys, true, true))
        if (!pts[i].dimmed) pts[i].highlight = true;
    }
    report::PlotOptions po;
    po.title = by_proxy ? "Stage-1 proxy vs predicted throughput" : "Parameters vs predicted throughput";
    po.x_label = by_proxy ? "proxy (higher is better)" : "parameters (billions)";
    po.y_label = "output tokens/s (" + o.workload.text() + ")";
    po.width = 900;
    po.height = 440;
    return report::scatter_plot(pts, po);
  };
  page.heading("Accuracy proxy and size vs predicted throughput");
  page.figure(scatter(false), "Feasible candidates kept (blue), infeasible nearest the budget (grey), the Pareto front "
                              "of parameters and predicted throughput over all feasible candidates (orange).");
  if (r.proxy_kind != "memory-closeness")
    page.figure(scatter(true), "Importance proxy against predicted throughput; pick on the front.");
  if (!r.references.empty()) {
    page.heading("Reference shapes");
    page.table(refs);
  }
  page.heading("Feasible candidates");
  page.table(candidate_table(feasible, losses, moe), "best by stage-1 rank (then stage 2/3 where run); Pareto points beyond "
                                                "the kept list have rank '-'");
  page.heading("Infeasible candidates nearest the budget");
  page.table(candidate_table(infeasible, false, moe));
  page.paragraph("Prune a candidate with minipuzzle prune --target " + json_path +
                 "#<id>. The memory model's formulas are in search/MEMORY_MODEL.md.");
  std::string html_path = fs::join(dir, "report.html");
  page.write(html_path);
  return {json_path, md_path, html_path};
}

}  // namespace mp::search
