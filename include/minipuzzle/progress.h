// Progress of long work: a bar with rate and ETA on a terminal, JSON lines otherwise (for logs and CI).
// Nothing below the CLI prints to the terminal except through this (and errors, which are exceptions).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

#include "minipuzzle/json.h"

namespace mp {

enum class ProgressMode { Auto, Bar, Jsonl, Off };
// From MINIPUZZLE_PROGRESS=bar|jsonl|off; Auto means: bar when stderr is a TTY, JSONL otherwise.
ProgressMode progress_mode_from_env();

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it", ProgressMode mode = ProgressMode::Auto);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Adds n units; `fields` (e.g. {"loss": 2.1}) are shown beside the bar and included in the JSON line.
  void advance(int64_t n = 1, const json& fields = json::object());
  void finish(const json& fields = json::object());
  // A one-off message in the same channel (a line above the bar, or {"event": "message"} as JSON).
  void message(const std::string& text);
  int64_t done() const { return done_; }

 private:
  void emit(bool final, const json& fields);
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  ProgressMode mode_;
  std::chrono::steady_clock::time_point start_, last_emit_;
  bool finished_ = false;
};

// Free-standing messages for the CLI layers (stderr); silenced with MINIPUZZLE_PROGRESS=off.
void log_info(const std::string& text);
void log_warning(const std::string& text);

}  // namespace mp
