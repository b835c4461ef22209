// The scoring report: Markdown + one HTML page with SVG heat maps of every score family.
#include <algorithm>
#include <cmath>

#include "minipuzzle/importance.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/report.h"

namespace mp {

namespace {
// Scores scaled to [0,1] by their row maximum, so rows of different magnitude share one colour scale.
std::vector<double> normalized(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  std::vector<double> out;
  for (double x : v) out.push_back(m > 0 ? x / m : 0);
  return out;
}

std::string unit_heat_map(const Scores& s, LayerType type, const std::string& title,
                          const std::function<std::vector<double>(const LayerScores&)>& get) {
  std::vector<std::vector<double>> rows;
  std::vector<std::string> labels;
  size_t width = 0;
  for (auto& l : s.layers) {
    if (l.type != type) continue;
    auto v = get(l);
    if (v.empty()) continue;
    rows.push_back(normalized(v));
    labels.push_back("layer " + std::to_string(l.index));
    width = std::max(width, v.size());
  }
  if (rows.empty()) return "";
  for (auto& r : rows) r.resize(width, NAN);
  std::vector<std::string> cols;
  for (size_t i = 0; i < width; ++i) cols.push_back(width <= 64 || i % (width / 16) == 0 ? std::to_string(i) : "");
  report::PlotOptions o;
  o.title = title;
  o.x_label = "unit";
  o.y_label = "layer";
  o.width = 900;
  o.height = std::max(160, int(rows.size()) * 22 + 90);
  return report::heat_map(rows, labels, cols, o);
}
}  // namespace

void write_scores_report(const Scores& s, const std::string& dir) {
  fs::create_directories(dir);
  report::HtmlPage page("minipuzzle importance scores");
  page.key_values({{"model", s.pattern},
                   {"calibration", s.calibration.dump()},
                   {"reduction", reduction_name(s.reduction)}});

  // Depth: one row per criterion (each scaled to its maximum), one column per layer.
  std::vector<std::string> criteria = {"lm_loss_increase", "kl", "mse_hidden", "mse_logits", "block_influence"};
  report::Table table;
  table.header = {"layer", "type"};
  for (auto& c : criteria) table.header.push_back(c);
  std::vector<std::vector<double>> depth(criteria.size());
  std::vector<std::string> layer_labels;
  for (auto& l : s.layers) {
    std::vector<std::string> row = {std::to_string(l.index), layer_type_name(l.type)};
    for (size_t k = 0; k < criteria.size(); ++k) {
      auto it = l.depth.by_criterion.find(criteria[k]);
      double v = it == l.depth.by_criterion.end() ? NAN : it->second;
      depth[k].push_back(v);
      row.push_back(std::isnan(v) ? "" : report::format_number(v));
    }
    layer_labels.push_back(std::string(1, static_cast<char>(l.type)) + std::to_string(l.index));
    table.rows.push_back(row);
  }
  std::vector<std::vector<double>> depth_rows;
  for (auto& r : depth) depth_rows.push_back(normalized(r));
  report::PlotOptions o;
  o.title = "Depth importance per layer (each criterion scaled to its maximum)";
  o.x_label = "layer";
  o.width = 900;
  o.height = 260;
  page.heading("Depth");
  page.figure(report::heat_map(depth_rows, criteria, layer_labels, o), "Larger means the model changes more without the layer.");
  page.table(table, "Depth criteria per layer");
  if (!s.removal_order.empty()) {
    std::string order;
    for (auto i : s.removal_order) order += std::to_string(i) + " ";
    page.paragraph("Iterative removal by " + s.removal_criterion + ", first removed first: " + order);
  }
  page.heading("Width");
  auto add = [&](const std::string& svg, const std::string& caption) {
    if (!svg.empty()) page.figure(svg, caption);
  };
  add(unit_heat_map(s, LayerType::Mlp, "MLP neurons", [](const LayerScores& l) { return l.mlp_neurons; }),
      "relu^2 activations (input of down_proj)");
  add(unit_heat_map(s, LayerType::Attention, "Attention heads", [](const LayerScores& l) { return l.attn_heads; }),
      "per-head output before o_proj");
  add(unit_heat_map(s, LayerType::Mamba, "Mamba heads", [](const LayerScores& l) { return l.mamba.heads; }),
      "x slice of in_proj, L2 per head; heads are ranked within their group");
  add(unit_heat_map(s, LayerType::Mamba, "Mamba head_dim positions", [](const LayerScores& l) { return l.mamba.head_dim; }),
      "x slice of in_proj, L2 over heads");
  add(unit_heat_map(s, LayerType::Moe, "MoE routed experts", [](const LayerScores& l) { return l.moe.experts; }),
      "router-weighted L2 norm of each expert's output over the calibration tokens");
  add(unit_heat_map(s, LayerType::Moe, "MoE routing frequency", [](const LayerScores& l) { return l.moe.frequency; }),
      "fraction of tokens routed to each expert");
  if (!s.hidden.empty()) {
    std::vector<std::vector<double>> h = {normalized(s.hidden)};
    std::vector<std::string> cols(s.hidden.size(), "");
    o.title = "Embedding channels";
    o.height = 140;
    page.figure(report::heat_map(h, {"hidden"}, cols, o), "pre-mixer norm outputs accumulated over all layers");
  }
  page.write(dir + "/scores.html");
  std::string md = "# minipuzzle importance scores\n\nModel `" + s.pattern + "`, calibration " + s.calibration.dump() +
                   ", reduction " + reduction_name(s.reduction) + ".\n\n## Depth\n\n" + table.markdown() + "\n";
  report::write_text_file(dir + "/scores.md", md);
}

}  // namespace mp
