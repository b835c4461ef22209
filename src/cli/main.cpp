// minipuzzle: compress hybrid Mamba-Transformer (Nemotron-H) checkpoints.
// Exit codes: 0 success, 1 error (one line on stderr), 2 bad command line (unknown command or flag, missing
// or malformed value: one line naming it), 130 stopped by SIGINT/SIGTERM after saving what could be saved.
#include <c10/util/Exception.h>

#include <cstdio>
#include <map>
#include <string>

#include "minipuzzle/error.h"
#include "minipuzzle/interrupt.h"
#include "src/cli/command.h"

namespace mp::cli {

static std::map<std::string, AddCommand>& registry() {
  static std::map<std::string, AddCommand> commands;
  return commands;
}
static int g_exit_code = 0;

bool register_command(const char* name, AddCommand add) {
  registry()[name] = std::move(add);
  return true;
}
void set_exit_code(int code) { g_exit_code = code; }

}  // namespace mp::cli

namespace {

std::string command_list() {
  std::string names;
  for (auto& [name, add] : mp::cli::registry()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

// A bad command line is one line on stderr and exit 2 (CLI11's own codes, e.g. 106 for a missing subcommand,
// would mean nothing to a script). Help and --version still print and exit 0.
int command_line_error(const std::string& what, const std::string& command) {
  std::fprintf(stderr, "minipuzzle: error: %s; see 'minipuzzle %s--help'\n", what.c_str(),
               command.empty() ? "" : (command + " ").c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"minipuzzle: prune, search and distill hybrid Mamba-Transformer (Nemotron-H) checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "minipuzzle 0.1.0");
  for (auto& [name, add] : mp::cli::registry()) add(app);
  mp::install_interrupt_handlers();
  // An unknown first word is named as such before CLI11 sees it: otherwise `minipuzzle foo --help` would print
  // the main help and exit 0, and `minipuzzle foo` would say only that a subcommand is required.
  if (argc > 1 && argv[1][0] != '-' && !mp::cli::registry().count(argv[1]))
    return command_line_error("unknown command '" + std::string(argv[1]) + "'; commands: " + command_list(), "");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::string command;
    for (const CLI::App* sub : app.get_subcommands()) command = sub->get_name();
    std::string what = e.what();
    if (dynamic_cast<const CLI::RequiredError*>(&e) && command.empty())
      what = (argc > 1 ? "unknown option '" + std::string(argv[1]) + "' before the command"
                       : std::string("no command given")) + "; commands: " + command_list();
    return command_line_error(what, command);
  } catch (const mp::Error& e) {
    std::fprintf(stderr, "minipuzzle: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "minipuzzle: error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "minipuzzle: error: %s\n", e.what());
    return 1;
  }
  return mp::cli::g_exit_code;
}
