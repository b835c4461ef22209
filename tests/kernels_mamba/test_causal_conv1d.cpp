// CPU tests of causal_conv1d_silu (include/minipuzzle/kernels.h): the ATen twin with the hand-written backward that
// the CUDA kernel implements, against a brute-force convolution and autograd through at::conv1d.
#include <ATen/ATen.h>

#include <cmath>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "tests/catch.h"
#include "tests/kernels_mamba/mamba_reference.h"

namespace k = mp::kernels;
using mp::test::Grads;
using mp::test::run_with_grads;
using mp::test::scaled_max_error;

TEST_CASE("causal_conv1d_silu on CPU equals a brute-force convolution and autograd through at::conv1d") {
  at::manual_seed(3);
  const int64_t B = 2, T = 11, C = 6, K = 4;
  // x as a strided slice of a wider tensor, as the model passes in_proj's output.
  const at::Tensor wide = at::randn({B, T, C + 5});
  const at::Tensor x = wide.narrow(2, 2, C);
  const at::Tensor w = at::randn({C, 1, K}) * 0.5, b = at::randn({C});

  at::Tensor expected = at::empty({B, T, C}, at::kDouble);
  auto xa = x.to(at::kDouble), wa = w.to(at::kDouble), ba = b.to(at::kDouble);
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t ch = 0; ch < C; ++ch) {
        double u = ba[ch].item<double>();
        for (int64_t kk = 0; kk < K; ++kk) {
          const int64_t ts = t - (K - 1) + kk;
          if (ts >= 0) u += wa[ch][0][kk].item<double>() * xa[bi][ts][ch].item<double>();
        }
        expected[bi][t][ch] = u / (1 + std::exp(-u));
      }

  for (bool with_bias : {true, false}) {
    INFO("bias " << with_bias);
    const at::Tensor bias = with_bias ? b : at::Tensor();
    const at::Tensor weights = at::randn({B, T, C});
    auto model_conv = [&](const std::vector<at::Tensor>& v) {
      const at::Tensor bb = with_bias ? v[2] : at::Tensor();
      return at::silu(at::conv1d(v[0].transpose(1, 2), v[1], bb, 1, K - 1, 1, C).narrow(-1, 0, T)).transpose(1, 2);
    };
    const Grads ours = run_with_grads({x, w, b}, weights, [&](const std::vector<at::Tensor>& v) {
      return k::causal_conv1d_silu(v[0], v[1], with_bias ? v[2] : at::Tensor());
    });
    const Grads ref = run_with_grads({x, w, b}, weights, model_conv);
    if (with_bias) CHECK(scaled_max_error(ours.out, expected) < 1e-5);
    CHECK(scaled_max_error(ours.out, ref.out) < 1e-6);
    CHECK(scaled_max_error(ours.grads[0], ref.grads[0]) < 1e-5);
    CHECK(scaled_max_error(ours.grads[1], ref.grads[1]) < 1e-5);
    if (with_bias) CHECK(scaled_max_error(ours.grads[2], ref.grads[2]) < 1e-5);
    else CHECK(!ours.grads[2].defined());
  }
  CHECK_THROWS_WITH(k::causal_conv1d_silu(x, at::randn({C + 1, 1, K}), b), MP_CONTAINS("weight must be"));
}
