// The command line's contract (README): a bad command line is one line naming what was wrong and exit 2;
// help and --version exit 0. Checked on the real binary, as a script would call it.
#include "catch.h"
#include "run_command.h"

using mp::test::run_command;

static mp::test::CommandResult cli(const std::string& args) {
  return run_command(mp::test::minipuzzle_binary() + " " + args + " </dev/null");
}

static int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST_CASE("an unknown command exits 2 naming it and the commands that exist", "[cli]") {
  for (const char* args : {"foo", "foo --help", "teacher-logit --help", "prunee x -o y"}) {
    auto r = cli(args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find("unknown command '") != std::string::npos);
    CHECK(r.output.find("commands: ") != std::string::npos);
    CHECK(r.output.find("prune") != std::string::npos);
    CHECK(count_lines(r.output) == 1);
  }
}

TEST_CASE("no command, an unknown flag or a missing value exits 2 with one line", "[cli]") {
  struct Case {
    const char* args;
    const char* says;
  };
  for (const Case& c : {Case{"", "no command given"}, Case{"eval ckpt --data d --no-such-flag", "--no-such-flag"},
                        Case{"eval", "required"}, Case{"eval ckpt --seq-len", "--seq-len"},
                        Case{"eval ckpt --data d --seq-len abc", "abc"}, Case{"--no-such-flag", "--no-such-flag"}}) {
    auto r = cli(c.args);
    INFO(c.args << "\n" << r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.rfind("minipuzzle: error: ", 0) == 0);
    CHECK(r.output.find(c.says) != std::string::npos);
    CHECK(count_lines(r.output) == 1);
  }
}

TEST_CASE("help and version exit 0", "[cli]") {
  for (const char* args : {"--help", "prune --help", "eval --help", "teacher-logits --help", "--version"}) {
    auto r = cli(args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 0);
    CHECK(!r.output.empty());
  }
}
