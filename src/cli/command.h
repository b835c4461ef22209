// Subcommand registry: each cmd_<verb>.cpp registers itself, so adding a verb touches only its own file.
// The CLI is thin: a command parses flags and wires library stages; it holds no algorithm.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace mp::cli {

// `add` creates the subcommand on `app` and sets its callback. The callback may set the exit code.
using AddCommand = std::function<void(CLI::App& app)>;
bool register_command(const char* name, AddCommand add);
void set_exit_code(int code);

}  // namespace mp::cli

#define MP_REGISTER_COMMAND(verb, fn) \
  static const bool mp_registered_##verb = ::mp::cli::register_command(#verb, fn)
