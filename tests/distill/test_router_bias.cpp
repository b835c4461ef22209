// Aux-loss-free load balancing of MoE students (distill/router_bias.h; `distill --router-bias-update RATE`):
//   - one training step (train_step with the updater observing the student's forward) moves every router's
//     e_score_correction_bias by exactly rate * sign(mean load - load), the loads counted independently by the
//     validation's RouterLoad on the same forward (with activation checkpointing: counted once, not again in the
//     recomputation);
//   - repeated updates make a skewed router's loads even (max load / mean load from 4 to under 1.3 on 1024
//     held-out tokens), which the same forwards without the rule do not.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "distill/router_bias.h"
#include "distill/router_load.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"
#include "tests/catch.h"

using namespace mp;
using namespace mp::distill;

namespace {

ModelConfig moe_config() {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 64}, {"hidden_size", 32}, {"intermediate_size", 48},
         {"hybrid_override_pattern", "EME"}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
         {"head_dim", 8}, {"mamba_num_heads", 4}, {"mamba_head_dim", 8}, {"n_groups", 2}, {"ssm_state_size", 8},
         {"conv_kernel", 4}, {"chunk_size", 16}, {"tie_word_embeddings", false}, {"n_routed_experts", 8},
         {"num_experts_per_tok", 2}, {"moe_intermediate_size", 16}, {"moe_shared_expert_intermediate_size", 16},
         {"n_group", 1}, {"topk_group", 1}, {"norm_topk_prob", true}, {"routed_scaling_factor", 2.5},
         {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny MoE config");
}

Batch random_batch(at::Generator& gen, int64_t sequences = 4) {
  at::Tensor w = at::randint(0, 64, {sequences, 33}, gen, at::kLong);
  return {w.narrow(1, 0, 32).contiguous(), w.narrow(1, 1, 32).contiguous()};
}

// A badly started router: experts 0 and 1 get a correction bias above any sigmoid score gap of the fresh router
// (its scores lie within a few hundredths of 0.5), so every token picks them (max load / mean load = 8 / 2 = 4).
void skew(NemotronH& m) {
  at::NoGradGuard no_grad;
  for (int64_t layer : {0, 2}) {
    at::Tensor b = m.parameters().at("backbone.layers." + std::to_string(layer) + ".mixer.gate.e_score_correction_bias");
    b.zero_();
    b[0] = 0.3;
    b[1] = 0.3;
  }
}

double max_over_mean(NemotronH& m, const Batch& b) {
  at::NoGradGuard no_grad;
  RouterLoad load(m.config());
  ForwardOptions fo;
  fo.observer = &load;
  m.forward(b.input_ids, fo);
  json s = load.summary(load.packed());
  double worst = 0;
  for (auto& [layer, v] : s.items()) worst = std::max(worst, v["max_over_mean"].get<double>());
  return worst;
}

}  // namespace

TEST_CASE("router bias update: one step moves each bias by rate * sign(mean load - load)", "[distill][moe]") {
  const ModelConfig c = moe_config();
  NemotronH student = NemotronH::random_init(c, 3, at::kCPU, at::kFloat);
  student.set_requires_grad(true);
  at::Generator gen = at::detail::createCPUGenerator(5);
  std::vector<Batch> micro = {random_batch(gen), random_batch(gen)};
  // The loads, counted by the validation's observer on the same weights and tokens.
  RouterLoad independent(c);
  {
    at::NoGradGuard no_grad;
    ForwardOptions fo;
    fo.observer = &independent;
    for (auto& b : micro) student.forward(b.input_ids, fo);
  }
  at::Tensor loads = independent.packed();  // [2 MoE layers, 8]
  std::map<int64_t, at::Tensor> before;
  for (int64_t layer : {0, 2})
    before[layer] = student.parameters().at("backbone.layers." + std::to_string(layer) + ".mixer.gate.e_score_correction_bias").clone();

  const double rate = 1e-3;
  RouterBiasUpdate update(c, rate);
  AdamW opt(student.parameters(), AdamWOptions{});
  GradientSync sync(nullptr, opt.params(), 1 << 12);
  LossOptions o;
  o.observer = &update;
  StepResult r = train_step(student, nullptr, opt, sync, nullptr, micro, 1e-3, 1.0, o);
  REQUIRE(r.applied);
  CHECK((update.load(0).cpu() - loads[0]).abs().max().item<double>() == 0);  // the step's forward, counted alike
  CHECK((update.load(2).cpu() - loads[1]).abs().max().item<double>() == 0);
  CHECK(loads.sum().item<double>() == 2 * 2 * (4 * 32) * 2);  // 2 layers x 2 micro-batches x 128 tokens x top-2
  json j = update.apply(student, nullptr);
  int row = 0;
  for (int64_t layer : {0, 2}) {
    at::Tensor load = loads[row++];
    at::Tensor want = before[layer].to(at::kDouble) + rate * at::sign(load.mean() - load);
    at::Tensor got = student.parameters().at("backbone.layers." + std::to_string(layer) + ".mixer.gate.e_score_correction_bias");
    CHECK((got.to(at::kDouble) - want).abs().max().item<double>() < 1e-9);
    CHECK_FALSE(got.requires_grad());
  }
  CHECK(j["max_over_mean"].get<double>() == Approx((std::get<0>(loads.max(1)) / loads.mean(1)).max().item<double>()));
  CHECK_FALSE(update.load(0).defined());  // cleared for the next step

  // With activation checkpointing the forward is observed once, not again when backward recomputes the layers.
  NemotronH again = NemotronH::random_init(c, 3, at::kCPU, at::kFloat);
  again.set_requires_grad(true);
  RouterBiasUpdate counted(c, rate);
  AdamW opt2(again.parameters(), AdamWOptions{});
  GradientSync sync2(nullptr, opt2.params(), 1 << 12);
  LossOptions oc;
  oc.observer = &counted;
  oc.checkpoint_layers = 1;
  REQUIRE(train_step(again, nullptr, opt2, sync2, nullptr, micro, 1e-3, 1.0, oc).applied);
  CHECK((counted.load(0).cpu() - loads[0]).abs().max().item<double>() == 0);
  CHECK((counted.load(2).cpu() - loads[1]).abs().max().item<double>() == 0);
}

TEST_CASE("router bias update: a skewed router's loads become even", "[distill][moe]") {
  const ModelConfig c = moe_config();
  at::Generator held_out_gen = at::detail::createCPUGenerator(99);
  const Batch held_out = random_batch(held_out_gen, 32);  // 1024 tokens: 256 assignments per expert when even
  auto run = [&](bool balance) {
    NemotronH m = NemotronH::random_init(c, 7, at::kCPU, at::kFloat);
    skew(m);
    const double start = max_over_mean(m, held_out);
    RouterBiasUpdate update(c, 2e-3);
    at::Generator gen = at::detail::createCPUGenerator(11);
    for (int step = 0; step < 300; ++step) {
      Batch b = random_batch(gen, 2);
      at::NoGradGuard no_grad;
      ForwardOptions fo;
      fo.observer = &update;
      m.forward(b.input_ids, fo);
      if (balance) update.apply(m, nullptr);
      else update.clear();
    }
    return std::make_pair(start, max_over_mean(m, held_out));
  };
  auto [start, balanced] = run(true);
  auto [start_again, unbalanced] = run(false);
  WARN("max load / mean load: " << start << " at the start, " << balanced << " after 300 updates at rate 2e-3, "
                                << unbalanced << " without them");
  CHECK(start == Approx(4.0));  // every token on experts 0 and 1
  CHECK(unbalanced == Approx(4.0));
  CHECK(balanced < 1.3);  // a perfectly even router measures about 1.1-1.2 here (sampling noise of 256 per expert)
}

TEST_CASE("router bias update: refused without MoE layers or with a rate <= 0", "[distill][moe]") {
  const ModelConfig c = moe_config();
  CHECK_THROWS_AS(RouterBiasUpdate(c, 0.0), Error);
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 64}, {"hidden_size", 32}, {"intermediate_size", 48},
         {"hybrid_override_pattern", "M-"}, {"mamba_num_heads", 4}, {"mamba_head_dim", 8}, {"n_groups", 2},
         {"ssm_state_size", 8}, {"conv_kernel", 4}, {"chunk_size", 16}};
  const ModelConfig dense = ModelConfig::from_json(j, "dense");
  CHECK_THROWS_AS(RouterBiasUpdate(dense, 1e-3), Error);
}
