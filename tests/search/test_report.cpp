// The report library (SVG builders, tables, the one-file page) and the search report. Independent checks:
// Pareto fronts against a brute-force dominance test, SVG/HTML parsed by Python's XML parser, tables
// against literal expected text, and report.json candidates read back by ModelConfig::from_json.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/config.h"
#include "minipuzzle/error.h"
#include "minipuzzle/report.h"
#include "minipuzzle/search.h"

using namespace mp;
namespace fs = mp::fs;
using mp::test::Path;

static std::string read_file(const Path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Parses an XML/XHTML fragment with Python's xml.etree (an independent parser); returns its exit status.
static int python_parses_xml(const std::string& xml) {
  Path dir = Path(fs::temp_directory()) / "mp_test_report_xml";
  fs::create_directories(dir);
  Path file = dir / "doc.xml";
  std::ofstream(file) << xml;
  std::string cmd = std::string(MINIPUZZLE_PYTHON) + " -c \"import sys,xml.etree.ElementTree as E; E.parse(sys.argv[1])\" " +
                    file.string();
  return std::system(cmd.c_str());
}

TEST_CASE("pareto_front equals a brute-force dominance check", "[report]") {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> d(0, 30);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> x, y;
    for (int i = 0; i < 40; ++i) x.push_back(d(rng)), y.push_back(d(rng));
    for (bool mx : {true, false})
      for (bool my : {true, false}) {
        auto front = report::pareto_front(x, y, mx, my);
        std::set<std::pair<double, double>> expected, got;
        for (size_t i = 0; i < x.size(); ++i) {
          bool dominated = false;
          for (size_t j = 0; j < x.size(); ++j) {
            bool ge_x = mx ? x[j] >= x[i] : x[j] <= x[i], ge_y = my ? y[j] >= y[i] : y[j] <= y[i];
            if (ge_x && ge_y && (x[j] != x[i] || y[j] != y[i])) dominated = true;
          }
          if (!dominated) expected.insert({x[i], y[i]});
        }
        for (size_t i : front) got.insert({x[i], y[i]});
        CHECK(got == expected);
        CHECK(front.size() == expected.size());  // duplicates kept once
      }
  }
}

TEST_CASE("tables render as Markdown and escaped HTML", "[report]") {
  report::Table t;
  t.header = {"name", "value"};
  t.right_align = {false, true};
  t.rows = {{"a|b", "1"}, {"<x>", "2.5"}};
  CHECK(t.markdown() == "| name | value |\n|---|---:|\n| a\\|b | 1 |\n| <x> | 2.5 |\n");
  std::string html = t.html();
  CHECK(html.find("&lt;x&gt;") != std::string::npos);
  CHECK(html.find("<td class=\"num\">2.5</td>") != std::string::npos);
  t.rows.push_back({"only one"});
  CHECK_THROWS_AS(t.markdown(), mp::Error);
}

TEST_CASE("every plot is well-formed SVG and the page is self-contained", "[report]") {
  report::PlotOptions po;
  po.title = "t <&>";
  po.x_label = "x";
  po.y_label = "y";
  std::vector<report::Series> bars = {{"weights", {}, {10, 12, 8}, ""}, {"kv", {}, {3, 2, 1}, ""}};
  std::string stacked = report::bar_chart({"a", "b", "c"}, bars, po, true, 14.0, "budget");
  std::string grouped = report::bar_chart({"a", "b", "c"}, bars, po, false);
  std::vector<report::ScatterPoint> pts = {{1, 2, "p1", true, true, false}, {2, 1, "p2", true, false, false},
                                           {1.5, 0.5, "p3", false, false, true}};
  std::string scatter = report::scatter_plot(pts, po);
  std::vector<report::Series> lines = {{"train", {0, 1, 2, 3}, {3, 2.5, 2.2, 2.1}, ""},
                                       {"val", {0, 1, 2, 3}, {3.1, 2.7, 2.4, 2.3}, ""}};
  po.log_y = true;
  std::string line = report::line_plot(lines, po);
  po.log_y = false;
  std::string heat = report::heat_map({{0, 1, 2}, {3, NAN, 5}}, {"r0", "r1"}, {"c0", "c1", "c2"}, po);
  for (auto* svg : {&stacked, &grouped, &scatter, &line, &heat}) {
    CHECK(svg->rfind("<svg", 0) == 0);
    CHECK(python_parses_xml(*svg) == 0);
  }
  // 3 categories x 2 series = 6 bars in both layouts (plus the background rect and legend swatches).
  auto count = [](const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
  };
  CHECK(count(stacked, "<title>") == 6);
  CHECK(count(grouped, "<title>") == 6);
  CHECK(count(heat, "<title>") == 5);  // the NaN cell is left blank
  CHECK(count(scatter, "<circle") == 3);
  CHECK(stacked.find("stroke-dasharray") != std::string::npos);
  CHECK(stacked.find("t &lt;&amp;&gt;") != std::string::npos);
  CHECK_THROWS_AS(report::bar_chart({"a"}, bars, po, true), mp::Error);

  report::HtmlPage page("Report <1>");
  page.paragraph("a & b");
  page.figure(scatter, "caption");
  report::Table t;
  t.header = {"k"};
  t.rows = {{"v"}};
  page.table(t);
  std::string html = page.str();
  CHECK(html.find("<title>Report &lt;1&gt;</title>") != std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);
  // Well-formed as XML once the doctype line is removed (our pages are written as XHTML-compatible markup).
  CHECK(python_parses_xml(html.substr(html.find('\n') + 1)) == 0);
}

TEST_CASE("the search report: JSON candidates are loadable configs, HTML and Markdown written", "[report][search]") {
  setenv("MINIPUZZLE_PROGRESS", "off", 1);
  using namespace mp::search;
  ModelConfig parent = load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/nemotron-nano-12b-v2.json");
  ModelConfig nine = load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/nemotron-nano-9b-v2.json");
  HardwareProfile hw = load_hardware("a10g");
  SearchOptions o;
  o.budget = make_budget(hw, parse_reservations("vision=1.3GiB"), std::nullopt);
  o.space.drop_mamba = {0, 2, 1};
  o.space.drop_attention = {0, 2, 1};
  o.space.drop_mlp = {0, 3, 1};
  o.space.hidden = {4480, 5120, 640};
  o.space.ffn = {15680, 20480, 1600};
  o.space.mamba_heads = {128, 128, 8};
  o.space.mamba_head_dim = {80, 80, 1};
  o.space.attention_heads = {40, 40, 8};
  o.keep_feasible = 20;
  o.keep_infeasible = 5;
  o.references = {{"Nemotron-Nano-9B-v2", nine}};
  SearchResult r = run_search(parent, hw, o);
  Path dir = Path(fs::temp_directory()) / "mp_test_search_report";
  fs::remove_all(dir);
  auto paths = write_search_report(dir.string(), parent, hw, o, r);
  REQUIRE(paths.size() == 3);
  for (auto& p : paths) CHECK(fs::file_size(p) > 1000);
  json j = read_json_file((dir / "report.json").string());
  CHECK(j["parent"]["feasible"] == false);
  REQUIRE(j["candidates"].size() == r.candidates.size());
  for (auto& c : j["candidates"]) {
    ModelConfig student = ModelConfig::from_json(c["config"], c["id"].get<std::string>());
    // The student's layer list is the parent's minus the dropped indices.
    CHECK(student.num_layers() + static_cast<int64_t>(c["dropped_layers"].size()) == parent.num_layers());
    CHECK(student.pattern() == c["pattern"].get<std::string>());
    CHECK(student.hidden_size == c["config"]["hidden_size"].get<int64_t>());
    CHECK_FALSE(c["config"].contains("_source"));
    // The memory written is the memory of the config written.
    CHECK(c["memory"]["total"]["bytes"].get<double>() ==
          Approx(estimate_memory(student, o.setup).total()).epsilon(1e-12));
  }
  std::string html = read_file(dir / "report.html");
  CHECK(html.find("<svg") != std::string::npos);
  CHECK(html.find("Pareto") != std::string::npos);
  CHECK(html.find("does not fit") != std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(python_parses_xml(html.substr(html.find('\n') + 1)) == 0);
  std::string md = read_file(dir / "report.md");
  CHECK(md.find("| rank | id |") != std::string::npos);
  CHECK(md.find("Nemotron-Nano-9B-v2") != std::string::npos);
}
