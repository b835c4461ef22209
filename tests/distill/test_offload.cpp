// Optimizer offload (AdamW's offload_fraction, `distill --offload-optimizer`) on CPU against the resident optimizer:
//   - N steps of train_step (KD, clipping, gradient accumulation) with all, half or none of the state offloaded give
//     the same losses and weights bit for bit, fp32 parameters (all and half offloaded) and bf16 ones (all; fp32
//     masters rounded into the parameters), and the same optimizer state;
//   - checkpoints do not depend on the placement: saved with offload and resumed without (and the reverse), the
//     continuation equals the uninterrupted resident run bit for bit;
//   - a fraction outside [0, 1] is one clear error.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <string>

#include "distill/trainer_state.h"
#include "minipuzzle/distill.h"
#include "tests/catch.h"
#include "tests/fixtures.h"
#include "tests/run_command.h"

using namespace mp;
using namespace mp::distill;

namespace {

ModelConfig tiny_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 96}, {"hidden_size", hidden},
         {"intermediate_size", 3 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 2}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 16}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

std::vector<std::vector<Batch>> make_steps(int64_t steps) {
  std::vector<std::vector<Batch>> out;
  at::Generator gen = at::detail::createCPUGenerator(17);
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<Batch> micro;
    for (int k = 0; k < 2; ++k) {
      at::Tensor w = at::randint(0, 96, {2, 21}, gen, at::kLong);  // 20 tokens: two SSD chunks, one padded
      micro.push_back({w.narrow(1, 0, 20).contiguous(), w.narrow(1, 1, 20).contiguous()});
    }
    out.push_back(micro);
  }
  return out;
}

struct Run {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> weights, state;
};

// Steps [first, last) of a run on `student` with `opt`.
void run_steps(NemotronH& student, AdamW& opt, Teacher* teacher, const std::vector<std::vector<Batch>>& steps,
               size_t first, size_t last, Run& run) {
  GradientSync sync(nullptr, opt.params(), 1 << 12);
  LossOptions o;
  o.alpha = 0.7;
  for (size_t s = first; s < last; ++s) {
    StepResult r = train_step(student, teacher, opt, sync, nullptr, steps[s], 3e-3 * (1.0 + 0.1 * double(s)), 0.5, o);
    REQUIRE(r.applied);
    run.losses.push_back(r.loss);
  }
  run.weights.clear();
  for (auto& [name, p] : student.parameters()) run.weights[name] = p.detach().clone();
  run.state.clear();
  for (auto& [name, t] : opt.state_tensors()) run.state[name] = t.detach().clone();
}

void check_equal(const Run& a, const Run& b) {
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) CHECK(a.losses[i] == b.losses[i]);
  for (auto& [name, w] : a.weights) {
    INFO(name << ": max |difference| " << (w.to(at::kDouble) - b.weights.at(name).to(at::kDouble)).abs().max().item<double>());
    CHECK(at::equal(w, b.weights.at(name)));
  }
  REQUIRE(a.state.size() == b.state.size());
  for (auto& [name, t] : a.state) {
    INFO(name);
    CHECK(at::equal(t, b.state.at(name)));
  }
}

}  // namespace

TEST_CASE("optimizer offload: the same steps as the resident optimizer, bit for bit on CPU") {
  at::set_num_threads(2);  // the host update's chunks run in parallel
  const auto steps = make_steps(3);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    Run reference;
    {
      NemotronH student = NemotronH::random_init(tiny_config(32, "M*-M"), 3, c10::kCPU, dtype);
      student.set_requires_grad(true);
      AdamW opt(student.parameters(), {});
      CHECK(opt.offloaded_elements() == 0);
      ModelTeacher t(NemotronH::random_init(tiny_config(48, "M*-"), 2, c10::kCPU, dtype));
      run_steps(student, opt, &t, steps, 0, steps.size(), reference);
    }
    for (double fraction : {1.0, 0.5}) {
      if (dtype == at::kBFloat16 && fraction != 1.0) continue;  // bf16 on CPU is slow; the split is tested in fp32
      INFO(dtype << ", offloaded fraction " << fraction);
      NemotronH student = NemotronH::random_init(tiny_config(32, "M*-M"), 3, c10::kCPU, dtype);
      student.set_requires_grad(true);
      AdamW opt(student.parameters(), {}, fraction);
      if (fraction == 1.0) CHECK(opt.offloaded_elements() == opt.total_elements());
      else CHECK((opt.offloaded_elements() > 0 && opt.offloaded_elements() < opt.total_elements()));
      ModelTeacher t(NemotronH::random_init(tiny_config(48, "M*-"), 2, c10::kCPU, dtype));
      Run run;
      run_steps(student, opt, &t, steps, 0, steps.size(), run);
      check_equal(reference, run);
    }
  }
  CHECK_THROWS_WITH(AdamW(NemotronH::random_init(tiny_config(32, "M-"), 3, c10::kCPU, at::kFloat).parameters(), {}, 1.5),
                    MP_CONTAINS("must lie in [0, 1]"));
}

TEST_CASE("optimizer offload: checkpoints saved with offload resume without it, and the reverse, identically") {
  at::set_num_threads(2);
  ModelTeacher teacher(NemotronH::random_init(tiny_config(48, "M*-"), 2, c10::kCPU, at::kFloat));
  const auto steps = make_steps(3);
  Run reference;
  {
    NemotronH student = NemotronH::random_init(tiny_config(32, "M*-M"), 3, c10::kCPU, at::kFloat);
    student.set_requires_grad(true);
    AdamW opt(student.parameters(), {});
    run_steps(student, opt, &teacher, steps, 0, steps.size(), reference);
  }
  for (auto [save_fraction, resume_fraction] : {std::pair<double, double>{1.0, 0.0}, {0.0, 0.5}}) {
    INFO("saved with offload " << save_fraction << ", resumed with " << resume_fraction);
    const std::string dir = test::temp_dir("offload_resume");
    Run first, second;
    {
      NemotronH student = NemotronH::random_init(tiny_config(32, "M*-M"), 3, c10::kCPU, at::kFloat);
      student.set_requires_grad(true);
      AdamW opt(student.parameters(), {}, save_fraction);
      run_steps(student, opt, &teacher, steps, 0, 2, first);
      TrainerState st;
      st.step = 2;
      save_trainer_state(dir, st, opt);
    }
    {
      // Different initial weights: everything must come from the checkpoint.
      NemotronH student = NemotronH::random_init(tiny_config(32, "M*-M"), 99, c10::kCPU, at::kFloat);
      student.set_requires_grad(true);
      AdamW opt(student.parameters(), {}, resume_fraction);
      TrainerState st;
      REQUIRE(load_trainer_state(dir, st, opt));
      CHECK(st.step == 2);
      run_steps(student, opt, &teacher, steps, 2, steps.size(), second);
    }
    Run joined = second;
    joined.losses = first.losses;
    joined.losses.insert(joined.losses.end(), second.losses.begin(), second.losses.end());
    check_equal(reference, joined);
  }
}
