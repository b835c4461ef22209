// Shared by the fuzz targets: the contract every parser of outside input must keep. A malformed input may
// only end in mp::Error (the CLI prints it as one clear line); anything else - a crash, a sanitizer report,
// another exception type escaping, a broken invariant on an accepted input - is a bug, and abort() makes
// libFuzzer (or replay_main) report it with the input that caused it.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "minipuzzle/error.h"

namespace mp::fuzz {

[[noreturn]] inline void invariant_broken(const char* what, const char* file, int line) {
  std::fprintf(stderr, "fuzz invariant broken at %s:%d: %s\n", file, line, what);
  std::abort();
}

// Runs body(); mp::Error is the expected outcome of bad input, every other exception is a finding.
template <typename Body>
int run_parser(Body&& body) {
  try {
    body();
  } catch (const mp::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: a non-mp::Error exception escaped the parser: %s\n", e.what());
    std::abort();
  }
  return 0;
}

inline std::string as_text(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

}  // namespace mp::fuzz

#define FUZZ_REQUIRE(cond) \
  do {                     \
    if (!(cond)) ::mp::fuzz::invariant_broken(#cond, __FILE__, __LINE__); \
  } while (0)
