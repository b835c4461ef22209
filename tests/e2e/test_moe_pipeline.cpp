// The MoE variant of the recipe, end to end through the CLI on tinyshakespeare (bytes): a tiny hybrid MoE teacher
// (Mamba, attention, two MoE layers of 8 experts, top-2, shared expert) trained from scratch -> score (expert
// importance) -> prune to 4 experts per layer (narrower experts and shared expert) -> eval -> distill.
// Checks: the trainer learns with MoE layers; routing frequencies sum to top-k per token (hand-derived invariant);
// removing the lowest-scored experts costs less than removing the highest-scored ones (the scores mean something);
// distillation lowers the student's KL to the teacher; the router load is logged.
#include <fstream>
#include <sstream>

#include "minipuzzle/checkpoint.h"
#include "tests/catch.h"
#include "tests/fixtures.h"
#include "tests/run_command.h"

using namespace mp;

namespace {

json run_json(const std::string& cmd) {
  auto r = test::run_command(cmd);
  INFO(cmd << "\n" << r.output);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.output.substr(r.output.find('{')));
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

}  // namespace

TEST_CASE("MoE recipe: teacher -> expert scores -> expert-pruned student -> eval -> distill", "[e2e][moe]") {
  const std::string dir = test::temp_dir("moe_pipeline");
  const std::string mp = test::minipuzzle_binary();
  auto sh = [&](const std::string& cmd) {
    auto r = test::run_command("cd " + dir + " && MINIPUZZLE_PROGRESS=off " + cmd);
    INFO(cmd << "\n" << r.output);
    REQUIRE(r.exit_code == 0);
    return r.output;
  };
  sh("head -c 150000 " + test::shared_data("tinyshakespeare.txt") + " > text.txt");
  sh(mp + " data text.txt --tokenizer byte -o tok --valid-fraction 0.1");
  std::ofstream(dir + "/teacher.json") << R"({"model_type": "nemotron_h", "vocab_size": 258, "hidden_size": 48,
    "intermediate_size": 64, "hybrid_override_pattern": "ME*E", "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 12, "mamba_num_heads": 4, "mamba_head_dim": 12, "n_groups": 1, "ssm_state_size": 16,
    "conv_kernel": 4, "chunk_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
    "moe_shared_expert_intermediate_size": 32, "routed_scaling_factor": 2.5, "tie_word_embeddings": false,
    "torch_dtype": "float32"})";
  // Teacher from scratch: 60 steps of 8 x 64 tokens.
  sh(mp + " distill --from-scratch --student teacher.json --data tok.train --valid tok.valid --tokens 30720 "
          "--seq-len 64 --micro-batch 8 --lr 3e-3 --min-lr 3e-4 --warmup 5 --eval-every 1000 --eval-tokens 4096 "
          "--threads 1 --seed 1 -o teacher_run");
  json tlog = read_json(dir + "/teacher_run/checkpoint/trainer.json");
  CHECK(tlog["evals"].front()["val_loss"].get<double>() > 5.0);  // uniform over 258 bytes: 5.55
  CHECK(tlog["evals"].back()["val_loss"].get<double>() < 3.2);

  sh(mp + " score teacher_run/final --calib tok.valid --samples 8 --seq-len 64 --no-depth -o scores.json");
  json scores = read_json(dir + "/scores.json");
  for (int i : {1, 3}) {
    const json& m = scores["layers"][i]["moe"];
    REQUIRE(m["experts"].size() == 8);
    double freq = 0;
    for (auto& f : m["frequency"]) freq += f.get<double>();
    CHECK(freq == Approx(2.0).epsilon(1e-9));  // every token goes to exactly top-k = 2 experts
    CHECK(m["expert_channels"].size() == 8 * 24);
    CHECK(m["shared"].size() == 32);
  }
  // The same target twice: dropping the lowest-scored experts, and (scores negated) the highest-scored ones.
  json anti = scores;
  for (auto& l : anti["layers"])
    if (l.contains("moe"))
      for (auto& v : l["moe"]["experts"]) v = -v.get<double>();
  std::ofstream(dir + "/anti.json") << anti.dump();
  const std::string target = " --experts 4 --expert-ffn 16 --shared-ffn 24";
  sh(mp + " prune teacher_run/final --scores scores.json" + target + " -o student");
  sh(mp + " prune teacher_run/final --scores anti.json" + target + " -o anti_student");
  auto student_config = Checkpoint::open(dir + "/student").config();
  CHECK(student_config.n_routed_experts == 4);
  CHECK(student_config.moe_intermediate_size == 16);
  CHECK(student_config.pattern() == "ME*E");
  auto loss = [&](const std::string& ckpt) {
    return run_json("cd " + dir + " && MINIPUZZLE_PROGRESS=off " + mp + " eval " + ckpt + " --data tok.valid --seq-len 64")["loss"].get<double>();
  };
  const double teacher = loss("teacher_run/final"), student = loss("student"), anti_student = loss("anti_student");
  WARN("MoE recipe: held-out loss teacher " << teacher << ", 4 of 8 experts kept by score " << student
                                            << ", kept by inverted score " << anti_student);
  CHECK(student - teacher < anti_student - teacher);

  sh(mp + " distill --teacher teacher_run/final --student student --data tok.train --valid tok.valid --seq-len 64 "
          "--tokens 10240 --micro-batch 8 --lr 1e-3 --eval-every 10 --eval-tokens 2048 --threads 1 --seed 5 "
          "-o distill_run");
  json dlog = read_json(dir + "/distill_run/checkpoint/trainer.json");
  const double kl0 = dlog["evals"].front()["val_kl"].get<double>(), kl1 = dlog["evals"].back()["val_kl"].get<double>();
  WARN("MoE student distillation: validation KL to the teacher " << kl0 << " -> " << kl1);
  CHECK(kl1 < kl0);
  // Router load of the student's MoE layers (1 and 3) with every evaluation: shares over its 4 experts sum to 1.
  const json& load = dlog["evals"].back()["router_load"];
  for (const char* layer : {"1", "3"}) {
    REQUIRE(load.contains(layer));
    double sum = 0;
    for (auto& v : load[layer]["shares"]) sum += v.get<double>();
    CHECK(load[layer]["shares"].size() == 4);
    CHECK(sum == Approx(1.0).epsilon(1e-12));
    CHECK(load[layer]["max_over_mean"].get<double>() >= 1.0);
  }
}
