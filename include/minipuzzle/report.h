// Reports every stage can write: small SVG plots (bars, stacked bars, scatter with a Pareto front, lines,
// heat maps), Markdown/HTML tables, and one self-contained HTML page (inline CSS and SVG, no scripts, no
// external files) so a report opens anywhere and can be attached to an issue as one file.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace mp::report {

// Text safe inside HTML/SVG element content and attribute values.
std::string escape_html(const std::string& text);
// Writes text atomically (temporary file in the same directory, then rename).
void write_text_file(const std::string& path, const std::string& text);
// Colour i of a fixed palette that stays readable for colour-blind readers (Okabe-Ito), cycling.
std::string palette_color(size_t i);
// Numbers for axes and tables: 3 significant digits, k/M/G/T suffixes for large magnitudes when `si`.
std::string format_number(double value, bool si = false);

struct PlotOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  int width = 640;
  int height = 360;
  bool log_x = false;
  bool log_y = false;
};

// One named series: y values (and x values where the plot has a numeric x axis).
struct Series {
  std::string name;
  std::vector<double> x;
  std::vector<double> y;
  std::string color;  // empty: palette colour by position
};

// Bars per category. With `stacked`, the series are drawn on top of each other (e.g. memory terms per
// candidate) and a dashed horizontal `limit` line (e.g. the memory budget) is drawn when limit > 0; otherwise
// the series are grouped side by side. Each series' y has one value per category.
std::string bar_chart(const std::vector<std::string>& categories, const std::vector<Series>& series,
                      const PlotOptions& options, bool stacked, double limit = 0.0,
                      const std::string& limit_label = "");

struct ScatterPoint {
  double x = 0, y = 0;
  std::string label;      // drawn beside the point when `labelled`
  bool highlight = false; // drawn larger, in the highlight colour (e.g. the Pareto front)
  bool labelled = false;
  bool dimmed = false;    // drawn pale (e.g. infeasible candidates)
};

// Scatter plot; the highlighted points are also joined by a line in x order (the Pareto front).
std::string scatter_plot(const std::vector<ScatterPoint>& points, const PlotOptions& options,
                         const std::string& highlight_name = "Pareto front");

// Several series as lines over a shared numeric x axis (e.g. loss curves), with a legend.
std::string line_plot(const std::vector<Series>& series, const PlotOptions& options);

// Matrix as coloured cells (row-major, rows x cols) with a colour scale bar; NaN cells are left blank.
std::string heat_map(const std::vector<std::vector<double>>& matrix, const std::vector<std::string>& row_labels,
                     const std::vector<std::string>& col_labels, const PlotOptions& options);

// Indices of the points not dominated by another (maximising x when maximize_x, else minimising; same for y),
// sorted by x. Ties: a point equal to another in both coordinates is kept once (the first).
std::vector<size_t> pareto_front(const std::vector<double>& x, const std::vector<double>& y, bool maximize_x,
                                 bool maximize_y);

// A table rendered as Markdown (GitHub pipes) or HTML. Cells are plain text (escaped for HTML).
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<bool> right_align;  // per column; numbers read better right-aligned
  std::vector<std::string> row_class;  // optional per-row CSS class in HTML ("bad", "good", "muted")
  std::string markdown() const;
  std::string html() const;
};

// One self-contained page, assembled in order.
class HtmlPage {
 public:
  explicit HtmlPage(std::string title);
  void heading(const std::string& text, int level = 2);
  void paragraph(const std::string& text);  // escaped
  void raw_html(const std::string& html);   // trusted markup from these builders
  void figure(const std::string& svg, const std::string& caption);
  void table(const Table& table, const std::string& caption = "");
  void key_values(const std::vector<std::pair<std::string, std::string>>& items);
  std::string str() const;
  void write(const std::string& path) const { write_text_file(path, str()); }

 private:
  std::string title_;
  std::string body_;
};

}  // namespace mp::report
