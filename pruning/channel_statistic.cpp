// Streaming per-channel aggregation of activations [B,T,C]: batches add to running sums, nothing is kept.
// The running sums live on the activations' device and are read back once, by result(): a batch costs one or
// two reductions over the activations and a few operations on [B,C] sums, and no host synchronisation.
#include <ATen/ATen.h>

#include <vector>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"

namespace mp {

namespace {

// The reductions every statistic is made of. On CUDA each reads the batch once: the norm and sum kernels take
// bf16/fp16 in and accumulate in float without a widened copy. ATen's CPU norm kernel is about 10x slower than
// |a| then a sum when reducing over a dimension that is not the innermost, so the CPU takes the latter, and
// sums in double over tokens (the reference tests compare variances, E[a^2] - E[a]^2, at 1e-5).
const std::vector<int64_t> kTokens{0, 1};

// float, or double for float64 activations.
at::ScalarType float_type(const at::Tensor& a) { return a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// sum_t |a| per sample and channel: [B,T,C] -> [B,C] float64 (summed in float, as the reference's means).
at::Tensor abs_sum_over_sequence(const at::Tensor& a) {
  if (a.is_cuda()) return at::linalg_vector_norm(a, 1, std::vector<int64_t>{1}, false, float_type(a)).to(at::kDouble);
  return a.abs().sum(1, false, float_type(a)).to(at::kDouble);
}

// Sums of a and of a^2 over every token: [B,T,C] -> [C] float64.
at::Tensor sum_over_tokens(const at::Tensor& a) {
  return at::sum(a, kTokens, false, a.is_cuda() ? float_type(a) : at::kDouble).to(at::kDouble);
}
at::Tensor square_sum_over_tokens(const at::Tensor& a) {
  if (a.is_cuda()) return at::linalg_vector_norm(a, 2, kTokens, false, float_type(a)).to(at::kDouble).square_();
  return at::square(a.to(at::kDouble)).sum(kTokens);
}

}  // namespace

ChannelStatistic::ChannelStatistic(Reduction reduction, int64_t channels) : reduction_(reduction) {
  sum_ = at::zeros({channels}, at::kDouble);
  sum_sq_ = at::zeros({channels}, at::kDouble);
}

void ChannelStatistic::add(const at::Tensor& activations) {
  MP_CHECK(activations.dim() == 3 && activations.size(2) == sum_.size(0), "importance: activations of shape ",
           activations.sizes(), " do not match ", sum_.size(0), " channels");
  const at::Tensor a = activations.detach();
  if (sum_.device() != a.device()) {  // the first batch decides where the sums live
    sum_ = sum_.to(a.device());
    sum_sq_ = sum_sq_.to(a.device());
  }
  const int64_t batch = a.size(0), T = a.size(1);
  switch (reduction_) {
    case Reduction::MeanL2:  // per sample mean_t |a|, then sum of squares over samples (sqrt at the end)
      sum_sq_.add_(abs_sum_over_sequence(a).square_().sum(0), 1.0 / (double(T) * double(T)));
      break;
    case Reduction::Mean: sum_.add_(abs_sum_over_sequence(a).sum(0), 1.0 / double(T)); break;
    case Reduction::L2: sum_sq_.add_(square_sum_over_tokens(a)); break;
    case Reduction::Variance:
      sum_.add_(sum_over_tokens(a));
      sum_sq_.add_(square_sum_over_tokens(a));
      break;
  }
  samples_ += batch;
  tokens_ += batch * T;
}

at::Tensor ChannelStatistic::result() const {
  at::Tensor r = sum_;
  switch (reduction_) {
    case Reduction::MeanL2:
    case Reduction::L2: r = sum_sq_.sqrt(); break;
    case Reduction::Mean: r = samples_ ? sum_ / double(samples_) : sum_; break;
    case Reduction::Variance:
      if (tokens_ > 0) {
        at::Tensor mean = sum_ / double(tokens_);
        r = (sum_sq_ / double(tokens_) - mean.square()).clamp_min(0.0);
      }
      break;
  }
  return r.cpu();
}

}  // namespace mp
