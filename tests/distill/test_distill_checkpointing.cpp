// Activation checkpointing of the student (LossOptions::checkpoint_layers, `distill --activation-checkpointing`)
// on tiny random Nemotron-H models on CPU, against the same step without it:
//   - the micro-batch loss and every parameter's gradient are the same (bit for bit on CPU in fp32: the
//     recomputation runs the same ops on the same inputs), for 1, 2 and 8 layers per segment, KD and from scratch;
//   - the memory autograd keeps between forward and backward is less than half, and the peak over forward +
//     backward is lower, measured by a counting CPU allocator (every byte ATen allocates on the CPU goes through it);
//   - a run of train_step (AdamW, clipping, gradient accumulation, bucketed gradient hooks) gives the same loss
//     sequence and weights;
//   - under CPU bf16 autocast, with backward outside the autocast region and inside it, the recomputation runs in
//     bf16 again (the forward's autocast state is restored; without that the gradients differ by ~1e-3) and every
//     weight gets its gradient, bit for bit as without checkpointing.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "minipuzzle/distill.h"
#include "tests/catch.h"
#include "tests/distill/counting_allocator.h"

using namespace mp;
using namespace mp::distill;
using mp::test::counting_allocator;
using mp::test::CountingAllocator;

namespace {

ModelConfig tiny_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 128}, {"hidden_size", hidden},
         {"intermediate_size", 4 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 2}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 16}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

// Student of 8 layers of every kind; seq 48 spans three SSD chunks.
NemotronH make_student() { return NemotronH::random_init(tiny_config(32, "M*-M-M*-"), 11, c10::kCPU, at::kFloat); }
ModelTeacher make_teacher() { return ModelTeacher(NemotronH::random_init(tiny_config(48, "M*M-"), 12, c10::kCPU, at::kFloat)); }

Batch make_batch_of(int64_t batch, int64_t seq, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Batch b;
  at::Tensor w = at::randint(0, 128, {batch, seq + 1}, gen, at::kLong);
  b.input_ids = w.narrow(1, 0, seq).contiguous();
  b.labels = w.narrow(1, 1, seq).contiguous();
  return b;
}

struct Measured {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  int64_t kept_bytes = 0;  // allocated by the forward and still alive when backward starts
  int64_t peak_bytes = 0;  // peak over forward + backward, above what was alive before
};

Measured measure(NemotronH& student, Teacher* teacher, const Batch& batch, int64_t checkpoint_layers) {
  CountingAllocator& alloc = counting_allocator();
  for (auto& [_, p] : student.parameters()) p.mutable_grad() = at::Tensor();
  LossOptions o;
  o.alpha = 0.7;
  o.temperature = 1.5;
  o.checkpoint_layers = checkpoint_layers;
  Measured m;
  const int64_t before = alloc.live();
  alloc.reset_peak();
  {
    at::Tensor loss = micro_batch_loss(student, teacher, batch, o);
    m.kept_bytes = alloc.live() - before;
    m.loss = loss.item<double>();
    loss.backward();
  }
  m.peak_bytes = alloc.peak() - before;
  for (auto& [name, p] : student.parameters()) {
    REQUIRE(p.grad().defined());
    m.grads[name] = p.grad().clone();
  }
  return m;
}

void check_same(const Measured& plain, const Measured& ckpt) {
  CHECK(ckpt.loss == plain.loss);
  for (auto& [name, g] : plain.grads) {
    const at::Tensor& h = ckpt.grads.at(name);
    const double diff = (h - g).abs().max().item<double>(), scale = g.abs().max().item<double>();
    INFO(name << ": max |difference| " << diff << " for max |gradient| " << scale);
    CHECK(at::equal(h, g));
  }
}

}  // namespace

TEST_CASE("activation checkpointing: same loss and gradients, less memory kept for backward") {
  counting_allocator();
  NemotronH student = make_student();
  student.set_requires_grad(true);
  ModelTeacher teacher = make_teacher();
  const Batch batch = make_batch_of(4, 48, 5);
  for (Teacher* t : {static_cast<Teacher*>(&teacher), static_cast<Teacher*>(nullptr)}) {
    INFO((t ? "KD + CE" : "from scratch (CE)"));
    const Measured plain = measure(student, t, batch, 0);
    for (int64_t k : {1, 2, 8}) {
      INFO(k << " layer(s) per segment");
      const Measured ckpt = measure(student, t, batch, k);
      check_same(plain, ckpt);
      INFO("kept for backward: " << plain.kept_bytes << " B plain, " << ckpt.kept_bytes << " B checkpointed; peak "
                                 << plain.peak_bytes << " B plain, " << ckpt.peak_bytes << " B checkpointed");
      // Plain keeps every layer's intermediates; checkpointed keeps 8 / k layer inputs of [4, 48, 32] floats
      // (24 KiB each) beside what both keep (embedding, norm_f, logits, the loss's own).
      CHECK(ckpt.kept_bytes < plain.kept_bytes / 2);
      CHECK(ckpt.peak_bytes < plain.peak_bytes);
    }
  }
}

TEST_CASE("activation checkpointing: train_step gives the same loss sequence and weights") {
  auto run = [](int64_t checkpoint_layers) {
    NemotronH student = make_student();
    student.set_requires_grad(true);
    ModelTeacher teacher = make_teacher();
    AdamW opt(student.parameters(), {});
    GradientSync sync(nullptr, opt.params(), 1 << 12);  // several buckets: hooks fire through the recompute node
    LossOptions o;
    o.alpha = 0.5;
    o.checkpoint_layers = checkpoint_layers;
    std::vector<double> losses;
    const std::vector<Batch> micro{make_batch_of(2, 32, 100), make_batch_of(2, 32, 101)};  // fitted 5 times
    for (int step = 0; step < 5; ++step) {
      StepResult r = train_step(student, &teacher, opt, sync, nullptr, micro, 3e-3, 1.0, o);
      REQUIRE(r.applied);
      losses.push_back(r.loss);
    }
    return std::make_pair(losses, student.parameters());
  };
  auto [plain_losses, plain_params] = run(0);
  auto [ckpt_losses, ckpt_params] = run(1);
  CHECK(plain_losses.front() > plain_losses.back());  // training moved
  for (size_t i = 0; i < plain_losses.size(); ++i) {
    INFO("step " << i + 1 << ": plain " << plain_losses[i] << ", checkpointed " << ckpt_losses[i]);
    CHECK(ckpt_losses[i] == plain_losses[i]);
  }
  for (auto& [name, p] : plain_params) {
    INFO(name);
    CHECK(at::equal(ckpt_params.at(name), p));
  }
}

TEST_CASE("activation checkpointing under CPU bf16 autocast, backward outside it and inside it") {
  NemotronH student = make_student();
  student.set_requires_grad(true);
  const Batch batch = make_batch_of(2, 32, 9);
  // backward_inside: loss.backward() while autocast is still on and its cast cache still holds the forward's
  // casts (as when backward runs inside the autocast region); otherwise autocast is off and its cache cleared
  // first, as leaving the outermost autocast region does.
  auto grads_of = [&](int64_t checkpoint_layers, bool backward_inside) {
    for (auto& [_, p] : student.parameters()) p.mutable_grad() = at::Tensor();
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    LossOptions o;
    o.checkpoint_layers = checkpoint_layers;
    at::Tensor loss = micro_batch_loss(student, nullptr, batch, o);
    if (backward_inside) loss.backward();
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    if (!backward_inside) loss.backward();
    std::map<std::string, at::Tensor> g;
    for (auto& [name, p] : student.parameters()) {
      INFO(name << " has no gradient");
      REQUIRE(p.grad().defined());
      g[name] = p.grad().clone();
    }
    return std::make_pair(loss.item<double>(), g);
  };
  for (bool inside : {false, true}) {
    INFO("backward " << (inside ? "inside" : "outside") << " the autocast region");
    auto [plain_loss, plain] = grads_of(0, inside);
    auto [ckpt_loss, ckpt] = grads_of(1, inside);
    CHECK(ckpt_loss == plain_loss);
    // bf16 really ran: the fp32 forward gives a different loss.
    CHECK(micro_batch_loss(student, nullptr, batch, LossOptions{}).item<double>() != plain_loss);
    for (auto& [name, g] : plain) {
      const double diff = (ckpt.at(name) - g).abs().max().item<double>(), scale = g.abs().max().item<double>();
      INFO(name << ": max |difference| " << diff << " for max |gradient| " << scale);
      CHECK(at::equal(ckpt.at(name), g));
    }
  }
}
