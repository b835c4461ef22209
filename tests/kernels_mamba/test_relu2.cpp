// CPU tests of relu_squared (include/minipuzzle/kernels.h): relu(x)^2 and its gradient against autograd.
#include <ATen/ATen.h>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "tests/catch.h"
#include "tests/kernels_mamba/mamba_reference.h"

namespace k = mp::kernels;
using mp::test::Grads;
using mp::test::run_with_grads;
using mp::test::scaled_max_error;

TEST_CASE("relu_squared on CPU equals relu(x)^2 and its autograd") {
  at::manual_seed(9);
  const at::Tensor x = at::randn({3, 7});
  const at::Tensor weights = at::randn({3, 7});
  const Grads ours = run_with_grads({x}, weights, [](const std::vector<at::Tensor>& v) { return k::relu_squared(v[0]); });
  const Grads ref = run_with_grads({x}, weights, [](const std::vector<at::Tensor>& v) {
    const at::Tensor a = at::relu(v[0]);
    return a * a;
  });
  CHECK(scaled_max_error(ours.out, ref.out) < 1e-7);
  CHECK(scaled_max_error(ours.grads[0], ref.grads[0]) < 1e-7);
}
