// `minipuzzle distill` end to end on CPU, run as subprocesses on tinyshakespeare (byte-level tokens):
//   - a tiny teacher trained from scratch; a smaller random student distilled from it: validation loss and KL to
//     the teacher fall;
//   - exact resume: 2N uninterrupted steps == N steps, kill -9, resume: the same losses bit for bit and the same
//     final weights byte for byte;
//   - SIGTERM: the step finishes, a checkpoint is written, the exit code is 130;
//   - two gloo processes with micro-batch B == one process with micro-batch 2B, within 2e-5 (relative) on every
//     step's loss: only the order of float sums differs;
//   - --activation-checkpointing (1 and 2 layers per segment): the same losses, evaluations and final weights as
//     without it, bit for bit;
//   - --offload-optimizer: all optimizer state on the host, stopped (--stop-after-steps) and resumed with it on the
//     device, equals the plain run bit for bit; --plan prints the memory plan and exits 0, or 1 with what would fit.
#include "fixtures.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/config.h"
#include "minipuzzle/model.h"
#include "minipuzzle/token_file.h"
#include "tests/catch.h"
#include "tests/fixtures.h"
#include "tests/run_command.h"

namespace fs = mp::fs;
using mp::test::Path;
using namespace mp;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

ModelConfig tiny_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 256}, {"hidden_size", hidden},
         {"intermediate_size", 2 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 1}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 32}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

// Shared set-up, made once per test process: byte-level token files, a teacher trained from scratch, and a
// random student checkpoint.
struct Setup {
  std::string dir, train, valid, teacher_config, teacher, student;
};

const Setup& setup() {
  static Setup s = [] {
    Setup s;
    s.dir = test::temp_dir("distill");
    std::string text = read_file(test::shared_data("tinyshakespeare.txt"));
    REQUIRE(text.size() > 300000);
    auto write = [&](const std::string& name, size_t begin, size_t size) {
      std::vector<uint32_t> ids;
      for (size_t i = begin; i < begin + size; ++i) ids.push_back(uint8_t(text[i]));
      TokenFileMetadata meta;
      meta.tokenizer_kind = "byte_level";
      meta.vocab_size = 256;
      TokenFileWriter w(s.dir + "/" + name, meta);
      w.add_document(ids);
      w.finish();
      return s.dir + "/" + name;
    };
    s.train = write("train", 0, 250000);
    s.valid = write("valid", 250000, 20000);
    s.teacher_config = s.dir + "/teacher_config.json";
    std::ofstream(s.teacher_config) << tiny_config(64, "M*M-").to_json().dump(2);
    // Teacher: from scratch for 60 steps of 8 x 64 tokens (its loss falls well below the uniform 5.55 nats).
    auto r = test::run_command(test::minipuzzle_binary() + " distill --from-scratch --student " + s.teacher_config +
                               " --data " + s.train + " --valid " + s.valid + " --tokens 30720 --seq-len 64" +
                               " --micro-batch 8 --lr 3e-3 --min-lr 3e-4 --warmup 5 --eval-every 1000 --eval-tokens 4096" +
                               " --threads 1 --seed 1 -o " + s.dir + "/teacher_run");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    s.teacher = s.dir + "/teacher_run/final";
    s.student = s.dir + "/student";
    NemotronH::random_init(tiny_config(32, "M*-"), 7, c10::kCPU, at::kFloat).save(s.student, DType::F32);
    return s;
  }();
  return s;
}

std::string distill_cmd(const Setup& s, const std::string& out, const std::string& extra) {
  return test::minipuzzle_binary() + " distill --teacher " + s.teacher + " --student " + s.student + " --data " +
         s.train + " --valid " + s.valid + " --seq-len 64 --eval-tokens 2048 --threads 1 --seed 5 -o " + out + " " +
         extra;
}

// Starts `cmd` with exec so that the pid is the minipuzzle process itself (kill reaches it, not a shell).
pid_t spawn(const std::string& cmd, const std::string& log_path) {
  pid_t pid = fork();
  if (pid == 0) {
    std::string full = "exec " + cmd + " > '" + log_path + "' 2>&1";
    execl("/bin/sh", "sh", "-c", full.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Polls until `done()` or the child exits; returns false if the child exited first.
template <typename F>
bool wait_for(pid_t pid, F done, double timeout_s = 120) {
  auto start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < timeout_s) {
    if (done()) return true;
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

int checkpoint_step(const std::string& out) {
  std::string p = out + "/checkpoint/trainer.json";
  if (!fs::exists(p)) return -1;
  try {
    return read_json(p)["step"].get<int>();
  } catch (...) {
    return -1;
  }
}

}  // namespace

TEST_CASE("distill: a tiny student's validation loss and KL to the teacher fall") {
  const Setup& s = setup();
  json teacher_log = read_json(s.dir + "/teacher_run/checkpoint/trainer.json");
  const double teacher_first = teacher_log["evals"].front()["val_loss"].get<double>();
  const double teacher_last = teacher_log["evals"].back()["val_loss"].get<double>();
  INFO("teacher val loss " << teacher_first << " -> " << teacher_last);
  CHECK(teacher_last < teacher_first - 1.0);  // the teacher learned something worth distilling

  std::string out = s.dir + "/distill_fall";
  auto r = test::run_command(distill_cmd(s, out, "--tokens 20480 --micro-batch 8 --lr 3e-3 --min-lr 3e-4 --warmup 5 "
                                                 "--alpha 0.8 --temperature 1.5 --eval-every 20"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json st = read_json(out + "/checkpoint/trainer.json");
  auto& evals = st["evals"];
  REQUIRE(evals.size() >= 3);  // steps 0, 20, 40
  const double kl0 = evals.front()["val_kl"], kl1 = evals.back()["val_kl"];
  const double loss0 = evals.front()["val_loss"], loss1 = evals.back()["val_loss"];
  INFO("student val loss " << loss0 << " -> " << loss1 << ", KL " << kl0 << " -> " << kl1);
  CHECK(kl1 < 0.7 * kl0);
  CHECK(loss1 < loss0 - 0.5);
  // Outputs: the HF checkpoint of the student opens and holds the trained weights; log, report, curves exist.
  auto final_ck = Checkpoint::open(out + "/final");
  CHECK(final_ck.config().hidden_size == 32);
  CHECK(fs::exists(out + "/log.jsonl"));
  CHECK(fs::exists(out + "/loss.svg"));
  CHECK(read_file(out + "/report.html").find("<svg") != std::string::npos);
  CHECK(fs::exists(out + "/report.md"));
}

TEST_CASE("distill: kill -9 after a checkpoint, then --resume, equals the uninterrupted run bit for bit") {
  const Setup& s = setup();
  const std::string args = "--tokens 20480 --micro-batch 4 --grad-accum 2 --lr 2e-3 --warmup 3 --eval-every 15 "
                           "--save-every 10";  // 40 steps of 512 tokens
  std::string a = s.dir + "/resume_a", b = s.dir + "/resume_b";
  auto ra = test::run_command(distill_cmd(s, a, args));
  INFO(ra.output);
  REQUIRE(ra.exit_code == 0);

  pid_t pid = spawn(distill_cmd(s, b, args), s.dir + "/resume_b.log");
  const bool saw_checkpoint = wait_for(pid, [&] { return checkpoint_step(b) >= 10; });
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  INFO(read_file(s.dir + "/resume_b.log"));
  REQUIRE(saw_checkpoint);
  REQUIRE(WIFSIGNALED(status));  // really killed, not finished
  const int killed_at = checkpoint_step(b);
  INFO("checkpoint at step " << killed_at << " when killed");
  REQUIRE(killed_at < 40);
  CHECK(!fs::exists(b + "/final"));

  auto rb = test::run_command(distill_cmd(s, b, args + " --resume"));
  INFO(rb.output);
  REQUIRE(rb.exit_code == 0);
  json ja = read_json(a + "/checkpoint/trainer.json"), jb = read_json(b + "/checkpoint/trainer.json");
  REQUIRE(ja["train_loss"].size() == 40);
  CHECK(ja["train_loss"].dump() == jb["train_loss"].dump());  // doubles print round-trip exactly
  CHECK(ja["evals"].dump() == jb["evals"].dump());
  CHECK(read_file(a + "/final/model.safetensors") == read_file(b + "/final/model.safetensors"));
  // The resumed log holds each step once.
  std::ifstream log(b + "/log.jsonl");
  std::string line;
  std::vector<int> steps;
  while (std::getline(log, line)) {
    json j = json::parse(line);
    if (j.contains("loss")) steps.push_back(j["step"].get<int>());
  }
  REQUIRE(steps.size() == 40);
  for (int i = 0; i < 40; ++i) CHECK(steps[i] == i + 1);
}

TEST_CASE("distill: SIGTERM finishes the step, writes a checkpoint and exits with 130") {
  const Setup& s = setup();
  std::string out = s.dir + "/sigterm";
  pid_t pid = spawn(distill_cmd(s, out, "--tokens 1000000 --micro-batch 4 --eval-every 100000 --save-every 0"),
                    s.dir + "/sigterm.log");
  const bool stepping = wait_for(pid, [&] { return read_file(out + "/log.jsonl").find("\"step\":3,") != std::string::npos; });
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  INFO(read_file(s.dir + "/sigterm.log"));
  REQUIRE(stepping);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  const int step = checkpoint_step(out);
  CHECK(step >= 3);
  CHECK(step < 1000000 / 256);
  json st = read_json(out + "/checkpoint/trainer.json");
  CHECK(int(st["train_loss"].size()) == step);
  CHECK(!fs::exists(out + "/final"));
  // A resume must keep the settings that define the step sequence: a changed --tokens is refused, clearly.
  auto r = test::run_command(distill_cmd(s, out, "--tokens 2048 --micro-batch 4 --resume"));
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, MP_CONTAINS("setting \"tokens\""));
}

TEST_CASE("distill: two gloo processes with micro-batch B equal one process with micro-batch 2B") {
  const Setup& s = setup();
  const std::string args = "--tokens 10240 --lr 2e-3 --warmup 2 --eval-every 10 ";  // 20 steps of 8 x 64 tokens
  std::string single = s.dir + "/dp_single", dp = s.dir + "/dp_two";
  auto r1 = test::run_command(distill_cmd(s, single, args + "--micro-batch 8"));
  INFO(r1.output);
  REQUIRE(r1.exit_code == 0);

  const int port = 29500 + int(getpid() % 20000);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    std::string env = "env RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
                      " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " ";
    pids.push_back(spawn(env + distill_cmd(s, dp, args + "--micro-batch 4"),
                         s.dir + "/dp_rank" + std::to_string(rank) + ".log"));
  }
  for (int rank = 0; rank < 2; ++rank) {
    int status = 0;
    waitpid(pids[rank], &status, 0);
    INFO("rank " << rank << ": " << read_file(s.dir + "/dp_rank" + std::to_string(rank) + ".log"));
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
  }
  json a = read_json(single + "/checkpoint/trainer.json"), b = read_json(dp + "/checkpoint/trainer.json");
  REQUIRE(a["train_loss"].size() == 20);
  REQUIRE(b["train_loss"].size() == 20);
  CHECK(b["settings"]["world_size"] == 2);
  for (size_t i = 0; i < 20; ++i) {
    const double x = a["train_loss"][i], y = b["train_loss"][i];
    INFO("step " << i + 1 << ": single " << x << ", two processes " << y);
    CHECK(std::abs(x - y) <= 2e-5 * std::abs(x));
  }
  const double va = a["evals"].back()["val_loss"], vb = b["evals"].back()["val_loss"];
  CHECK(std::abs(va - vb) <= 2e-5 * va);
}

TEST_CASE("distill: --activation-checkpointing gives the same losses, evaluations and weights") {
  const Setup& s = setup();
  const std::string args = "--tokens 5120 --micro-batch 4 --grad-accum 2 --lr 2e-3 --warmup 2 --eval-every 5 ";
  std::string plain = s.dir + "/ckpt_plain", ckpt = s.dir + "/ckpt_on", ckpt2 = s.dir + "/ckpt_on2";
  auto r1 = test::run_command(distill_cmd(s, plain, args));
  INFO(r1.output);
  REQUIRE(r1.exit_code == 0);
  auto r2 = test::run_command(distill_cmd(s, ckpt, args + "--activation-checkpointing"));
  INFO(r2.output);
  REQUIRE(r2.exit_code == 0);
  auto r3 = test::run_command(distill_cmd(s, ckpt2, args + "--activation-checkpointing --checkpoint-layers 2"));
  INFO(r3.output);
  REQUIRE(r3.exit_code == 0);
  json a = read_json(plain + "/checkpoint/trainer.json");
  REQUIRE(a["train_loss"].size() == 10);
  for (const std::string& out : {ckpt, ckpt2}) {
    json b = read_json(out + "/checkpoint/trainer.json");
    CHECK(a["train_loss"].dump() == b["train_loss"].dump());  // bit for bit on CPU
    CHECK(a["evals"].dump() == b["evals"].dump());
    CHECK(read_file(plain + "/final/model.safetensors") == read_file(out + "/final/model.safetensors"));
  }
  CHECK(read_file(ckpt + "/log.jsonl").find("\"activation_checkpointing\":1") != std::string::npos);
  CHECK(read_file(ckpt2 + "/log.jsonl").find("\"activation_checkpointing\":2") != std::string::npos);
  auto bad = test::run_command(distill_cmd(s, s.dir + "/ckpt_bad", args + "--activation-checkpointing --checkpoint-layers 0"));
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.output, MP_CONTAINS("--checkpoint-layers must be positive"));
}

TEST_CASE("distill: non-finite steps are skipped, and too many in a row stop the run with a checkpoint") {
  const Setup& s = setup();
  std::string out = s.dir + "/nonfinite";
  // A learning rate of 1e30 makes the weights overflow after the first update: every later loss is NaN/inf.
  auto r = test::run_command(distill_cmd(s, out, "--tokens 20480 --micro-batch 4 --lr 1e30 --min-lr 1e30 "
                                                 "--clip 0 --eval-every 1000 --max-nonfinite 3"));
  INFO(r.output);
  CHECK(r.exit_code == 3);
  CHECK_THAT(r.output, MP_CONTAINS("non-finite"));
  json st = read_json(out + "/checkpoint/trainer.json");
  CHECK(st["skipped_steps"].get<int>() == 3);
  CHECK(st["nonfinite_in_a_row"].get<int>() == 3);
  const auto& losses = st["train_loss"];
  REQUIRE(losses.size() >= 4);
  CHECK(losses[0].is_number());
  for (size_t i = losses.size() - 3; i < losses.size(); ++i) CHECK(losses[i].is_null());
  CHECK(!fs::exists(out + "/final"));
}

TEST_CASE("distill: --offload-optimizer, stopped and resumed without it, equals the plain run; --plan") {
  const Setup& s = setup();
  const std::string args = "--tokens 5120 --micro-batch 4 --grad-accum 2 --lr 2e-3 --warmup 2 --eval-every 5 ";
  const std::string plain = s.dir + "/offload_plain", off = s.dir + "/offload_on";
  auto r1 = test::run_command(distill_cmd(s, plain, args));
  INFO(r1.output);
  REQUIRE(r1.exit_code == 0);
  auto r2 = test::run_command(distill_cmd(s, off, args + "--offload-optimizer 1 --stop-after-steps 4"));
  INFO(r2.output);
  REQUIRE(r2.exit_code == 0);
  CHECK(read_json(off + "/checkpoint/trainer.json")["step"] == 4);
  CHECK_FALSE(fs::exists(off + "/final"));
  auto r3 = test::run_command(distill_cmd(s, off, args + "--offload-optimizer 0 --resume"));
  INFO(r3.output);
  REQUIRE(r3.exit_code == 0);
  json a = read_json(plain + "/checkpoint/trainer.json"), b = read_json(off + "/checkpoint/trainer.json");
  REQUIRE(a["train_loss"].size() == 10);
  CHECK(a["train_loss"].dump() == b["train_loss"].dump());  // bit for bit on CPU
  CHECK(read_file(plain + "/final/model.safetensors") == read_file(off + "/final/model.safetensors"));
  CHECK(read_file(off + "/log.jsonl").find("\"offload_optimizer\":1.0") != std::string::npos);

  // --plan for 12B -> 9B on a 141 GB GPU, from the configs alone (no checkpoint is read).
  const std::string models = test::source_dir() + "/configs/models/";
  const std::string plan_cmd = test::minipuzzle_binary() + " distill --plan --gpu-memory 141GB --host-memory 128GiB --teacher " +
                               models + "nemotron-nano-12b-v2.json --student " + models + "nemotron-nano-9b-v2.json" +
                               " --data none --valid none --tokens 65536 --seq-len 8192 --micro-batch 8 -o " + s.dir + "/plan ";
  auto p1 = test::run_command(plan_cmd + "--fit auto");
  INFO(p1.output);
  CHECK(p1.exit_code == 0);
  CHECK_THAT(p1.output, MP_CONTAINS("AdamW moments"));
  json plan = read_json(s.dir + "/plan/plan.json");
  CHECK(plan["fits"] == true);
  CHECK(plan["setup"]["offload_fraction"].get<double>() > 0);
  auto p2 = test::run_command(plan_cmd);  // --fit check: the given setup does not fit
  INFO(p2.output);
  CHECK(p2.exit_code == 1);
  CHECK_THAT(p2.output, MP_CONTAINS("on the GPU, 128.7 GiB available; --offload-optimizer"));
  auto bad = test::run_command(distill_cmd(s, s.dir + "/offload_bad", args + "--offload-optimizer lots"));
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.output, MP_CONTAINS("--offload-optimizer takes auto or a fraction"));
}
