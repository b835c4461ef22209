// Shared by the Mamba-2 kernel tests (CPU and GPU): seeded inputs of a small Mamba-2 layer, independent
// references, and error measures.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

namespace mp::test {

struct SsdCase {
  int64_t batch, T, H, P, G, N, chunk;
};

struct SsdInputsCpu {
  at::Tensor x, dt, A, Bm, Cm, D;  // float32 on CPU
};

// Values in the ranges the model produces: dt after softplus (0.001..~0.2), A = -exp(A_log) in [-16, -1].
inline SsdInputsCpu make_ssd_inputs(const SsdCase& c, uint64_t seed) {
  at::manual_seed(seed);
  SsdInputsCpu in;
  in.x = at::randn({c.batch, c.T, c.H, c.P});
  in.dt = at::softplus(at::randn({c.batch, c.T, c.H}) - 2.0).clamp_min(1e-3);
  in.A = -at::exp(at::rand({c.H}) * std::log(16.0));
  in.Bm = at::randn({c.batch, c.T, c.G, c.N}) * 0.5;
  in.Cm = at::randn({c.batch, c.T, c.G, c.N}) * 0.5;
  in.D = at::randn({c.H});
  return in;
}

// The recurrence itself, step by step in float64 (no chunks): h_t = exp(A dt_t) h_{t-1} + dt_t x_t B_t^T,
// y_t = h_t C_t + D x_t. An independent reference for both chunked formulations.
inline at::Tensor ssd_sequential_reference(const SsdInputsCpu& in) {
  const int64_t batch = in.x.size(0), T = in.x.size(1), H = in.x.size(2), P = in.x.size(3);
  const int64_t G = in.Bm.size(2), N = in.Bm.size(3), hpg = H / G;
  const at::Tensor x = in.x.to(at::kDouble), dt = in.dt.to(at::kDouble), A = in.A.to(at::kDouble);
  const at::Tensor Bh = in.Bm.to(at::kDouble).repeat_interleave(hpg, 2);  // [B,T,H,N]
  const at::Tensor Ch = in.Cm.to(at::kDouble).repeat_interleave(hpg, 2);
  at::Tensor h = at::zeros({batch, H, P, N}, x.options());
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor dtt = dt.select(1, t);  // [B,H]
    h = at::exp(A.view({1, H}) * dtt).view({batch, H, 1, 1}) * h +
        (dtt.unsqueeze(-1) * x.select(1, t)).unsqueeze(-1) * Bh.select(1, t).unsqueeze(2);
    ys.push_back((h * Ch.select(1, t).unsqueeze(2)).sum(-1));  // [B,H,P]
  }
  return at::stack(ys, 1) + in.D.to(at::kDouble).view({1, 1, H, 1}) * x;
}

// max |a - b| / max(|b|_max, floor): the error relative to the tensor's scale.
inline double scaled_max_error(const at::Tensor& a, const at::Tensor& b, double floor = 1e-6) {
  const at::Tensor ad = a.to(at::kDouble).cpu(), bd = b.to(at::kDouble).cpu();
  const double scale = std::max(bd.abs().max().item<double>(), floor);
  return (ad - bd).abs().max().item<double>() / scale;
}

// ||a - b||_2 / ||b||_2.
inline double relative_l2_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.to(at::kDouble).cpu(), bd = b.to(at::kDouble).cpu();
  return (ad - bd).norm().item<double>() / std::max(bd.norm().item<double>(), 1e-30);
}

// The output and input gradients of one differentiable call (run_with_grads).
struct Grads {
  at::Tensor out;
  std::vector<at::Tensor> grads;
};

// Runs f on fresh leaf copies of `inputs`, backpropagates sum(out * weights), returns out and the input grads.
template <class F>
inline Grads run_with_grads(const std::vector<at::Tensor>& inputs, const at::Tensor& weights, F f) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  Grads g;
  g.out = f(leaves);
  (g.out.to(at::kFloat) * weights).sum().backward();
  for (auto& l : leaves) g.grads.push_back(l.grad());
  return g;
}

}  // namespace mp::test
