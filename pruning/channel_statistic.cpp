// Streaming per-channel aggregation of activations [B,T,C]: batches add to running sums, nothing is kept.
#include <ATen/ATen.h>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"

namespace mp {

ChannelStatistic::ChannelStatistic(Reduction reduction, int64_t channels) : reduction_(reduction) {
  sum_ = at::zeros({channels}, at::kDouble);
  sum_sq_ = at::zeros({channels}, at::kDouble);
}

void ChannelStatistic::add(const at::Tensor& activations) {
  MP_CHECK(activations.dim() == 3 && activations.size(2) == sum_.size(0), "importance: activations of shape ",
           activations.sizes(), " do not match ", sum_.size(0), " channels");
  at::Tensor a = activations.detach().to(at::kFloat);
  const int64_t batch = a.size(0), T = a.size(1);
  switch (reduction_) {
    case Reduction::MeanL2: {  // per sample mean_t |a|, then sum of squares over samples (sqrt at the end)
      at::Tensor m = a.abs().mean(1).to(at::kDouble);  // [B,C]
      sum_sq_ += m.pow(2).sum(0).cpu();
      break;
    }
    case Reduction::Mean:
      sum_ += a.abs().mean(1).to(at::kDouble).sum(0).cpu();
      break;
    case Reduction::L2:
      sum_sq_ += a.to(at::kDouble).pow(2).sum(at::IntArrayRef{0, 1}).cpu();
      break;
    case Reduction::Variance: {
      at::Tensor d = a.to(at::kDouble);
      sum_ += d.sum(at::IntArrayRef{0, 1}).cpu();
      sum_sq_ += d.pow(2).sum(at::IntArrayRef{0, 1}).cpu();
      break;
    }
  }
  samples_ += batch;
  tokens_ += batch * T;
}

at::Tensor ChannelStatistic::result() const {
  switch (reduction_) {
    case Reduction::MeanL2:
    case Reduction::L2: return sum_sq_.sqrt();
    case Reduction::Mean: return samples_ ? sum_ / double(samples_) : sum_;
    case Reduction::Variance: {
      if (tokens_ == 0) return sum_;
      at::Tensor mean = sum_ / double(tokens_);
      return (sum_sq_ / double(tokens_) - mean.pow(2)).clamp_min(0.0);
    }
  }
  return sum_;
}

}  // namespace mp
