// Progress output: one implementation for the TTY bar and the JSONL stream, so every stage reports alike.
#include "minipuzzle/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mp {

ProgressMode progress_mode_from_env() {
  const char* v = std::getenv("MINIPUZZLE_PROGRESS");
  if (v == nullptr || *v == '\0') return ProgressMode::Auto;
  if (!std::strcmp(v, "bar")) return ProgressMode::Bar;
  if (!std::strcmp(v, "jsonl")) return ProgressMode::Jsonl;
  if (!std::strcmp(v, "off")) return ProgressMode::Off;
  return ProgressMode::Auto;
}

static ProgressMode resolve(ProgressMode mode) {
  if (mode == ProgressMode::Auto) mode = progress_mode_from_env();
  if (mode == ProgressMode::Auto) mode = isatty(STDERR_FILENO) ? ProgressMode::Bar : ProgressMode::Jsonl;
  return mode;
}

static std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit, ProgressMode mode)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), mode_(resolve(mode)) {
  start_ = last_emit_ = std::chrono::steady_clock::now();
  if (mode_ == ProgressMode::Jsonl) {
    json j{{"event", "start"}, {"task", label_}, {"total", total_}, {"unit", unit_}};
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  }
}

Progress::~Progress() {
  if (!finished_ && mode_ == ProgressMode::Bar && done_ > 0) std::fprintf(stderr, "\n");
}

void Progress::advance(int64_t n, const json& fields) {
  done_ += n;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_emit_).count();
  // Redraw at most 10 times a second on a TTY and once every 2 s as JSON, so progress never costs time.
  double interval = mode_ == ProgressMode::Bar ? 0.1 : 2.0;
  if (since >= interval || done_ >= total_) {
    last_emit_ = now;
    emit(false, fields);
  }
}

void Progress::finish(const json& fields) {
  if (finished_) return;
  finished_ = true;
  emit(true, fields);
}

void Progress::message(const std::string& text) {
  if (mode_ == ProgressMode::Off) return;
  if (mode_ == ProgressMode::Bar) {
    std::fprintf(stderr, "\r\033[K%s\n", text.c_str());
  } else {
    json j{{"event", "message"}, {"task", label_}, {"text", text}};
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  }
}

void Progress::emit(bool final, const json& fields) {
  if (mode_ == ProgressMode::Off) return;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  double eta = (rate > 0 && total_ > 0) ? (total_ - done_) / rate : NAN;
  if (mode_ == ProgressMode::Jsonl) {
    json j{{"event", final ? "done" : "progress"}, {"task", label_}, {"done", done_}, {"total", total_},
           {"unit", unit_}, {"elapsed_s", elapsed}, {"rate", rate}};
    if (!final && std::isfinite(eta)) j["eta_s"] = eta;
    for (auto& [k, v] : fields.items()) j[k] = v;
    std::fprintf(stderr, "%s\n", j.dump().c_str());
    return;
  }
  const int width = 28;
  double frac = total_ > 0 ? std::min(1.0, static_cast<double>(done_) / total_) : 0.0;
  int filled = static_cast<int>(frac * width);
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  std::string extra;
  for (auto& [k, v] : fields.items()) {
    char buf[64];
    if (v.is_number_float())
      std::snprintf(buf, sizeof buf, " %s=%.4g", k.c_str(), v.get<double>());
    else
      std::snprintf(buf, sizeof buf, " %s=%s", k.c_str(), v.dump().c_str());
    extra += buf;
  }
  std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s  %.1f %s/s  %s<%s%s%s", label_.c_str(), bar.c_str(),
               static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(),
               format_duration(elapsed).c_str(), final ? "done" : format_duration(eta).c_str(), extra.c_str(),
               final ? "\n" : "");
  std::fflush(stderr);
}

void log_info(const std::string& text) {
  if (progress_mode_from_env() == ProgressMode::Off) return;
  std::fprintf(stderr, "%s\n", text.c_str());
}

void log_warning(const std::string& text) { std::fprintf(stderr, "warning: %s\n", text.c_str()); }

}  // namespace mp
