// The training report: loss curves (train loss per step, validation loss and KL to the teacher per evaluation)
// as one SVG, a key-value summary and the evaluation table, as HTML (self-contained) and Markdown.
#include "distill/report.h"

#include <cmath>

#include "minipuzzle/interrupt.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/report.h"


namespace mp::distill {

void write_training_report(const DistillOptions& o, const TrainerState& st, int64_t total_steps,
                           int64_t tokens_per_step, int exit_code) {
  using namespace mp::report;
  Series train{"train loss", {}, {}, ""}, val{"validation loss", {}, {}, ""}, kl{"validation KL to teacher", {}, {}, ""};
  for (size_t i = 0; i < st.train_loss.size(); ++i) {
    if (!std::isfinite(st.train_loss[i])) continue;
    train.x.push_back(double(i + 1));
    train.y.push_back(st.train_loss[i]);
  }
  Table evals{{"step", "tokens", "val loss", "val ppl", "val KL"}, {}, {true, true, true, true, true}, {}};
  for (auto& e : st.evals) {
    const double step = e["step"].get<double>();
    val.x.push_back(step);
    val.y.push_back(e["val_loss"].get<double>());
    std::string kl_text = "-";
    if (e.contains("val_kl")) {
      kl.x.push_back(step);
      kl.y.push_back(e["val_kl"].get<double>());
      kl_text = format_number(e["val_kl"].get<double>());
    }
    evals.rows.push_back({std::to_string(e["step"].get<int64_t>()), format_number(e["tokens"].get<double>(), true),
                          format_number(e["val_loss"].get<double>()), format_number(e["val_ppl"].get<double>()),
                          kl_text});
  }
  std::vector<Series> series;
  for (auto* s : {&train, &val, &kl})
    if (!s->x.empty()) series.push_back(*s);
  PlotOptions plot;
  plot.title = o.from_scratch ? "Training from scratch" : "Distillation";
  plot.x_label = "step";
  plot.y_label = "loss (nats/token)";
  const std::string svg = series.empty() ? std::string() : line_plot(series, plot);
  const std::string& out = o.out_dir;
  if (!svg.empty()) write_text_file(fs::join(out, "loss.svg"), svg);

  const char* status = exit_code == 0 ? "finished" : exit_code == kExitInterrupted ? "interrupted (resumable)"
                                                                                    : "stopped: non-finite loss";
  std::vector<std::pair<std::string, std::string>> kv = {
      {"status", status},
      {"mode", o.from_scratch ? "from scratch (cross-entropy)" : "distillation"},
      {"student", o.student},
      {"teacher", o.from_scratch ? "-" : o.teacher},
      {"steps", std::to_string(st.step) + " / " + std::to_string(total_steps)},
      {"tokens", format_number(double(st.tokens), true) + " (" + std::to_string(tokens_per_step) + " per step)"},
      {"loss", o.from_scratch ? "cross-entropy"
                              : "alpha " + format_number(o.alpha) + " x KD(T=" + format_number(o.temperature) +
                                    ") + (1 - alpha) x CE"},
      {"schedule", std::string(lr_schedule_name(o.schedule.kind)) + ", lr " + format_number(o.schedule.lr) +
                       " -> " + format_number(o.schedule.min_lr) + ", warm-up " +
                       std::to_string(o.schedule.warmup_steps)},
      {"skipped (non-finite) steps", std::to_string(st.skipped_steps)},
  };
  HtmlPage page("minipuzzle distill: " + o.out_dir);
  page.heading("Training run");
  page.key_values(kv);
  if (!svg.empty()) page.figure(svg, "Train loss per step; validation loss and KL(teacher || student) per evaluation.");
  page.table(evals, "Evaluations");
  page.write(fs::join(out, "report.html"));

  std::string md = "# minipuzzle distill\n\n";
  for (auto& [k, v] : kv) md += "- **" + k + "**: " + v + "\n";
  md += "\n![loss curves](loss.svg)\n\n## Evaluations\n\n" + evals.markdown() + "\n";
  write_text_file(fs::join(out, "report.md"), md);
}

}  // namespace mp::distill
