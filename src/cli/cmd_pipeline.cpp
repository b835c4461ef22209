// minipuzzle pipeline --config configs/recipes/NAME.json [--run-dir DIR] [--set KEY=VALUE ...]
//
// Runs a recipe's stages in order (typically teacher -> score -> search -> prune -> distill -> eval), each as
// its own `minipuzzle <verb>` process so that every stage is exactly what a user would type, with its log in
// RUN/logs/. A stage whose `done_when` file exists is skipped, so a stopped pipeline resumes where it was.
// Then it writes RUN/report.md and RUN/report.html: the comparison table (held-out perplexity, parameters,
// predicted memory at a context length) and the plots of every stage.
//
// Recipe strings may use ${run}, ${source} (the directory holding configs/), any key of "vars" or --set, and
// ${best:REPORT.json} (the id of the best-ranked feasible candidate of a search report). A stage with
// "resume_when": PATH gets --resume when PATH exists (a training stage that was stopped).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/report.h"
#include "minipuzzle/search.h"
#include "src/cli/command.h"


namespace mp::cli {
namespace {

struct PipelineArgs {
  std::string config, run_dir;
  std::vector<std::string> sets;
  bool report_only = false;
};

std::string best_candidate(const std::string& report_path) {
  json r = read_json_file(report_path);
  for (auto& c : r.at("candidates"))
    if (c.value("feasible", false) && c.value("rank", 0) == 1) return c.at("id").get<std::string>();
  for (auto& c : r.at("candidates"))
    if (c.value("feasible", false)) return c.at("id").get<std::string>();
  fail(report_path, ": the search found no feasible candidate; widen the recipe's search space or budget");
}

class Vars {
 public:
  std::map<std::string, std::string> values;
  std::string expand(const std::string& text) const {
    std::string out = text;
    for (int guard = 0; guard < 16; ++guard) {
      size_t start = out.find("${");
      if (start == std::string::npos) return out;
      size_t end = start + 2;  // the matching brace: ${best:${run}/x.json} nests
      for (int depth = 1; end < out.size(); ++end) {
        if (out.compare(end, 2, "${") == 0) ++depth, ++end;
        else if (out[end] == '}' && --depth == 0) break;
      }
      MP_CHECK(end < out.size(), "recipe: unterminated ${ in \"", text, "\"");
      std::string key = out.substr(start + 2, end - start - 2), value;
      if (key.rfind("best:", 0) == 0) {
        value = best_candidate(expand(key.substr(5)));
      } else {
        auto it = values.find(key);
        MP_CHECK(it != values.end(), "recipe: unknown variable ${", key, "} in \"", text, "\" (set it with --set ", key,
                 "=...)");
        value = it->second;
      }
      out = out.substr(0, start) + value + out.substr(end + 1);
    }
    return out;
  }
};

std::string self_path() { return fs::read_symlink("/proc/self/exe"); }

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `minipuzzle ARGS`, stdout to `stdout_path` (or the log), stderr to the log. Returns the exit code.
int run_stage(const std::vector<std::string>& args, const std::string& log, const std::string& stdout_path) {
  std::string cmd = quote(self_path());
  for (auto& a : args) cmd += " " + quote(a);
  cmd += " > " + quote(stdout_path.empty() ? log : stdout_path + ".tmp") + (stdout_path.empty() ? " 2>&1" : " 2> " + quote(log));
  int status = std::system(cmd.c_str());
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code == 0 && !stdout_path.empty()) fs::rename(stdout_path + ".tmp", stdout_path);
  return code;
}

std::string tail_of(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "  " + all[i] + "\n";
  return out;
}

// Every <svg>...</svg> of a stage's HTML page, so the pipeline report shows all plots on one page.
std::vector<std::string> svgs_of(const std::string& html_path) {
  std::vector<std::string> out;
  std::ifstream in(html_path);
  if (!in) return out;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string html = ss.str();
  for (size_t pos = html.find("<svg"); pos != std::string::npos; pos = html.find("<svg", pos)) {
    size_t end = html.find("</svg>", pos);
    if (end == std::string::npos) break;
    out.push_back(html.substr(pos, end + 6 - pos));
    pos = end;
  }
  return out;
}

void write_report(const json& recipe, const Vars& vars, const std::string& run) {
  const json& rep = recipe.at("report");
  const int64_t context = rep.value("context", 4096);
  report::Table table;
  table.header = {"model", "held-out loss", "perplexity", "parameters", "memory @ " + std::to_string(context) + " tokens"};
  table.right_align = {false, true, true, true, true};
  json rows = json::array();
  double teacher_ppl = 0;
  // Task accuracies of the rows whose eval ran --tasks: task name -> per row label (acc, acc_norm).
  std::vector<std::string> task_names, task_rows;
  std::map<std::string, std::map<std::string, std::pair<double, double>>> task_acc;
  for (auto& row : rep.at("rows")) {
    std::string label = row.at("label").get<std::string>();
    std::string ckpt = vars.expand(row.at("checkpoint").get<std::string>());
    std::string eval_path = vars.expand(row.at("eval").get<std::string>());
    if (!fs::exists(eval_path) || !fs::exists(ckpt + "/config.json")) continue;
    json ev = read_json_file(eval_path);
    ModelConfig c = load_config(ckpt);
    search::InferenceSetup setup;
    setup.context = context;
    setup.prefill_chunk = 0;
    double memory = search::estimate_memory(c, setup).total();
    double ppl = ev.at("perplexity").get<double>();
    if (label == "teacher") teacher_ppl = ppl;
    json r{{"label", label}, {"checkpoint", ckpt}, {"loss", ev.at("loss")}, {"perplexity", ppl},
           {"parameters", count_parameters(c)}, {"memory_bytes", memory}, {"context", context}};
    if (teacher_ppl > 0) r["perplexity_gap_to_teacher"] = ppl - teacher_ppl;
    if (ev.contains("tasks")) {
      r["tasks"] = ev["tasks"];
      task_rows.push_back(label);
      for (const json& t : ev["tasks"]) {
        const std::string name = t.at("task").get<std::string>();
        if (std::find(task_names.begin(), task_names.end(), name) == task_names.end()) task_names.push_back(name);
        task_acc[name][label] = {t.at("acc").get<double>(), t.at("acc_norm").get<double>()};
      }
    }
    rows.push_back(r);
    table.rows.push_back({label, report::format_number(ev.at("loss").get<double>()), report::format_number(ppl),
                          report::format_number(double(count_parameters(c)), true),
                          report::format_number(memory, true) + "B"});
  }
  write_json_file(run + "/report.json", json{{"recipe", recipe.value("name", "")}, {"rows", rows}});
  report::HtmlPage page("minipuzzle pipeline: " + recipe.value("name", std::string("recipe")));
  page.paragraph(recipe.value("description", std::string()));
  page.table(table, "Held-out perplexity, parameters and predicted inference memory (bf16 weights and cache)");
  std::string md = "# minipuzzle pipeline: " + recipe.value("name", std::string()) + "\n\n" + table.markdown() + "\n";
  std::string task_md;
  if (!task_names.empty()) {
    // Accuracy beside perplexity: a table (acc / acc_norm per task) and grouped bars of acc per model.
    report::Table tasks;
    tasks.header = {"model"};
    tasks.right_align = {false};
    for (const std::string& t : task_names) {
      tasks.header.push_back(t + " acc");
      tasks.header.push_back(t + " acc_norm");
      tasks.right_align.insert(tasks.right_align.end(), {true, true});
    }
    std::vector<report::Series> series;
    for (const std::string& t : task_names) series.push_back({t + " acc", {}, {}, ""});
    for (const std::string& label : task_rows) {
      std::vector<std::string> cells{label};
      for (size_t i = 0; i < task_names.size(); ++i) {
        auto it = task_acc[task_names[i]].find(label);
        const bool has = it != task_acc[task_names[i]].end();
        char acc[32] = "-", norm[32] = "-";
        if (has) {
          std::snprintf(acc, sizeof acc, "%.3f", it->second.first);
          std::snprintf(norm, sizeof norm, "%.3f", it->second.second);
        }
        cells.insert(cells.end(), {acc, norm});
        series[i].y.push_back(has ? it->second.first : 0.0);
      }
      tasks.rows.push_back(cells);
    }
    report::PlotOptions plot;
    plot.title = "Task accuracy (multiple choice, log-likelihood)";
    plot.y_label = "accuracy";
    page.heading("Task accuracy");
    page.table(tasks, "Multiple-choice accuracy by log-likelihood (acc; acc_norm: per byte of the choice)");
    page.figure(report::bar_chart(task_rows, series, plot, /*stacked=*/false), "Accuracy per model and task");
    task_md = tasks.markdown();
    md += "\n## Task accuracy\n\n" + task_md + "\n";
  }
  const json sections = rep.value("sections", json::array());
  for (auto& section : sections) {
    std::string html = vars.expand(section.at("html").get<std::string>());
    auto svgs = svgs_of(html);
    if (svgs.empty()) continue;
    page.heading(section.at("title").get<std::string>());
    for (auto& svg : svgs) page.figure(svg, "");
    md += "\n## " + section.at("title").get<std::string>() + "\n\nSee `" + html + "`.\n";
  }
  page.write(run + "/report.html");
  report::write_text_file(run + "/report.md", md);
  std::printf("%s\n%s%sreport: %s/report.html (and report.md, report.json)\n", table.markdown().c_str(),
              task_md.c_str(), task_md.empty() ? "" : "\n", run.c_str());
}

void run(const PipelineArgs& a) {
  json recipe = read_json_file(a.config);
  MP_CHECK(recipe.contains("stages") && recipe["stages"].is_array(), a.config, ": a recipe needs a \"stages\" list");
  Vars vars;
  // ${source}: the directory that holds configs/ (recipes name model configs relative to it).
  const std::string cfg = fs::absolute(a.config);
  vars.values["source"] = fs::parent(fs::parent(fs::parent(cfg)));
  const json recipe_vars = recipe.value("vars", json::object());
  for (auto& [k, v] : recipe_vars.items()) vars.values[k] = v.is_string() ? v.get<std::string>() : v.dump();
  for (auto& s : a.sets) {
    auto eq = s.find('=');
    MP_CHECK(eq != std::string::npos, "--set expects KEY=VALUE, not \"", s, "\"");
    vars.values[s.substr(0, eq)] = s.substr(eq + 1);
  }
  std::string run = a.run_dir.empty() ? vars.expand(recipe.value("run_dir", std::string("runs/") + recipe.value("name", "run"))) : a.run_dir;
  run = fs::absolute(run);
  vars.values["run"] = run;
  fs::create_directories(run + "/logs");
  write_json_file(run + "/recipe.json", json{{"recipe", recipe}, {"vars", vars.values}});

  if (!a.report_only) {
    const auto& stages = recipe["stages"];
    Progress progress("pipeline", int64_t(stages.size()), "stages");
    for (auto& stage : stages) {
      std::string name = stage.at("name").get<std::string>();
      std::string done = stage.contains("done_when") ? vars.expand(stage["done_when"].get<std::string>()) : "";
      if (!done.empty() && fs::exists(done)) {
        progress.message("stage " + name + ": done already (" + done + "), skipped");
        progress.advance();
        continue;
      }
      std::vector<std::string> args;
      for (auto& x : stage.at("command")) args.push_back(vars.expand(x.is_string() ? x.get<std::string>() : x.dump()));
      // A training stage stopped half-way continues from its checkpoint instead of starting over.
      if (stage.contains("resume_when") && fs::exists(vars.expand(stage["resume_when"].get<std::string>())))
        args.push_back("--resume");
      std::string out = stage.contains("stdout") ? vars.expand(stage["stdout"].get<std::string>()) : "";
      if (!out.empty()) fs::create_directories(fs::parent(out));
      progress.message("stage " + name + ": minipuzzle " + args.front() + " ...");
      std::string log = run + "/logs/" + name + ".log";
      int code = run_stage(args, log, out);
      if (code == kExitInterrupted || interrupted())
        fail("pipeline interrupted during stage ", name, "; run the same command again to resume");
      MP_CHECK(code == 0, "pipeline stage ", name, " failed (exit ", code, "); its log ", log, " ends with:\n",
               tail_of(log, 6));
      progress.advance();
    }
    progress.finish();
  }
  if (recipe.contains("report")) write_report(recipe, vars, run);
}

void add(CLI::App& app) {
  auto args = std::make_shared<PipelineArgs>();
  CLI::App* c = app.add_subcommand("pipeline", "Run a recipe: teacher, score, search, prune, distill, eval, report (resumable)");
  c->add_option("--config", args->config, "recipe JSON, e.g. configs/recipes/demo.json")->required();
  c->add_option("--run-dir", args->run_dir, "output directory (default: the recipe's run_dir)");
  c->add_option("--set", args->sets, "override a recipe variable: KEY=VALUE (repeatable)");
  c->add_flag("--report-only", args->report_only, "only rebuild the report from finished stages");
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(pipeline, mp::cli::add);
