// Runs a shell command in a test, capturing exit status and output (stderr folded into stdout).
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace mp::test {

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline std::string minipuzzle_binary() { return std::string(MINIPUZZLE_BINARY_DIR) + "/minipuzzle"; }

inline std::string temp_dir(const std::string& tag) {
  std::string d = std::string(MINIPUZZLE_BINARY_DIR) + "/test-tmp/" + tag;
  run_command("rm -rf '" + d + "' && mkdir -p '" + d + "'");
  return d;
}

}  // namespace mp::test
