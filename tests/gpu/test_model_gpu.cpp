// GPU host only (label "gpu", excluded from CPU CI): the C++ model on CUDA against transformers on CUDA.
// MINIPUZZLE_GPU_REFERENCE names the directory tests/reference/make_gpu_reference.py wrote.
//
// Tolerance: bf16 cannot match float32 exactly, so the bound is relative to what transformers itself loses in
// bf16: our max |logit error| against transformers' float32 logits must be at most 1.5x transformers' own
// bf16 error (+0.02). In float32 on CUDA the two implementations must agree within 2e-3.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdlib>

#include "catch.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"

using namespace mp;

TEST_CASE("CUDA bf16 and fp32 logits against transformers at 300 and 4096 tokens", "[gpu][model]") {
  REQUIRE(at::hasCUDA());
  const char* dir = std::getenv("MINIPUZZLE_GPU_REFERENCE");
  REQUIRE(dir != nullptr);
  auto ck = Checkpoint::open(dir);
  auto ref = SafetensorsFile::open(std::string(dir) + "/gpu_reference.safetensors");
  c10::AutoGradMode no_grad(false);
  auto bf16 = NemotronH::load(ck, at::kCUDA, at::kBFloat16);
  auto fp32 = NemotronH::load(ck, at::kCUDA, at::kFloat);
  for (int L : {300, 4096}) {
    at::Tensor ids = ref->tensor("input_ids_" + std::to_string(L)).to(at::kCUDA);
    at::Tensor want = ref->tensor("logits_fp32_" + std::to_string(L)).to(at::kCUDA);
    at::Tensor hf_bf16 = ref->tensor("logits_bf16_" + std::to_string(L)).to(at::kCUDA);
    double hf_err = (hf_bf16 - want).abs().max().item<double>();
    double our_err = (bf16.forward(ids) - want).abs().max().item<double>();
    double fp32_err = (fp32.forward(ids) - want).abs().max().item<double>();
    std::printf("{\"test\":\"model_gpu\",\"seq_len\":%d,\"transformers_bf16_err\":%.4g,\"ours_bf16_err\":%.4g,"
                "\"ours_fp32_err\":%.4g}\n", L, hf_err, our_err, fp32_err);
    CHECK(our_err <= 1.5 * hf_err + 0.02);
    CHECK(fp32_err <= 2e-3);
  }
}
