// The two normalisations of Nemotron-H, with transformers' dtype flow (statistics in float32; float64 models: float64).
#include "src/model/layers.h"

namespace mp::model {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::ScalarType stat = statistics_type(x.scalar_type());
  at::Tensor h = x.to(stat);
  at::Tensor inv = at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (weight.to(stat) * (h * inv)).to(x.scalar_type());
}

at::Tensor gated_rms_norm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t n_groups,
                          double eps, const at::Tensor& channel_mask) {
  const at::ScalarType stat = statistics_type(y.scalar_type());
  at::Tensor h = y.to(stat) * at::silu(z.to(stat));
  auto sizes = h.sizes().vec();
  const int64_t channels = sizes.back();
  const int64_t group_size = channels / n_groups;
  std::vector<int64_t> grouped(sizes.begin(), sizes.end() - 1);
  grouped.push_back(n_groups);
  grouped.push_back(group_size);
  at::Tensor g = h.view(grouped);
  at::Tensor variance;
  if (channel_mask.defined()) {
    // Removing channels shrinks each group; the statistic is the mean over the channels that remain.
    at::Tensor m = channel_mask.to(stat).view({n_groups, group_size});
    g = g * m;
    variance = g.pow(2).sum(-1, true) / m.sum(-1, true).clamp_min(1.0);
  } else {
    variance = g.pow(2).mean(-1, true);
  }
  g = g * at::rsqrt(variance + eps);
  return weight * g.view(sizes).to(y.scalar_type());
}

}  // namespace mp::model
