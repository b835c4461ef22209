// GPU host only (label "gpu"): the routed experts' grouped GEMM kernel (src/kernels/moe_grouped_gemm.cu) against
// the per-expert ATen path (kernels::moe_grouped_linear_reference) on the same device, and the MoE layer with the
// grouped path against its per-expert loop. Both are measured against a float64 computation of the same inputs:
// the kernel's error must stay within 1.5x the per-expert path's (+ a small floor), so a wrong row, expert or
// column (an O(1) error) fails while rounding differences (bf16 output rounded after, not before, the routing
// weight) pass. Prints one JSON line per case.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdio>

#include "catch.h"
#include "minipuzzle/kernels.h"
#include "minipuzzle/model.h"

using namespace mp;

namespace {

struct Case {
  std::vector<int64_t> counts;
  int64_t k, n;
};

// Float64 on the device: every expert's rows through its weight, as the reference but without rounding.
at::Tensor exact(const at::Tensor& x, const std::vector<at::Tensor>& w, const std::vector<int64_t>& counts,
                 const at::Tensor& scale, bool relu2) {
  std::vector<at::Tensor> wd;
  for (auto& t : w) wd.push_back(t.to(at::kDouble));
  return kernels::moe_grouped_linear_reference(x.to(at::kDouble), wd, counts,
                                               scale.defined() ? scale.to(at::kDouble) : scale, relu2);
}

}  // namespace

TEST_CASE("CUDA grouped GEMM: every expert's rows, relu^2 and routing weight, against the per-expert path",
          "[gpu][kernels][moe]") {
  REQUIRE(at::hasCUDA());
  c10::AutoGradMode no_grad(false);
  at::manual_seed(5);
  std::vector<Case> cases = {
      {{3, 0, 70, 1, 0, 129, 0}, 40, 24},    // empty experts, tiles of 64 rows split, k % 8 == 0 (vector loads)
      {{5, 17, 0, 64, 65}, 37, 70},          // k % 8 != 0 (scalar loads), n not a multiple of 64
      {{0, 0, 0, 1}, 16, 8},                 // one row
  };
  // Nemotron 3 Nano's up and down projections at 2048 tokens x top-6 (uniform random routing counts).
  {
    at::Tensor assign = at::randint(0, 128, {2048 * 6}, at::kLong);
    at::Tensor cnt = at::bincount(assign, {}, 128);
    std::vector<int64_t> counts(cnt.data_ptr<int64_t>(), cnt.data_ptr<int64_t>() + 128);
    cases.push_back({counts, 2688, 1856});
    cases.push_back({counts, 1856, 2688});
  }
  for (const Case& c : cases) {
    int64_t rows = 0;
    for (int64_t v : c.counts) rows += v;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      auto opt = at::TensorOptions().device(at::kCUDA).dtype(dtype);
      const double wscale = 1.0 / std::sqrt(double(c.k));
      at::Tensor x = at::randn({rows, c.k}, opt);
      std::vector<at::Tensor> w;
      for (size_t e = 0; e < c.counts.size(); ++e) w.push_back((at::randn({c.n, c.k}, opt.dtype(at::kFloat)) * wscale).to(dtype));
      at::Tensor scale = at::rand({rows}, opt.dtype(at::kFloat));
      for (bool relu2 : {false, true}) {
        at::Tensor s = relu2 ? at::Tensor() : scale;  // up: relu^2, no scale; down: the routing weight
        at::Tensor got = kernels::moe_grouped_linear(x, w, c.counts, s, relu2);
        at::Tensor ref = kernels::moe_grouped_linear_reference(x, w, c.counts, s, relu2);
        at::Tensor want = exact(x, w, c.counts, s, relu2);
        REQUIRE(got.sizes() == want.sizes());
        REQUIRE(got.scalar_type() == dtype);
        const double mag = want.abs().max().item<double>() + 1e-30;
        const double err = (got.to(at::kDouble) - want).abs().max().item<double>() / mag;
        const double ref_err = (ref.to(at::kDouble) - want).abs().max().item<double>() / mag;
        std::printf("{\"test\":\"moe_grouped_gemm\",\"experts\":%zu,\"rows\":%lld,\"k\":%lld,\"n\":%lld,"
                    "\"dtype\":\"%s\",\"relu2\":%d,\"rel_err\":%.3g,\"per_expert_rel_err\":%.3g}\n",
                    c.counts.size(), (long long)rows, (long long)c.k, (long long)c.n,
                    dtype == at::kFloat ? "f32" : "bf16", int(relu2), err, ref_err);
        CHECK(err <= 1.5 * ref_err + (dtype == at::kFloat ? 1e-5 : 4e-3));
      }
    }
  }
}

TEST_CASE("CUDA MoE layer: the grouped path against the per-expert loop at the Nano 30B-A3B shape",
          "[gpu][model][moe]") {
  REQUIRE(at::hasCUDA());
  c10::AutoGradMode no_grad(false);
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 256}, {"hidden_size", 2688}, {"hybrid_override_pattern", "E"},
         {"n_routed_experts", 128}, {"num_experts_per_tok", 6}, {"moe_intermediate_size", 1856},
         {"moe_shared_expert_intermediate_size", 3712}, {"routed_scaling_factor", 2.5}, {"n_group", 1},
         {"topk_group", 1}};
  ModelConfig config = ModelConfig::from_json(j, "test config");
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    NemotronH model = NemotronH::random_init(config, 0, at::kCUDA, dtype);
    at::Tensor h = at::randn({2, 1024, 2688}, at::TensorOptions().dtype(dtype).device(at::kCUDA));
    kernels::KernelOptions ko;
    ko.moe = kernels::MoeKernel::loop;
    kernels::set_kernel_options(ko);
    at::Tensor loop = model.forward_layer(0, h).to(at::kDouble);
    ko.moe = kernels::MoeKernel::grouped;
    kernels::set_kernel_options(ko);
    at::Tensor grouped = model.forward_layer(0, h).to(at::kDouble);
    const double mag = loop.abs().max().item<double>();
    const double diff = (grouped - loop).abs().max().item<double>() / mag;
    std::printf("{\"test\":\"moe_layer_grouped_vs_loop\",\"dtype\":\"%s\",\"max_rel_diff\":%.3g}\n",
                dtype == at::kFloat ? "f32" : "bf16", diff);
    CHECK(diff <= (dtype == at::kFloat ? 1e-5 : 2e-2));
  }
}
