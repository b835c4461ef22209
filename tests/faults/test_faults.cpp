// Fault injection (issue 11): what a user's files look like after the disk fills up, after kill -9, after a
// non-finite loss, and what the CLI says when an output directory cannot be written or an input is missing.
// The guarantees under test (docs/RELIABILITY.md): no partial output is ever left at the output path, the
// error says what happened, inputs are never modified (checksums before/after), the last complete checkpoint
// survives any crash and `--resume` continues from it.
//
// Disk full is simulated with RLIMIT_FSIZE (`ulimit -f` in KiB blocks) with SIGXFSZ ignored, so write() fails
// with EFBIG exactly as it fails with ENOSPC on a full disk; the limit is set in the child's shell only.
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include <nlohmann/json.hpp>
#include "run_command.h"

namespace fs = mp::fs;
using mp::test::Path;
using mp::test::run_command;

namespace {

std::string helper() { return std::string(MINIPUZZLE_FAULTS_DIR) + "/fault_helper"; }
std::string cli() {
  const char* env = std::getenv("MINIPUZZLE_CLI");
  return env && *env ? env : mp::test::minipuzzle_binary();
}
std::string q(const std::string& s) { return "'" + s + "'"; }

// Whether the CLI under test has `name` (a build of part of the project registers only its commands). A case
// whose command is absent is reported and not run; a full build has them all.
bool has_subcommand(const std::string& name) {
  static std::map<std::string, std::string> help;
  auto it = help.find(cli());
  if (it == help.end()) it = help.emplace(cli(), run_command(cli() + " --help").output).first;
  bool present = it->second.find("\n  " + name + " ") != std::string::npos;
  if (!present) WARN("the CLI " << cli() << " has no `" << name << "` subcommand; its fault cases are not run");
  return present;
}

// Runs `command` with the file-size limit and SIGXFSZ ignored, in a private TMPDIR.
mp::test::CommandResult run_with_fsize_limit(const std::string& command, int64_t kib, const std::string& tmpdir) {
  // Double quotes outside, so that the single-quoted paths inside `command` survive.
  return run_command("sh -c \"trap '' XFSZ; ulimit -f " + std::to_string(kib) + "; export TMPDIR=" + q(tmpdir) +
                     "; exec " + command + "\"");
}

// FNV-1a (64-bit) of a file's bytes: enough to see any change.
std::string file_hash(const Path& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t h = 1469598103934665603ull;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buf[i])) * 1099511628211ull;
  }
  return std::to_string(h) + ":" + std::to_string(fs::file_size(path));
}

// A hash of every regular file under `dir`, by relative path: the "input untouched" check.
std::map<std::string, std::string> checksums(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const std::string& rel : fs::list_files_recursive(dir)) out[rel] = file_hash(fs::join(dir, rel));
  return out;
}

// Names in `dir` starting with `prefix` (temporary siblings such as OUT.tmp-1234).
std::vector<std::string> entries_starting_with(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& name : fs::list_directory(dir))
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  return out;
}

bool dir_is_empty(const std::string& dir) { return fs::is_empty_directory(dir); }

std::string copy_fixture_model(const std::string& name, const std::string& dest) {
  fs::copy_tree(mp::test::reference_model(name), dest);
  return dest;
}

bool mentions_disk_full(const std::string& output) {
  return output.find("disk full") != std::string::npos || output.find("File too large") != std::string::npos;
}

}  // namespace

TEST_CASE("disk full during prune: clear error, nothing left at the output, parent untouched", "[faults]") {
  if (!has_subcommand("prune")) return;
  std::string dir = mp::test::temp_dir("faults_prune_disk_full");
  std::string parent = copy_fixture_model("hybrid_g1", dir + "/parent");
  std::string tmp = dir + "/tmp";
  fs::create_directories(tmp);
  auto before = checksums(parent);

  // 64 KiB cannot hold the pruned model (~250 KB): the write fails part-way through the safetensors shard.
  auto r = run_with_fsize_limit(cli() + " prune " + q(parent) + " --drop-layers 1 -o " + q(dir + "/out"), 64, tmp);
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("minipuzzle: error:") != std::string::npos);
  CHECK(mentions_disk_full(r.output));
  CHECK_FALSE(fs::exists(dir + "/out"));
  CHECK(entries_starting_with(dir, "out").empty());  // no out.tmp-PID left behind
  CHECK(dir_is_empty(tmp));                            // nor the CLI's scratch files
  CHECK(checksums(parent) == before);

  // Control: with room to write, the same command succeeds and the result opens.
  auto ok = run_command("TMPDIR=" + tmp + " " + cli() + " prune " + q(parent) + " --drop-layers 1 -o " + q(dir + "/out"));
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  if (has_subcommand("inspect")) CHECK(run_command(cli() + " inspect " + q(dir + "/out")).exit_code == 0);
  CHECK(checksums(parent) == before);
}

TEST_CASE("disk full during a model checkpoint write: nothing left behind", "[faults]") {
  std::string dir = mp::test::temp_dir("faults_model_disk_full");
  // 20 kB per file: the 77 kB embedding shard cannot be written.
  auto r = run_command(helper() + " model-save " + q(dir + "/model") + " 20000 0");
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(mentions_disk_full(r.output));
  CHECK(dir_is_empty(dir));
  auto ok = run_command(helper() + " model-save " + q(dir + "/model") + " 0 0");
  INFO(ok.output);
  CHECK(ok.exit_code == 0);
  if (has_subcommand("inspect")) CHECK(run_command(cli() + " inspect " + q(dir + "/model")).exit_code == 0);
}

TEST_CASE("disk full during a trainer checkpoint save: the previous checkpoint survives", "[faults]") {
  std::string dir = mp::test::temp_dir("faults_trainer_disk_full");
  REQUIRE(run_command(helper() + " trainer-save " + q(dir) + " 1").exit_code == 0);
  auto before = checksums(dir + "/checkpoint");
  // A save is ~48 MiB; 8 MiB per file fails inside state.safetensors.
  auto r = run_command(helper() + " trainer-save " + q(dir) + " 2 8388608");
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(mentions_disk_full(r.output));
  CHECK(checksums(dir + "/checkpoint") == before);
  CHECK(entries_starting_with(dir, "checkpoint.tmp").empty());
  auto load = run_command(helper() + " trainer-load " + q(dir));
  INFO(load.output);
  CHECK(load.exit_code == 0);
  CHECK(load.output.find("step 1 consistent") != std::string::npos);
}

TEST_CASE("kill -9 during trainer checkpoint saves: a complete checkpoint is always there to resume from",
          "[faults]") {
  std::string dir = mp::test::temp_dir("faults_trainer_kill");
  // Each round: save steps continuously, SIGKILL at a different moment, then load what is on disk. The loaded
  // state must be one whole save (all tensors and trainer.json agree), at least the last one reported done.
  int64_t previous = 0;
  for (int round = 0; round < 8; ++round) {
    // The kill lands 0 to 1 s after the round's first completed save, i.e. inside one of the following saves.
    double delay = 0.137 * round;
    auto r = run_command("cd " + q(dir) + " && rm -f saves.log && (" + helper() + " trainer-save-loop " + q(dir) +
                         " " + std::to_string(previous + 1) + " > saves.log 2>&1 & pid=$!; for i in $(seq 1 600); do " +
                         "grep -q saved saves.log && break; sleep 0.1; done; sleep " + std::to_string(delay) +
                         "; kill -9 $pid; wait $pid; tail -n 1 saves.log)");
    INFO("round " << round << ": " << r.output);
    int64_t last_reported = previous;
    std::smatch m;
    std::string out = r.output;
    if (std::regex_search(out, m, std::regex("saved (\\d+)"))) last_reported = std::stoll(m[1]);
    REQUIRE(last_reported > previous);  // the loop saved at least once before the kill
    auto load = run_command(helper() + " trainer-load " + q(dir));
    INFO(load.output);
    REQUIRE(load.exit_code == 0);
    REQUIRE(std::regex_search(load.output, m, std::regex("step (\\d+) consistent")));
    int64_t step = std::stoll(m[1]);
    CHECK(step >= last_reported);
    CHECK(step <= last_reported + 1);  // the save in flight may have completed before the kill
    previous = step;
  }
  CHECK(previous > 0);
}

namespace {
struct DistillFixture {
  std::string dir, good, nan_model, tokens;
  explicit DistillFixture(const std::string& tag) {
    dir = mp::test::temp_dir(tag);
    good = dir + "/teacher";
    nan_model = dir + "/student_nan";
    tokens = dir + "/tokens";
    auto a = run_command(helper() + " model-save " + q(good) + " 0 0");
    auto b = run_command(helper() + " model-save " + q(nan_model) + " 0 1");
    auto c = run_command(helper() + " make-tokens " + q(tokens) + " 4096");
    INFO(a.output << b.output << c.output);
    REQUIRE((a.exit_code == 0 && b.exit_code == 0 && c.exit_code == 0));
  }
  std::string distill(const std::string& student, const std::string& out, const std::string& extra) const {
    return cli() + " distill --teacher " + q(good) + " --student " + q(student) + " --data " + q(tokens) +
           " --valid " + q(tokens) + " -o " + q(out) +
           " --seq-len 16 --micro-batch 2 --eval-every 100000 --eval-tokens 64 --threads 1 " + extra;
  }
};
}  // namespace

TEST_CASE("NaN in the loss: each step skipped with a warning, after K in a row the job stops with a checkpoint",
          "[faults]") {
  if (!has_subcommand("distill")) return;
  DistillFixture f("faults_nan");
  auto before = checksums(f.nan_model);
  auto r = run_command(f.distill(f.nan_model, f.dir + "/out", "--tokens 2048 --max-nonfinite 3 --save-every 0"));
  INFO(r.output);
  CHECK(r.exit_code == 3);  // mp::distill::kExitNonFinite
  size_t warnings = 0;
  for (size_t p = r.output.find("non-finite loss"); p != std::string::npos; p = r.output.find("non-finite loss", p + 1))
    ++warnings;
  CHECK(warnings >= 3);
  REQUIRE(fs::exists(f.dir + "/out/checkpoint/trainer.json"));
  std::ifstream state_file(f.dir + "/out/checkpoint/trainer.json");
  nlohmann::json state = nlohmann::json::parse(state_file, nullptr, false);
  CHECK(state.at("skipped_steps").get<int64_t>() == 3);
  CHECK(state.at("nonfinite_in_a_row").get<int64_t>() == 3);
  CHECK(checksums(f.nan_model) == before);
}

TEST_CASE("kill -9 during distillation: --resume continues from the last complete checkpoint", "[faults]") {
  if (!has_subcommand("distill")) return;
  DistillFixture f("faults_distill_kill");
  const std::string out = f.dir + "/out";
  const std::string cmd = f.distill(f.good, out, "--tokens 4096 --save-every 1");
  // Wait for the first checkpoint, then kill while the job keeps saving every step.
  auto r = run_command("(" + cmd + " > " + q(f.dir + "/run1.log") + " 2>&1 & pid=$!; for i in $(seq 1 600); do [ -f " +
                       q(out + "/checkpoint/trainer.json") + " ] && break; sleep 0.1; done; sleep 0.7; kill -9 $pid; " +
                       "wait $pid; echo killed $?)");
  INFO(r.output);
  REQUIRE(r.output.find("killed 137") != std::string::npos);
  auto resumed = run_command(cmd + " --resume");
  INFO(resumed.output);
  CHECK(resumed.exit_code == 0);
  std::ifstream log(out + "/log.jsonl");
  std::string line;
  int64_t resumed_at = -1;
  while (std::getline(log, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == "resume") resumed_at = j.value("resumed_at_step", int64_t(-1));
  }
  CHECK(resumed_at > 0);
  CHECK(fs::exists(out + "/final/config.json"));
}

TEST_CASE("missing inputs and unwritable outputs: clear errors before any work", "[faults]") {
  std::string dir = mp::test::temp_dir("faults_paths");
  std::string model = mp::test::reference_model("hybrid_g1");
  const std::string missing = dir + "/does-not-exist";
  struct Case {
    std::string subcommand, command, expect;
  };
  std::vector<Case> cases = {
      {"inspect", cli() + " inspect " + q(missing), "does-not-exist"},
      {"eval", cli() + " eval " + q(missing) + " --data " + q(missing), "does-not-exist"},
      {"eval", cli() + " eval " + q(model) + " --data " + q(missing + ".tokens"), "does-not-exist"},
      {"score", cli() + " score " + q(model) + " --calib " + q(missing) + " -o " + q(dir + "/scores.json"), "does-not-exist"},
      {"score", cli() + " score " + q(model) + " --calib " + q(missing) + " -o " + q(missing + "/scores.json"), "does not exist"},
      {"prune", cli() + " prune " + q(missing) + " --drop-layers 1 -o " + q(dir + "/p1"), "does-not-exist"},
      {"prune", cli() + " prune " + q(model) + " --scores " + q(missing + ".json") + " --hidden 32 -o " + q(dir + "/p2"),
       "does-not-exist"},
      {"prune", cli() + " prune " + q(model) + " --drop-layers 1 -o " + q(missing + "/sub/out"), "does not exist"},
      {"search", cli() + " search " + q(missing) + " --hardware a10g -o " + q(dir + "/s1"), "does-not-exist"},
      {"distill", cli() + " distill --from-scratch --student " + q(missing) + " --data " + q(missing) + " --valid " + q(missing) +
           " --tokens 100 -o " + q(dir + "/d1"),
       "does-not-exist"},
  };
  for (auto& c : cases) {
    if (!has_subcommand(c.subcommand)) continue;
    auto r = run_command(c.command);
    INFO(c.command << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("minipuzzle: error:") != std::string::npos);
    CHECK(r.output.find(c.expect) != std::string::npos);
  }
  if (!has_subcommand("prune")) return;
  CHECK_FALSE(fs::exists(dir + "/p1"));
  CHECK_FALSE(fs::exists(dir + "/p2"));
  // distill creates its output directory before opening the student (an empty directory is left; reported to the
  // distill stage): at least no checkpoint or log may appear.
  CHECK_FALSE(fs::exists(dir + "/d1/checkpoint"));
  CHECK_FALSE(fs::exists(dir + "/d1/log.jsonl"));

  // An output directory whose parent cannot be written: a read-only directory (for root, which may write
  // anywhere on a writable file system, a directory of sysfs, where nothing can be created).
  std::string locked;
  if (::geteuid() != 0) {
    locked = dir + "/locked";
    fs::create_directories(locked);
    ::chmod(locked.c_str(), 0555);
  } else if (::mkdir("/sys/minipuzzle-probe", 0755) != 0) {
    locked = "/sys";
  }
  if (locked.empty()) {
    WARN("no unwritable directory available here; read-only output case not run");
    return;
  }
  auto start = std::chrono::steady_clock::now();
  auto r = run_command(cli() + " prune " + q(model) + " --drop-layers 1 -o " + q(locked + "/minipuzzle-out"));
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("not writable") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));
  if (::geteuid() != 0) ::chmod(locked.c_str(), 0755);
}

TEST_CASE("search: contexts and batch sizes whose byte counts overflow 64 bits are refused clearly", "[faults]") {
  if (!has_subcommand("search")) return;
  std::string dir = mp::test::temp_dir("faults_search_overflow");
  std::string model = mp::test::reference_model("hybrid_g1");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--batch 4611686018427387904", "batch"},   {"--batch 9223372036854775807", "batch"},
      {"--context 9223372036854775807", "token count"}, {"--context 1e30", "token count"},
      {"--batch 0", "batch"},                     {"--context -5", "token count"}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string out = dir + "/report" + std::to_string(i);
    auto r = run_command(cli() + " search " + q(model) + " --hardware a10g -o " + q(out) + " " + cases[i].first);
    INFO(cases[i].first << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("minipuzzle: error:") != std::string::npos);
    CHECK(r.output.find(cases[i].second) != std::string::npos);
    CHECK_FALSE(fs::exists(out + "/report.md"));  // no ranking of wrapped-around numbers was written
  }
  // Control: the largest supported batch is searched normally.
  auto ok = run_command(cli() + " search " + q(model) + " --hardware a10g --batch 16777216 -o " + q(dir + "/ok"));
  INFO(ok.output);
  CHECK(ok.exit_code == 0);
  CHECK(fs::exists(dir + "/ok/report.md"));
}
