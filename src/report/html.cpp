// Tables (Markdown and HTML) and the one-file HTML page. The page carries its own CSS and inline SVG: no
// scripts, fonts or images from elsewhere, so it renders the same offline, in CI artefacts and in mail.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/report.h"

namespace mp::report {

std::string escape_html(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

void write_text_file(const std::string& path, const std::string& text) { fs::write_file_atomic(path, text); }

// Markdown cells: pipes would end the cell and newlines the row.
static std::string md_cell(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

std::string Table::markdown() const {
  std::ostringstream s;
  s << '|';
  for (auto& h : header) s << ' ' << md_cell(h) << " |";
  s << "\n|";
  for (size_t c = 0; c < header.size(); ++c) s << ((c < right_align.size() && right_align[c]) ? "---:|" : "---|");
  s << '\n';
  for (auto& row : rows) {
    MP_CHECK(row.size() == header.size(), "Table: a row has ", row.size(), " cells but the header has ", header.size());
    s << '|';
    for (auto& cell : row) s << ' ' << md_cell(cell) << " |";
    s << '\n';
  }
  return s.str();
}

std::string Table::html() const {
  std::ostringstream s;
  s << "<table><thead><tr>";
  for (auto& h : header) s << "<th>" << escape_html(h) << "</th>";
  s << "</tr></thead><tbody>";
  for (size_t r = 0; r < rows.size(); ++r) {
    auto& row = rows[r];
    MP_CHECK(row.size() == header.size(), "Table: a row has ", row.size(), " cells but the header has ", header.size());
    s << "<tr";
    if (r < row_class.size() && !row_class[r].empty()) s << " class=\"" << escape_html(row_class[r]) << '"';
    s << '>';
    for (size_t c = 0; c < row.size(); ++c) {
      s << ((c < right_align.size() && right_align[c]) ? "<td class=\"num\">" : "<td>") << escape_html(row[c])
        << "</td>";
    }
    s << "</tr>";
  }
  s << "</tbody></table>";
  return s.str();
}

HtmlPage::HtmlPage(std::string title) : title_(std::move(title)) {}

void HtmlPage::heading(const std::string& text, int level) {
  level = level < 1 ? 1 : level > 4 ? 4 : level;
  body_ += "<h" + std::to_string(level) + ">" + escape_html(text) + "</h" + std::to_string(level) + ">\n";
}
void HtmlPage::paragraph(const std::string& text) { body_ += "<p>" + escape_html(text) + "</p>\n"; }
void HtmlPage::raw_html(const std::string& html) { body_ += html + "\n"; }
void HtmlPage::figure(const std::string& svg, const std::string& caption) {
  body_ += "<figure>" + svg + "<figcaption>" + escape_html(caption) + "</figcaption></figure>\n";
}
void HtmlPage::table(const Table& table, const std::string& caption) {
  body_ += "<div class=\"scroll\">";
  if (!caption.empty()) body_ += "<p class=\"caption\">" + escape_html(caption) + "</p>";
  body_ += table.html() + "</div>\n";
}
void HtmlPage::key_values(const std::vector<std::pair<std::string, std::string>>& items) {
  body_ += "<dl>";
  for (auto& [k, v] : items) body_ += "<dt>" + escape_html(k) + "</dt><dd>" + escape_html(v) + "</dd>";
  body_ += "</dl>\n";
}

std::string HtmlPage::str() const {
  static const char* css =
      "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;"
      "padding:0 1em;color:#222;line-height:1.4}"
      "h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
      "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}"
      "th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}"
      "th{background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
      "tr.bad td{background:#fdecea}tr.good td{background:#eaf7ee}tr.muted td{color:#888}"
      ".scroll{overflow:auto;max-height:40em}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}"
      "dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}"
      ".caption{font-size:.85em;color:#555;margin:.2em 0}";
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>" + escape_html(title_) +
                    "</title><style>" + css + "</style></head><body>\n<h1>" + escape_html(title_) + "</h1>\n";
  out += body_;
  out += "</body></html>\n";
  return out;
}

}  // namespace mp::report
