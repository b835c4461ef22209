// minipuzzle bench-hw --hardware HW --timings T.json [--holdout LABEL...] [--form split|combined] -o PROFILE.json
// Fits the roofline's efficiency coefficients (decode and prefill separately, non-negative least squares; nine free
// coefficients per phase in the split form, three in the combined one, see search.h) to
// steps timed on the device (bench_model_serving writes T.json on the GPU host), reports the relative error of
// every sample (held-out ones are predicted, not fitted), and writes the calibrated hardware profile.
#include <cmath>
#include <cstdio>
#include <memory>
#include <set>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/search.h"
#include "src/cli/command.h"

namespace mp::cli {
namespace {

struct BenchHwArgs {
  std::string hardware, timings, output, form = "split";
  std::vector<std::string> holdout;
};

void run(const BenchHwArgs& a) {
  using namespace search;
  HardwareProfile hw = load_hardware(a.hardware);
  std::vector<TimingSample> all = load_timings(a.timings), fit, held;
  std::set<std::string> holdout(a.holdout.begin(), a.holdout.end());
  for (auto& t : all) (holdout.count(t.label) ? held : fit).push_back(t);
  MP_CHECK(a.form == "split" || a.form == "combined", "bench-hw: --form must be split or combined, found \"", a.form, "\"");
  CalibrationResult r = calibrate(fit, hw, a.form == "split" ? RooflineForm::Split : RooflineForm::Combined);
  r.apply(hw);
  json out = hw.to_json();
  json report = r.to_json();
  std::vector<double> held_errors = relative_errors(held, hw);
  double worst = 0;
  for (double e : held_errors) worst = std::max(worst, std::fabs(e));
  report["held_out_relative_errors"] = held_errors;
  report["held_out_max_abs_relative_error"] = worst;
  report["timings"] = a.timings;
  out["calibration"] = report;
  write_json_file(a.output, out);
  std::ostringstream msg;
  msg << "bench-hw: fitted " << fit.size() << " steps (max |error| " << r.max_abs_relative_error * 100 << "%)";
  if (!held.empty()) msg << ", predicted " << held.size() << " held-out steps (max |error| " << worst * 100 << "%)";
  msg << "; " << hw.decode_efficiency.calibration_note << "; " << hw.prefill_efficiency.calibration_note;
  log_info(msg.str());
  log_info("wrote " + a.output);
}

void add(CLI::App& app) {
  auto a = std::make_shared<BenchHwArgs>();
  CLI::App* c = app.add_subcommand(
      "bench-hw", "Calibrate a hardware profile's roofline coefficients by least squares from timed steps.");
  c->add_option("--hardware", a->hardware, "profile to calibrate (name or path)")->required();
  c->add_option("--timings", a->timings, "timings JSON ({\"samples\": [...]}, e.g. from bench_model_serving)")->required();
  c->add_option("--holdout", a->holdout, "sample labels left out of the fit and predicted instead");
  c->add_option("--form", a->form, "split (nine coefficients per phase) | combined (three, the older form)")->capture_default_str();
  c->add_option("-o,--output", a->output, "calibrated profile JSON to write")->required();
  c->callback([a] { run(*a); });
}

// The verb has a dash, so it registers by hand (MP_REGISTER_COMMAND needs an identifier).
static const bool mp_registered_bench_hw = ::mp::cli::register_command("bench-hw", add);

}  // namespace
}  // namespace mp::cli
