// The training memory plan (include/minipuzzle/train_memory.h) against measurements and hand-built cases:
//   - parameters, gradients, fp32 masters and AdamW moments: the plan's bytes against the sizes of the tensors a
//     trainer actually holds after a step (summed by name), for small students;
//   - activations kept for backward: the plan's per-layer-type formulas against the bytes a counting CPU allocator
//     sees alive between forward and backward, for Mamba-only, attention-only, MLP-only and mixed students, with and
//     without activation checkpointing, KD and from scratch, within 1% (they agree to the loss scalar's few bytes).
//     The Mamba ops run through the kernels' autograd functions on CPU (set_model_kernels_on_cpu), i.e. with the
//     CUDA path's autograd structure;
//   - the choice: a 9B student (Nano-9B-v2 shape) from a 12B teacher on a 141 GB GPU must put optimizer state on
//     the host; a tiny one must not; a refused plan says what would fit, in one line.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <string>

#include "minipuzzle/distill.h"
#include "minipuzzle/kernels.h"
#include "minipuzzle/train_memory.h"
#include "tests/catch.h"
#include "tests/distill/counting_allocator.h"

using namespace mp;
using namespace mp::distill;

namespace {

ModelConfig tiny_config(int64_t hidden, const std::string& pattern, int64_t kv_heads = 2) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 96}, {"hidden_size", hidden},
         {"intermediate_size", 3 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", kv_heads}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 2}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 16}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

Batch random_batch(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor w = at::randint(0, vocab, {batch, seq + 1}, gen, at::kLong);
  return {w.narrow(1, 0, seq).contiguous(), w.narrow(1, 1, seq).contiguous()};
}

double term(const TrainMemory& m, const std::string& name, bool host = false) {
  for (auto& t : m.terms)
    if (t.name == name) return host ? t.host : t.device;
  FAIL("no term " << name);
  return 0;
}

ModelConfig load_model_config(const std::string& name) {
  return load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/" + name + ".json");
}

struct KernelsOnCpu {
  KernelsOnCpu() { kernels::set_model_kernels_on_cpu(true); }
  ~KernelsOnCpu() { kernels::set_model_kernels_on_cpu(false); }
};

}  // namespace

TEST_CASE("memory plan: weights, gradients, masters and moments equal the tensors a trainer holds") {
  for (const std::string pattern : {"M*-M", "M-*-M*"}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      ModelConfig cfg = tiny_config(32, pattern);
      NemotronH student = NemotronH::random_init(cfg, 3, c10::kCPU, dtype);
      student.set_requires_grad(true);
      AdamW opt(student.parameters(), {});
      Batch b = random_batch(2, 24, cfg.vocab_size, 5);
      at::Tensor loss = micro_batch_loss(student, nullptr, b, {});
      loss.backward();
      double weights = 0, grads = 0, masters = 0, moments = 0;
      for (auto& p : opt.params()) {
        weights += double(p.nbytes());
        grads += double(p.grad().nbytes());
      }
      for (auto& [k, t] : opt.state_tensors()) (k.rfind("master/", 0) == 0 ? masters : moments) += double(t.nbytes());
      TrainSetup s;
      s.weight_bytes = dtype == at::kFloat ? 4 : 2;
      s.has_teacher = false;
      TrainMemory m = estimate_train_memory(cfg, std::nullopt, s);
      INFO(pattern << " " << dtype);
      CHECK(term(m, "student weights") == weights);
      CHECK(term(m, "gradients") == grads);
      CHECK(term(m, "fp32 master weights") == masters);
      CHECK(term(m, "AdamW moments") == moments);
      // Offloading half: the same bytes, split between device and host (fp32: the host gets its own master).
      s.offload_fraction = 0.5;
      TrainMemory h = estimate_train_memory(cfg, std::nullopt, s);
      CHECK(term(h, "AdamW moments") + term(h, "AdamW moments", true) == moments);
      CHECK(term(h, "AdamW moments", true) == moments / 2);
    }
  }
}

TEST_CASE("memory plan: activations kept for backward match a counting allocator within 5%") {
  mp::test::CountingAllocator& alloc = mp::test::counting_allocator();
  KernelsOnCpu kernels_on_cpu;
  at::set_num_threads(1);
  struct Case {
    std::string pattern;
    int64_t kv_heads;
    bool teacher;
    int64_t checkpoint_layers;
  };
  const std::vector<Case> cases{{"MMMM", 2, true, 0},  {"****", 2, true, 0},  {"****", 4, false, 0},
                                {"----", 2, true, 0},  {"M*-M-", 2, true, 0}, {"M*-M-", 2, false, 0},
                                {"M*-M-", 2, true, 1}, {"M*-M-", 2, true, 2}, {"MMMM", 2, false, 3}};
  for (const Case& c : cases) {
    for (int64_t batch : {1, 3}) {
      const int64_t seq = 40;  // three SSD chunks of 16, the last one padded
      ModelConfig cfg = tiny_config(64, c.pattern, c.kv_heads);
      NemotronH student = NemotronH::random_init(cfg, 7, c10::kCPU, at::kFloat);
      student.set_requires_grad(true);
      std::unique_ptr<ModelTeacher> teacher;
      if (c.teacher) teacher = std::make_unique<ModelTeacher>(NemotronH::random_init(tiny_config(48, "M*-"), 8, c10::kCPU, at::kFloat));
      Batch b = random_batch(batch, seq, cfg.vocab_size, 9);
      LossOptions o;
      o.alpha = 0.6;
      o.checkpoint_layers = c.checkpoint_layers;
      const int64_t before = alloc.live();
      at::Tensor loss = micro_batch_loss(student, teacher.get(), b, o);
      const double measured = double(alloc.live() - before);
      loss.backward();  // the graph must be complete: backward runs without error
      loss = at::Tensor();

      TrainSetup s;
      s.seq_len = seq;
      s.micro_batch = batch;
      s.weight_bytes = 4;
      s.fused_lm_head = false;
      s.has_teacher = c.teacher;
      s.checkpoint_layers = c.checkpoint_layers;
      const KeptActivations k = kept_activation_bytes(cfg, s);
      INFO(c.pattern << " kv " << c.kv_heads << (c.teacher ? " KD" : " CE") << " checkpoint " << c.checkpoint_layers
                     << " batch " << batch << ": measured " << measured << " B, predicted " << k.total() << " B (Mamba "
                     << k.mamba << ", attention " << k.attention << ", MLP " << k.mlp << ", segments "
                     << k.checkpoint_inputs << ", other " << k.other << ")");
      CHECK(std::abs(k.total() - measured) <= 0.01 * measured);
    }
  }
}

TEST_CASE("memory plan: 12B -> 9B on a 141 GB GPU offloads optimizer state; a tiny pair does not") {
  const ModelConfig teacher = load_model_config("nemotron-nano-12b-v2");
  const ModelConfig student = load_model_config("nemotron-nano-9b-v2");
  PlanRequest r;
  r.setup.seq_len = 8192;
  r.setup.micro_batch = 1;
  r.setup.grad_accum = 32;
  r.setup.weight_bytes = 2;
  r.device_bytes = 141e9;
  r.host_bytes = 128 * 1024.0 * 1024.0 * 1024.0;
  Plan p = make_plan(student, teacher, r);
  INFO(p.memory.table() << p.reason);
  REQUIRE(p.fits);
  CHECK(p.setup.offload_fraction > 0);
  CHECK(p.memory.device_total() <= r.device_bytes);
  CHECK(p.memory.host_total() <= r.host_bytes);
  // Resident: 9B x (2 + 2 + 4 + 8) bytes + the 12B's 24.6 GB alone exceed the GPU.
  TrainSetup resident = r.setup;
  TrainMemory all_on_gpu = estimate_train_memory(student, teacher, resident);
  CHECK(all_on_gpu.device_total() > 141e9);

  // With everything fixed, the refusal names what would fit.
  PlanRequest fixed = r;
  fixed.choose_checkpointing = fixed.choose_micro_batch = fixed.choose_offload = false;
  Plan refused = make_plan(student, teacher, fixed);
  CHECK_FALSE(refused.fits);
  INFO(refused.reason);
  CHECK(refused.reason.find("on the GPU, ") != std::string::npos);
  CHECK(refused.reason.find("--offload-optimizer") != std::string::npos);
  CHECK(refused.reason.find('\n') == std::string::npos);

  // A tiny pair fits as asked: no offload, no checkpointing.
  PlanRequest tiny = r;
  tiny.setup.seq_len = 512;
  tiny.setup.micro_batch = 4;
  tiny.setup.grad_accum = 1;
  Plan t = make_plan(tiny_config(64, "M*-M-"), tiny_config(96, "M*-M-"), tiny);
  REQUIRE(t.fits);
  CHECK(t.setup.offload_fraction == 0);
  CHECK(t.setup.checkpoint_layers == 0);
  CHECK(t.setup.micro_batch == 4);

  // Nothing fits a 20 GB GPU: the line says what even the smallest setup needs.
  PlanRequest small = r;
  small.device_bytes = 20e9;
  Plan none = make_plan(student, teacher, small);
  CHECK_FALSE(none.fits);
  CHECK(none.reason.find("even micro-batch 1") != std::string::npos);
}

TEST_CASE("memory plan: sizes parse with units, bad ones are one clear error") {
  CHECK(parse_memory_size("141GiB") == 141.0 * 1024 * 1024 * 1024);
  CHECK(parse_memory_size("141 GB") == 141e9);
  CHECK(parse_memory_size("80G") == 80.0 * 1024 * 1024 * 1024);
  CHECK(parse_memory_size("1024") == 1024.0);
  CHECK(parse_memory_size("1.5TiB") == 1.5 * 1024.0 * 1024 * 1024 * 1024);
  CHECK_THROWS_WITH(parse_memory_size("lots"), MP_CONTAINS("expected a number"));
  CHECK_THROWS_WITH(parse_memory_size("12 parsecs"), MP_CONTAINS("unknown unit"));
}
