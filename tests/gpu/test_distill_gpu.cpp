// GPU host only (label "gpu", excluded from CPU CI): activation checkpointing of the student on CUDA in bf16, as
// `minipuzzle distill --device cuda --activation-checkpointing` runs it: the CUDA Mamba kernels (causal conv1d, SSD
// scan, gated norm, each with its own autograd) are recomputed in backward, and the loss is the fused linear_kd.
// Against the plain step: the loss, every gradient, and the CUDA memory kept for backward and the peak.
//
// Tolerance: the plain step is run twice first; if the kernels' backward is not bit-reproducible (atomics), the
// checkpointed gradients may differ from the plain ones by as much as two plain runs differ from each other. The
// bound is a relative L2 difference per tensor of 1e-2 (bf16 has 8 bits of mantissa) or twice the plain-vs-plain
// difference, whichever is larger; whether the results were bit for bit equal is printed.
#include <ATen/ATen.h>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "catch.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/kernels.h"

using namespace mp;
using namespace mp::distill;

namespace {

ModelConfig gpu_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 1024}, {"hidden_size", hidden},
         {"intermediate_size", 2 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", hidden / 32},
         {"mamba_head_dim", 64}, {"n_groups", 2}, {"ssm_state_size", 64}, {"conv_kernel", 4},
         {"chunk_size", 64}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "bfloat16"}};
  return ModelConfig::from_json(j, "GPU test config");
}

int64_t cuda_allocated() {
#ifdef MINIPUZZLE_WITH_CUDA
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).allocated_bytes[0].current;
#else
  return 0;
#endif
}
int64_t cuda_peak() {
#ifdef MINIPUZZLE_WITH_CUDA
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).allocated_bytes[0].peak;
#else
  return 0;
#endif
}
void cuda_reset_peak() {
#ifdef MINIPUZZLE_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
#endif
}

struct Run {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  int64_t kept_bytes = 0, peak_bytes = 0;
};

}  // namespace

TEST_CASE("activation checkpointing on CUDA bf16: same loss and gradients as the plain step, less memory",
          "[gpu][distill]") {
  REQUIRE(at::hasCUDA());
  const c10::Device cuda(c10::kCUDA, 0);
  (void)at::empty({1}, at::TensorOptions().device(cuda));  // the caching allocator knows the device from here on
  const ModelConfig sc = gpu_config(256, "M*-M-M*-"), tc = gpu_config(384, "M*M-M-");
  INFO("SSD scan CUDA kernel used: " << kernels::ssd_scan_cuda_supported(sc.mamba_num_heads, 64, 2, 64));
  NemotronH student = NemotronH::random_init(sc, 21, cuda, at::kBFloat16);
  student.set_requires_grad(true);
  ModelTeacher teacher(NemotronH::random_init(tc, 22, cuda, at::kBFloat16));
  at::Generator gen = at::detail::createCPUGenerator(23);
  Batch batch;
  at::Tensor w = at::randint(0, sc.vocab_size, {4, 513}, gen, at::kLong);
  batch.input_ids = w.narrow(1, 0, 512).contiguous();
  batch.labels = w.narrow(1, 1, 512).contiguous();

  auto run = [&](int64_t checkpoint_layers) {
    for (auto& [_, p] : student.parameters()) p.mutable_grad() = at::Tensor();
    LossOptions o;
    o.alpha = 0.5;
    o.checkpoint_layers = checkpoint_layers;  // fused_lm_head: linear_kd
    Run r;
    const int64_t before = cuda_allocated();
    cuda_reset_peak();
    {
      at::Tensor loss = micro_batch_loss(student, &teacher, batch, o);
      r.kept_bytes = cuda_allocated() - before;
      r.loss = loss.item<double>();
      loss.backward();
    }
    r.peak_bytes = cuda_peak() - before;
    for (auto& [name, p] : student.parameters()) {
      INFO(name << " has no gradient");
      REQUIRE(p.grad().defined());
      r.grads[name] = p.grad().to(at::kFloat).clone();
    }
    return r;
  };
  auto rel = [](const at::Tensor& a, const at::Tensor& b) {
    const double n = b.norm().item<double>();
    return n > 0 ? (a - b).norm().item<double>() / n : (a - b).norm().item<double>();
  };

  const Run plain = run(0), plain2 = run(0), ckpt = run(1);
  double noise = 0, worst = 0;
  bool bitwise = ckpt.loss == plain.loss;
  for (auto& [name, g] : plain.grads) {
    noise = std::max(noise, rel(plain2.grads.at(name), g));
    worst = std::max(worst, rel(ckpt.grads.at(name), g));
    bitwise = bitwise && at::equal(ckpt.grads.at(name), g);
  }
  std::printf("checkpointed vs plain: loss %.9g vs %.9g; max relative L2 gradient difference %.3g (plain vs plain "
              "%.3g); bit for bit: %s\n",
              ckpt.loss, plain.loss, worst, noise, bitwise ? "yes" : "no");
  std::printf("CUDA memory kept for backward: plain %.1f MiB, checkpointed %.1f MiB; peak above the start: plain "
              "%.1f MiB, checkpointed %.1f MiB\n",
              plain.kept_bytes / 1048576.0, ckpt.kept_bytes / 1048576.0, plain.peak_bytes / 1048576.0,
              ckpt.peak_bytes / 1048576.0);
  CHECK(std::abs(ckpt.loss - plain.loss) <= 1e-3 * std::abs(plain.loss));
  for (auto& [name, g] : plain.grads) {
    INFO(name);
    CHECK(rel(ckpt.grads.at(name), g) <= std::max(1e-2, 2 * noise));
  }
  CHECK(ckpt.kept_bytes < plain.kept_bytes / 2);
  CHECK(ckpt.peak_bytes < plain.peak_bytes);
}
