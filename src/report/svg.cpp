// SVG plot builders. Each returns one <svg> element with fixed pixel size and inline styling, so the page
// that embeds it needs nothing else. Axes use "nice" tick steps (1, 2, 5 x 10^k) or decades on log axes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/report.h"

namespace mp::report {

std::string palette_color(size_t i) {
  static const char* colors[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7",
                                 "#56B4E9", "#F0E442", "#000000", "#999999"};
  return colors[i % (sizeof(colors) / sizeof(colors[0]))];
}

std::string format_number(double value, bool si) {
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
  char buf[64];
  double a = std::fabs(value);
  if (si && a >= 1e3) {
    const char* suffix[] = {"k", "M", "G", "T", "P"};
    int k = -1;
    while (a >= 1e3 && k < 4) {
      a /= 1e3;
      value /= 1e3;
      ++k;
    }
    std::snprintf(buf, sizeof buf, "%.3g%s", value, suffix[k]);
    return buf;
  }
  if (a != 0 && (a < 1e-3 || a >= 1e7)) {
    std::snprintf(buf, sizeof buf, "%.3g", value);
  } else if (a >= 100) {
    std::snprintf(buf, sizeof buf, "%.0f", value);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", value);
  }
  return buf;
}

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// Maps data values to pixels along one axis and proposes tick positions.
struct Axis {
  double lo = 0, hi = 1;
  double pixel_lo = 0, pixel_hi = 1;  // pixel of lo and of hi (y axes run upward: pixel_lo > pixel_hi)
  bool log = false;

  void fit(double min_v, double max_v, bool include_zero) {
    if (!std::isfinite(min_v) || !std::isfinite(max_v)) min_v = 0, max_v = 1;
    if (log) {
      min_v = std::max(min_v, 1e-300);
      max_v = std::max(max_v, min_v);
      lo = std::pow(10.0, std::floor(std::log10(min_v)));
      hi = std::pow(10.0, std::ceil(std::log10(max_v)));
      if (hi <= lo) hi = lo * 10;
      return;
    }
    if (include_zero) min_v = std::min(min_v, 0.0), max_v = std::max(max_v, 0.0);
    if (max_v == min_v) {
      double pad = min_v == 0 ? 1.0 : std::fabs(min_v) * 0.1;
      min_v -= pad, max_v += pad;
    }
    double step = nice_step((max_v - min_v) / 5);
    lo = std::floor(min_v / step) * step;
    hi = std::ceil(max_v / step) * step;
  }
  static double nice_step(double raw) {
    double p = std::pow(10.0, std::floor(std::log10(raw)));
    double m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  double to_pixel(double v) const {
    double t;
    if (log) {
      v = std::max(v, lo);
      t = (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    } else {
      t = (v - lo) / (hi - lo);
    }
    return pixel_lo + t * (pixel_hi - pixel_lo);
  }
  std::vector<double> ticks() const {
    std::vector<double> out;
    if (log) {
      for (double v = lo; v <= hi * 1.0001; v *= 10) out.push_back(v);
      return out;
    }
    double step = nice_step((hi - lo) / 5);
    for (double v = lo; v <= hi + step * 1e-6; v += step) out.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
    return out;
  }
};

struct Frame {
  int width, height;
  double left = 70, right = 20, top = 36, bottom = 50;
  double plot_left() const { return left; }
  double plot_right() const { return width - right; }
  double plot_top() const { return top; }
  double plot_bottom() const { return height - bottom; }
};

std::string svg_open(const PlotOptions& o) {
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << o.width << "\" height=\"" << o.height
    << "\" viewBox=\"0 0 " << o.width << ' ' << o.height
    << "\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\">";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>";
  if (!o.title.empty())
    s << "<text x=\"" << o.width / 2 << "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">"
      << escape_html(o.title) << "</text>";
  return s.str();
}

// Axis lines, ticks, grid and labels for a numeric x and y axis.
std::string draw_axes(const Frame& f, const Axis& x, const Axis& y, const PlotOptions& o, bool draw_x_ticks) {
  std::ostringstream s;
  for (double t : y.ticks()) {
    double py = y.to_pixel(t);
    s << "<line x1=\"" << num(f.plot_left()) << "\" x2=\"" << num(f.plot_right()) << "\" y1=\"" << num(py)
      << "\" y2=\"" << num(py) << "\" stroke=\"#e5e5e5\"/>";
    s << "<text x=\"" << num(f.plot_left() - 6) << "\" y=\"" << num(py + 4) << "\" text-anchor=\"end\">"
      << format_number(t, true) << "</text>";
  }
  if (draw_x_ticks) {
    for (double t : x.ticks()) {
      double px = x.to_pixel(t);
      s << "<line x1=\"" << num(px) << "\" x2=\"" << num(px) << "\" y1=\"" << num(f.plot_top()) << "\" y2=\""
        << num(f.plot_bottom()) << "\" stroke=\"#f0f0f0\"/>";
      s << "<text x=\"" << num(px) << "\" y=\"" << num(f.plot_bottom() + 16) << "\" text-anchor=\"middle\">"
        << format_number(t, true) << "</text>";
    }
  }
  s << "<line x1=\"" << num(f.plot_left()) << "\" x2=\"" << num(f.plot_right()) << "\" y1=\"" << num(f.plot_bottom())
    << "\" y2=\"" << num(f.plot_bottom()) << "\" stroke=\"#333\"/>";
  s << "<line x1=\"" << num(f.plot_left()) << "\" x2=\"" << num(f.plot_left()) << "\" y1=\"" << num(f.plot_top())
    << "\" y2=\"" << num(f.plot_bottom()) << "\" stroke=\"#333\"/>";
  if (!o.x_label.empty())
    s << "<text x=\"" << num((f.plot_left() + f.plot_right()) / 2) << "\" y=\"" << num(f.height - 8.0)
      << "\" text-anchor=\"middle\">" << escape_html(o.x_label) << "</text>";
  if (!o.y_label.empty()) {
    double cy = (f.plot_top() + f.plot_bottom()) / 2;
    s << "<text x=\"14\" y=\"" << num(cy) << "\" text-anchor=\"middle\" transform=\"rotate(-90 14 " << num(cy)
      << ")\">" << escape_html(o.y_label) << "</text>";
  }
  return s.str();
}

// Legend in the top-right corner of the plot area.
std::string draw_legend(const Frame& f, const std::vector<std::pair<std::string, std::string>>& entries) {
  std::ostringstream s;
  size_t longest = 0;
  for (auto& e : entries) longest = std::max(longest, e.first.size());
  double w = 24 + 6.2 * static_cast<double>(longest), h = 16.0 * static_cast<double>(entries.size()) + 6;
  // Beside the plot area (frames that carry a legend reserve the right margin for it).
  double x0 = f.plot_right() + 8, y0 = f.plot_top();
  s << "<rect x=\"" << num(x0) << "\" y=\"" << num(y0) << "\" width=\"" << num(w) << "\" height=\"" << num(h)
    << "\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>";
  for (size_t i = 0; i < entries.size(); ++i) {
    double y = y0 + 6 + 16.0 * static_cast<double>(i);
    s << "<rect x=\"" << num(x0 + 5) << "\" y=\"" << num(y) << "\" width=\"10\" height=\"10\" fill=\""
      << entries[i].second << "\"/>";
    s << "<text x=\"" << num(x0 + 20) << "\" y=\"" << num(y + 9) << "\">" << escape_html(entries[i].first)
      << "</text>";
  }
  return s.str();
}

std::string series_color(const Series& s, size_t i) { return s.color.empty() ? palette_color(i) : s.color; }

// Right margin wide enough for a legend of these names.
double legend_margin(const std::vector<std::string>& names) {
  size_t longest = 0;
  for (auto& n : names) longest = std::max(longest, n.size());
  return 40 + 6.2 * static_cast<double>(longest);
}

}  // namespace

std::string bar_chart(const std::vector<std::string>& categories, const std::vector<Series>& series,
                      const PlotOptions& o, bool stacked, double limit, const std::string& limit_label) {
  for (auto& s : series)
    MP_CHECK(s.y.size() == categories.size(), "bar_chart: series \"", s.name, "\" has ", s.y.size(),
             " values for ", categories.size(), " categories");
  Frame f{o.width, o.height};
  bool rotate = categories.size() > 8;
  if (rotate) {
    size_t longest = 0;
    for (auto& c : categories) longest = std::max(longest, c.size());
    f.bottom = std::min(40.0 + 4.5 * static_cast<double>(longest), o.height * 0.45);
  }
  if (series.size() > 1) {
    std::vector<std::string> names;
    for (auto& sr : series) names.push_back(sr.name);
    f.right = legend_margin(names);
  }
  double max_v = limit;
  for (size_t c = 0; c < categories.size(); ++c) {
    double total = 0;
    for (auto& s : series) {
      double v = std::isfinite(s.y[c]) ? s.y[c] : 0.0;
      total = stacked ? total + std::max(v, 0.0) : std::max(total, v);
    }
    max_v = std::max(max_v, total);
  }
  Axis x, y;
  y.log = o.log_y;
  y.pixel_lo = f.plot_bottom(), y.pixel_hi = f.plot_top();
  y.fit(o.log_y ? max_v / 100 : 0.0, max_v, true);
  std::ostringstream s;
  s << svg_open(o) << draw_axes(f, x, y, o, false);
  double n = std::max<double>(1, static_cast<double>(categories.size()));
  double slot = (f.plot_right() - f.plot_left()) / n;
  double bar_w = slot * 0.7;
  for (size_t c = 0; c < categories.size(); ++c) {
    double x0 = f.plot_left() + slot * static_cast<double>(c) + (slot - bar_w) / 2;
    double base = 0;
    for (size_t k = 0; k < series.size(); ++k) {
      double v = std::isfinite(series[k].y[c]) ? std::max(series[k].y[c], 0.0) : 0.0;
      double bx = x0, bw = bar_w, lo = 0, hi = v;
      if (stacked) {
        lo = base, hi = base + v, base = hi;
      } else {
        bw = bar_w / static_cast<double>(series.size());
        bx = x0 + bw * static_cast<double>(k);
      }
      double p_lo = y.to_pixel(o.log_y ? std::max(lo, y.lo) : lo), p_hi = y.to_pixel(hi);
      s << "<rect x=\"" << num(bx) << "\" y=\"" << num(p_hi) << "\" width=\"" << num(bw) << "\" height=\""
        << num(std::max(0.0, p_lo - p_hi)) << "\" fill=\"" << series_color(series[k], k) << "\"><title>"
        << escape_html(categories[c] + " / " + series[k].name + ": " + format_number(v)) << "</title></rect>";
    }
    double cx = x0 + bar_w / 2, cy = f.plot_bottom() + 14;
    if (rotate) {
      s << "<text x=\"" << num(cx) << "\" y=\"" << num(cy) << "\" text-anchor=\"end\" transform=\"rotate(-45 "
        << num(cx) << ' ' << num(cy) << ")\">" << escape_html(categories[c]) << "</text>";
    } else {
      s << "<text x=\"" << num(cx) << "\" y=\"" << num(cy) << "\" text-anchor=\"middle\">"
        << escape_html(categories[c]) << "</text>";
    }
  }
  if (limit > 0) {
    double py = y.to_pixel(limit);
    s << "<line x1=\"" << num(f.plot_left()) << "\" x2=\"" << num(f.plot_right()) << "\" y1=\"" << num(py)
      << "\" y2=\"" << num(py) << "\" stroke=\"#D55E00\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>";
    s << "<text x=\"" << num(f.plot_right() - 4) << "\" y=\"" << num(py - 4) << "\" text-anchor=\"end\" fill=\"#D55E00\">"
      << escape_html(limit_label.empty() ? "limit " + format_number(limit) : limit_label) << "</text>";
  }
  std::vector<std::pair<std::string, std::string>> legend;
  for (size_t k = 0; k < series.size(); ++k) legend.emplace_back(series[k].name, series_color(series[k], k));
  if (series.size() > 1) s << draw_legend(f, legend);
  s << "</svg>";
  return s.str();
}

std::string scatter_plot(const std::vector<ScatterPoint>& points, const PlotOptions& o,
                         const std::string& highlight_name) {
  Frame f{o.width, o.height};
  bool any_highlight = false;
  for (auto& p : points) any_highlight |= p.highlight;
  if (any_highlight) f.right = legend_margin({"candidate", highlight_name});
  double min_x = std::numeric_limits<double>::infinity(), max_x = -min_x, min_y = min_x, max_y = -min_x;
  for (auto& p : points) {
    if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
    min_x = std::min(min_x, p.x), max_x = std::max(max_x, p.x);
    min_y = std::min(min_y, p.y), max_y = std::max(max_y, p.y);
  }
  if (!std::isfinite(min_x)) min_x = 0, max_x = 1, min_y = 0, max_y = 1;
  Axis x, y;
  x.log = o.log_x, y.log = o.log_y;
  x.pixel_lo = f.plot_left(), x.pixel_hi = f.plot_right();
  y.pixel_lo = f.plot_bottom(), y.pixel_hi = f.plot_top();
  x.fit(min_x, max_x, false);
  y.fit(min_y, max_y, false);
  std::ostringstream s;
  s << svg_open(o) << draw_axes(f, x, y, o, true);
  const std::string plain = palette_color(0), front = palette_color(3);
  // Dimmed first, then plain, then highlighted so the front is drawn on top.
  for (int pass = 0; pass < 3; ++pass) {
    for (auto& p : points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      int want = p.highlight ? 2 : p.dimmed ? 0 : 1;
      if (want != pass) continue;
      s << "<circle cx=\"" << num(x.to_pixel(p.x)) << "\" cy=\"" << num(y.to_pixel(p.y)) << "\" r=\""
        << (p.highlight ? 4.5 : 3) << "\" fill=\"" << (p.highlight ? front : p.dimmed ? "#bbbbbb" : plain)
        << "\" fill-opacity=\"" << (p.dimmed ? 0.5 : 0.8) << "\"><title>" << escape_html(p.label) << " ("
        << format_number(p.x) << ", " << format_number(p.y) << ")</title></circle>";
    }
  }
  std::vector<const ScatterPoint*> hl;
  for (auto& p : points)
    if (p.highlight && std::isfinite(p.x) && std::isfinite(p.y)) hl.push_back(&p);
  std::sort(hl.begin(), hl.end(), [](auto* a, auto* b) { return a->x < b->x; });
  if (hl.size() > 1) {
    s << "<polyline fill=\"none\" stroke=\"" << front << "\" stroke-width=\"1.5\" points=\"";
    for (auto* p : hl) s << num(x.to_pixel(p->x)) << ',' << num(y.to_pixel(p->y)) << ' ';
    s << "\"/>";
  }
  for (auto& p : points) {
    if (!p.labelled || !std::isfinite(p.x) || !std::isfinite(p.y)) continue;
    s << "<text x=\"" << num(x.to_pixel(p.x) + 6) << "\" y=\"" << num(y.to_pixel(p.y) - 6) << "\" font-size=\"10\">"
      << escape_html(p.label) << "</text>";
  }
  if (!hl.empty()) s << draw_legend(f, {{"candidate", plain}, {highlight_name, front}});
  s << "</svg>";
  return s.str();
}

std::string line_plot(const std::vector<Series>& series, const PlotOptions& o) {
  Frame f{o.width, o.height};
  {
    std::vector<std::string> names;
    for (auto& sr : series) names.push_back(sr.name);
    if (!names.empty()) f.right = legend_margin(names);
  }
  double min_x = std::numeric_limits<double>::infinity(), max_x = -min_x, min_y = min_x, max_y = -min_x;
  for (auto& sr : series) {
    MP_CHECK(sr.x.size() == sr.y.size(), "line_plot: series \"", sr.name, "\" has ", sr.x.size(), " x and ",
             sr.y.size(), " y values");
    for (size_t i = 0; i < sr.x.size(); ++i) {
      if (!std::isfinite(sr.x[i]) || !std::isfinite(sr.y[i])) continue;
      min_x = std::min(min_x, sr.x[i]), max_x = std::max(max_x, sr.x[i]);
      min_y = std::min(min_y, sr.y[i]), max_y = std::max(max_y, sr.y[i]);
    }
  }
  if (!std::isfinite(min_x)) min_x = 0, max_x = 1, min_y = 0, max_y = 1;
  Axis x, y;
  x.log = o.log_x, y.log = o.log_y;
  x.pixel_lo = f.plot_left(), x.pixel_hi = f.plot_right();
  y.pixel_lo = f.plot_bottom(), y.pixel_hi = f.plot_top();
  x.fit(min_x, max_x, false);
  y.fit(min_y, max_y, false);
  std::ostringstream s;
  s << svg_open(o) << draw_axes(f, x, y, o, true);
  std::vector<std::pair<std::string, std::string>> legend;
  for (size_t k = 0; k < series.size(); ++k) {
    auto& sr = series[k];
    std::string color = series_color(sr, k);
    legend.emplace_back(sr.name, color);
    s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.6\" points=\"";
    for (size_t i = 0; i < sr.x.size(); ++i) {
      if (!std::isfinite(sr.x[i]) || !std::isfinite(sr.y[i])) continue;
      s << num(x.to_pixel(sr.x[i])) << ',' << num(y.to_pixel(sr.y[i])) << ' ';
    }
    s << "\"/>";
  }
  if (!series.empty()) s << draw_legend(f, legend);
  s << "</svg>";
  return s.str();
}

std::string heat_map(const std::vector<std::vector<double>>& matrix, const std::vector<std::string>& row_labels,
                     const std::vector<std::string>& col_labels, const PlotOptions& o) {
  size_t rows = matrix.size(), cols = rows ? matrix[0].size() : 0;
  for (auto& r : matrix) MP_CHECK(r.size() == cols, "heat_map: rows have different lengths (", r.size(), " vs ", cols, ")");
  MP_CHECK(row_labels.empty() || row_labels.size() == rows, "heat_map: ", row_labels.size(), " row labels for ",
           rows, " rows");
  MP_CHECK(col_labels.empty() || col_labels.size() == cols, "heat_map: ", col_labels.size(), " column labels for ",
           cols, " columns");
  Frame f{o.width, o.height};
  f.right = 70;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (auto& r : matrix)
    for (double v : r)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi == lo) hi = lo + 1;
  // Sequential blue-to-yellow ramp (viridis end points and middle), linear in value.
  auto color = [&](double v) {
    double t = std::clamp((v - lo) / (hi - lo), 0.0, 1.0);
    const double stops[3][3] = {{68, 1, 84}, {33, 145, 140}, {253, 231, 37}};
    int k = t < 0.5 ? 0 : 1;
    double u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
    char buf[16];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>(stops[k][0] + u * (stops[k + 1][0] - stops[k][0])),
                  static_cast<int>(stops[k][1] + u * (stops[k + 1][1] - stops[k][1])),
                  static_cast<int>(stops[k][2] + u * (stops[k + 1][2] - stops[k][2])));
    return std::string(buf);
  };
  std::ostringstream s;
  s << svg_open(o);
  double cw = (f.plot_right() - f.plot_left()) / std::max<double>(1, static_cast<double>(cols));
  double ch = (f.plot_bottom() - f.plot_top()) / std::max<double>(1, static_cast<double>(rows));
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      double v = matrix[r][c];
      if (!std::isfinite(v)) continue;
      s << "<rect x=\"" << num(f.plot_left() + cw * static_cast<double>(c)) << "\" y=\""
        << num(f.plot_top() + ch * static_cast<double>(r)) << "\" width=\"" << num(cw + 0.3) << "\" height=\""
        << num(ch + 0.3) << "\" fill=\"" << color(v) << "\"><title>"
        << escape_html((row_labels.empty() ? std::to_string(r) : row_labels[r]) + ", " +
                       (col_labels.empty() ? std::to_string(c) : col_labels[c]) + ": " + format_number(v))
        << "</title></rect>";
    }
  }
  // Label at most ~30 rows/columns so text stays legible.
  size_t row_every = std::max<size_t>(1, rows / 30), col_every = std::max<size_t>(1, cols / 30);
  for (size_t r = 0; r < rows && !row_labels.empty(); r += row_every)
    s << "<text x=\"" << num(f.plot_left() - 4) << "\" y=\"" << num(f.plot_top() + ch * (static_cast<double>(r) + 0.5) + 4)
      << "\" text-anchor=\"end\" font-size=\"9\">" << escape_html(row_labels[r]) << "</text>";
  for (size_t c = 0; c < cols && !col_labels.empty(); c += col_every) {
    double cx = f.plot_left() + cw * (static_cast<double>(c) + 0.5), cy = f.plot_bottom() + 12;
    s << "<text x=\"" << num(cx) << "\" y=\"" << num(cy) << "\" text-anchor=\"end\" font-size=\"9\" transform=\"rotate(-45 "
      << num(cx) << ' ' << num(cy) << ")\">" << escape_html(col_labels[c]) << "</text>";
  }
  // Colour scale: 20 steps from lo (bottom) to hi (top).
  double sx = f.plot_right() + 12, sh = (f.plot_bottom() - f.plot_top()) / 20;
  for (int i = 0; i < 20; ++i) {
    double v = lo + (hi - lo) * (i + 0.5) / 20;
    s << "<rect x=\"" << num(sx) << "\" y=\"" << num(f.plot_bottom() - sh * (i + 1)) << "\" width=\"12\" height=\""
      << num(sh + 0.3) << "\" fill=\"" << color(v) << "\"/>";
  }
  s << "<text x=\"" << num(sx + 16) << "\" y=\"" << num(f.plot_top() + 8) << "\">" << format_number(hi, true) << "</text>";
  s << "<text x=\"" << num(sx + 16) << "\" y=\"" << num(f.plot_bottom()) << "\">" << format_number(lo, true) << "</text>";
  if (!o.x_label.empty())
    s << "<text x=\"" << num((f.plot_left() + f.plot_right()) / 2) << "\" y=\"" << num(f.height - 4.0)
      << "\" text-anchor=\"middle\">" << escape_html(o.x_label) << "</text>";
  if (!o.y_label.empty())
    s << "<text x=\"12\" y=\"" << num(f.plot_top() - 8) << "\">" << escape_html(o.y_label) << "</text>";
  s << "</svg>";
  return s.str();
}

std::vector<size_t> pareto_front(const std::vector<double>& x, const std::vector<double>& y, bool maximize_x,
                                 bool maximize_y) {
  MP_CHECK(x.size() == y.size(), "pareto_front: ", x.size(), " x values but ", y.size(), " y values");
  std::vector<size_t> order;
  for (size_t i = 0; i < x.size(); ++i)
    if (std::isfinite(x[i]) && std::isfinite(y[i])) order.push_back(i);
  // Best x first (ties: best y first); a point is on the front when its y beats every y seen so far.
  auto better_x = [&](size_t a, size_t b) { return maximize_x ? x[a] > x[b] : x[a] < x[b]; };
  auto better_y = [&](double a, double b) { return maximize_y ? a > b : a < b; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (x[a] != x[b]) return better_x(a, b);
    return better_y(y[a], y[b]);
  });
  std::vector<size_t> front;
  bool have = false;
  double best_y = 0;
  for (size_t i : order) {
    if (!have || better_y(y[i], best_y)) {
      front.push_back(i);
      best_y = y[i];
      have = true;
    }
  }
  std::sort(front.begin(), front.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  return front;
}

}  // namespace mp::report
