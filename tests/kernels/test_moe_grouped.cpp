// The routed experts' grouped linear (issue 25) on CPU: kernels::moe_grouped_linear runs its ATen path there, the
// per-expert loop the GPU test compares the CUDA kernel with. Reference: a float64 brute force over every row with
// its expert found from the counts (no slicing shared with the code under test); shape checks refuse bad input.
#include <ATen/ATen.h>

#include <random>

#include "catch.h"
#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"

using namespace mp;

namespace {

// y[r, j] = epilogue(sum_c x[r, c] W_e[j, c]) with e the expert whose rows hold r.
at::Tensor brute_force(const at::Tensor& x, const std::vector<at::Tensor>& w, const std::vector<int64_t>& counts,
                       const at::Tensor& scale, bool relu2) {
  const int64_t rows = x.size(0), k = x.size(1), n = w[0].size(0);
  at::Tensor xd = x.to(at::kDouble), y = at::zeros({rows, n}, at::kDouble);
  auto X = xd.accessor<double, 2>();
  auto Y = y.accessor<double, 2>();
  for (int64_t r = 0; r < rows; ++r) {
    int64_t e = 0, end = counts[0];
    while (r >= end) end += counts[static_cast<size_t>(++e)];
    at::Tensor wd = w[static_cast<size_t>(e)].to(at::kDouble);
    auto W = wd.accessor<double, 2>();
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < k; ++c) s += X[r][c] * W[j][c];
      if (relu2) s = s > 0 ? s * s : 0;
      if (scale.defined()) s *= scale[r].item<double>();
      Y[r][j] = s;
    }
  }
  return y;
}

}  // namespace

TEST_CASE("moe_grouped_linear on CPU: every expert's rows through its weight, relu^2 and row scale", "[kernels][moe]") {
  at::manual_seed(11);
  const std::vector<int64_t> counts = {3, 0, 70, 1, 0, 5, 0};  // empty experts, one larger than a 64-row tile
  int64_t rows = 0;
  for (int64_t c : counts) rows += c;
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const int64_t k = 13, n = 9;
    at::Tensor x = at::randn({rows, k}, at::TensorOptions().dtype(dtype));
    std::vector<at::Tensor> w;
    for (size_t e = 0; e < counts.size(); ++e) w.push_back(at::randn({n, k}, at::TensorOptions().dtype(dtype)));
    at::Tensor scale = at::rand({rows}, at::kFloat) + 0.5;
    for (bool relu2 : {false, true})
      for (bool scaled : {false, true}) {
        at::Tensor s = scaled ? scale : at::Tensor();
        at::Tensor got = kernels::moe_grouped_linear(x, w, counts, s, relu2);
        CHECK(got.scalar_type() == dtype);
        CHECK(got.sizes() == at::IntArrayRef{rows, n});
        const double err = (got.to(at::kDouble) - brute_force(x, w, counts, s, relu2)).abs().max().item<double>();
        INFO("dtype " << dtype << " relu2 " << relu2 << " scaled " << scaled);
        CHECK(err < (dtype == at::kDouble ? 1e-12 : 1e-4));
        CHECK((got - kernels::moe_grouped_linear_reference(x, w, counts, s, relu2)).abs().max().item<double>() == 0);
      }
  }
  CHECK_FALSE(kernels::moe_grouped_linear_uses_cuda(at::zeros({2, 2})));
}

TEST_CASE("moe_grouped_linear refuses inputs that do not match", "[kernels][moe]") {
  at::Tensor x = at::randn({5, 4});
  std::vector<at::Tensor> w = {at::randn({3, 4}), at::randn({3, 4})};
  CHECK_THROWS_AS(kernels::moe_grouped_linear(x, w, {2, 2}, {}, false), Error);       // counts sum to 4, not 5
  CHECK_THROWS_AS(kernels::moe_grouped_linear(x, w, {5}, {}, false), Error);          // 1 count for 2 experts
  CHECK_THROWS_AS(kernels::moe_grouped_linear(x, {w[0], at::randn({3, 5})}, {2, 3}, {}, false), Error);  // k
  CHECK_THROWS_AS(kernels::moe_grouped_linear(x, w, {2, 3}, at::ones({4}), false), Error);  // scale rows
  CHECK_NOTHROW(kernels::moe_grouped_linear(x, w, {2, 3}, at::ones({5}), false));
}
