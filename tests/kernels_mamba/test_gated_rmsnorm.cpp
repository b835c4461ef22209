// CPU tests of gated_rms_norm (include/minipuzzle/kernels.h): the ATen twin with the hand-written backward that the
// CUDA kernel implements, against the model's gated norm and autograd through it, with and without channel masks.
#include <ATen/ATen.h>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"
#include "tests/catch.h"
#include "tests/kernels_mamba/mamba_reference.h"

namespace k = mp::kernels;
using mp::test::Grads;
using mp::test::run_with_grads;
using mp::test::scaled_max_error;

TEST_CASE("gated_rms_norm on CPU equals the model's gated norm and autograd through it") {
  at::manual_seed(5);
  const int64_t B = 2, T = 5, C = 12, G = 3;
  const at::Tensor y = at::randn({B, T, C}), w = at::randn({C});
  const at::Tensor zwide = at::randn({B, T, C + 4});
  const at::Tensor z = zwide.narrow(2, 4, C).to(at::kBFloat16).to(at::kFloat);
  at::Tensor mask = at::ones({C});
  mask[1] = 0, mask[2] = 0, mask[7] = 0;
  at::Tensor group_off = at::ones({C});
  group_off.narrow(0, 4, 4).zero_();  // a whole group removed: its mean runs over max(kept, 1)
  for (const at::Tensor& m : {at::Tensor(), mask, group_off}) {
    INFO("mask " << (m.defined() ? m.sum().item<double>() : -1.0));
    const at::Tensor weights = at::randn({B, T, C});
    const Grads ours = run_with_grads({y, z, w}, weights, [&](const std::vector<at::Tensor>& v) {
      return k::gated_rms_norm(v[0], v[1], v[2], G, 1e-5, m);
    });
    const Grads ref = run_with_grads({y, z, w}, weights, [&](const std::vector<at::Tensor>& v) {
      return mp::model::gated_rms_norm(v[0], v[1], v[2], G, 1e-5, m);
    });
    CHECK(ours.out.scalar_type() == ref.out.scalar_type());
    CHECK(scaled_max_error(ours.out, ref.out) < 1e-6);
    for (size_t i = 0; i < 3; ++i) {
      INFO("grad " << i);
      CHECK(scaled_max_error(ours.grads[i], ref.grads[i]) < 1e-5);
    }
  }
  // bf16 output on request (what the model feeds out_proj).
  CHECK(k::gated_rms_norm(y, z, w, G, 1e-5, {}, at::kBFloat16).scalar_type() == at::kBFloat16);
  CHECK_THROWS_WITH(k::gated_rms_norm(y, z, w, 5, 1e-5), MP_CONTAINS("do not split"));
}
