// minipuzzle: compress hybrid Mamba-Transformer (Nemotron-H) checkpoints.
// Exit codes: 0 success, 1 error (one line on stderr), 2 bad command line, 130 stopped by SIGINT/SIGTERM
// after saving what could be saved.
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

int main(int argc, char** argv) {
  CLI::App app{"minipuzzle: prune, search and distill hybrid Mamba-Transformer (Nemotron-H) checkpoints"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "minipuzzle 0.1.0");
  for (auto& [name, add] : mp::cli::registry()) add(app);
  mp::install_interrupt_handlers();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
