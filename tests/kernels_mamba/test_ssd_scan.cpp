// CPU tests of ssd_scan (include/minipuzzle/kernels.h): the ATen twin with the hand-written backward that the CUDA
// kernel implements, against the model's chunked scan, a step-by-step recurrence and autograd; shape checks.
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

TEST_CASE("ssd_scan on CPU equals the model's chunked scan, the step-by-step recurrence, and autograd") {
  const std::vector<mp::test::SsdCase> cases = {
      {2, 37, 4, 8, 2, 6, 8},   // padding to whole chunks, several chunks, two heads per group
      {1, 32, 2, 4, 1, 4, 16},  // whole chunks, one group
      {1, 5, 2, 4, 2, 3, 16},   // one partial chunk, one head per group
  };
  for (const auto& c : cases) {
    INFO("batch " << c.batch << " T " << c.T << " H " << c.H << " P " << c.P << " G " << c.G << " N " << c.N
                  << " chunk " << c.chunk);
    const auto in = mp::test::make_ssd_inputs(c, 7 + c.T);
    const std::vector<at::Tensor> inputs = {in.x, in.dt, in.A, in.Bm, in.Cm, in.D};
    const at::Tensor weights = at::randn({c.batch, c.T, c.H, c.P});

    const Grads ours = run_with_grads(inputs, weights, [&](const std::vector<at::Tensor>& v) {
      return k::ssd_scan(v[0], v[1], v[2], v[3], v[4], v[5], c.chunk);
    });
    const Grads model = run_with_grads(inputs, weights, [&](const std::vector<at::Tensor>& v) {
      return mp::model::ssd_chunk_scan(v[0], v[1], v[2], v[3], v[4], v[5], c.chunk);
    });
    CHECK(ours.out.scalar_type() == at::kFloat);
    CHECK(scaled_max_error(ours.out, model.out) < 1e-5);
    CHECK(scaled_max_error(ours.out, mp::test::ssd_sequential_reference(in)) < 1e-4);
    const char* names[] = {"dx", "ddt", "dA", "dB", "dC", "dD"};
    for (size_t i = 0; i < 6; ++i) {
      INFO(names[i]);
      REQUIRE(ours.grads[i].defined());
      CHECK(ours.grads[i].sizes() == model.grads[i].sizes());
      CHECK(scaled_max_error(ours.grads[i], model.grads[i]) < 2e-5);
    }
  }
}

TEST_CASE("ssd_scan rejects inconsistent shapes with a message") {
  const auto in = mp::test::make_ssd_inputs({1, 8, 4, 2, 2, 3, 4}, 1);
  CHECK_THROWS_WITH(k::ssd_scan(in.x, in.dt.narrow(2, 0, 3), in.A, in.Bm, in.Cm, in.D, 4), MP_CONTAINS("dt must be"));
  CHECK_THROWS_WITH(k::ssd_scan(in.x, in.dt, in.A, in.Bm.narrow(2, 0, 1), in.Cm, in.D, 4), MP_CONTAINS("B and C"));
  CHECK_THROWS_WITH(k::ssd_scan(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 0), MP_CONTAINS("chunk must be positive"));
}
