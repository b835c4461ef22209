// GPU host only (label "gpu"): the C++ MoE model on CUDA against transformers on CUDA
// (tests/reference/make_gpu_moe_reference.py; MINIPUZZLE_GPU_MOE_REFERENCE names its directory). The bound is that
// of test_model_gpu: in bf16 at most 1.5x transformers' own bf16 error (+0.02) against transformers' float32 logits;
// float32 on CUDA within 2e-3, with the routed experts through the per-expert loop and through the grouped-GEMM
// kernel (kernels::KernelOptions::moe). Also: a training step on CUDA gives every routed expert that ran a gradient.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdlib>

#include "catch.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/kernels.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"

using namespace mp;

TEST_CASE("CUDA MoE: bf16 and fp32 logits against transformers at 300 and 4096 tokens", "[gpu][model][moe]") {
  REQUIRE(at::hasCUDA());
  const char* dir = std::getenv("MINIPUZZLE_GPU_MOE_REFERENCE");
  REQUIRE(dir != nullptr);
  auto ck = Checkpoint::open(dir);
  auto ref = SafetensorsFile::open(std::string(dir) + "/gpu_reference.safetensors");
  c10::AutoGradMode no_grad(false);
  auto bf16 = NemotronH::load(ck, at::kCUDA, at::kBFloat16);
  auto fp32 = NemotronH::load(ck, at::kCUDA, at::kFloat);
  CHECK(bf16.parameters().at("backbone.layers.1.mixer.gate.e_score_correction_bias").scalar_type() == at::kFloat);
  for (int L : {300, 4096})
    for (kernels::MoeKernel moe : {kernels::MoeKernel::loop, kernels::MoeKernel::grouped}) {
    kernels::KernelOptions ko;
    ko.moe = moe;
    kernels::set_kernel_options(ko);
    at::Tensor ids = ref->tensor("input_ids_" + std::to_string(L)).to(at::kCUDA);
    at::Tensor want = ref->tensor("logits_fp32_" + std::to_string(L)).to(at::kCUDA);
    at::Tensor hf_bf16 = ref->tensor("logits_bf16_" + std::to_string(L)).to(at::kCUDA);
    double hf_err = (hf_bf16 - want).abs().max().item<double>();
    double our_err = (bf16.forward(ids) - want).abs().max().item<double>();
    double fp32_err = (fp32.forward(ids) - want).abs().max().item<double>();
    std::printf("{\"test\":\"moe_gpu\",\"moe_kernel\":\"%s\",\"seq_len\":%d,\"transformers_bf16_err\":%.4g,"
                "\"ours_bf16_err\":%.4g,\"ours_fp32_err\":%.4g}\n", kernels::moe_kernel_name(moe), L, hf_err, our_err,
                fp32_err);
    CHECK(our_err <= 1.5 * hf_err + 0.02);
    CHECK(fp32_err <= 2e-3);
  }
  kernels::set_kernel_options({});
}

TEST_CASE("CUDA MoE: backward reaches the router and the experts that ran", "[gpu][model][moe]") {
  REQUIRE(at::hasCUDA());
  const char* dir = std::getenv("MINIPUZZLE_GPU_MOE_REFERENCE");
  REQUIRE(dir != nullptr);
  auto model = NemotronH::load(Checkpoint::open(dir), at::kCUDA, at::kBFloat16);
  model.set_requires_grad(true);
  at::Tensor ids = at::randint(0, model.config().vocab_size, {2, 256}, at::kLong).to(at::kCUDA);
  model.forward(ids).logsumexp(-1).mean().backward();
  CHECK(model.parameters().at("backbone.layers.1.mixer.gate.weight").grad().defined());
  CHECK(model.parameters().at("backbone.layers.1.mixer.shared_experts.up_proj.weight").grad().defined());
  int with_grad = 0;
  for (int e = 0; e < 32; ++e)
    with_grad += model.parameters().at("backbone.layers.1.mixer.experts." + std::to_string(e) + ".up_proj.weight")
                     .grad()
                     .defined();
  CHECK(with_grad > 16);  // 512 tokens x top-4 over 32 experts: nearly all run
  CHECK_FALSE(model.parameters().at("backbone.layers.1.mixer.gate.e_score_correction_bias").requires_grad());
}
