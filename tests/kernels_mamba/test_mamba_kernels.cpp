// CPU tests of the Mamba-2 kernels' bindings (include/minipuzzle/kernels.h). On CPU they run the ATen twins with
// the hand-written backward that the CUDA kernels implement, so these tests check:
//   - forward: equal to the model's own functions (src/model) and to independent brute-force references,
//   - backward: equal to autograd through the model's functions (which validates the derivations).
#include <ATen/ATen.h>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"
#include "tests/catch.h"
#include "tests/kernels_mamba/mamba_reference.h"

namespace k = mp::kernels;
using mp::test::scaled_max_error;

namespace {

struct Grads {
  at::Tensor out;
  std::vector<at::Tensor> grads;
};

// Runs f on fresh leaf copies of `inputs`, backpropagates sum(out * weights), returns out and the input grads.
template <class F>
Grads run_with_grads(const std::vector<at::Tensor>& inputs, const at::Tensor& weights, F f) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  Grads g;
  g.out = f(leaves);
  (g.out.to(at::kFloat) * weights).sum().backward();
  for (auto& l : leaves) g.grads.push_back(l.grad());
  return g;
}

}  // namespace

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
