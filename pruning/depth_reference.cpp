// The depth criteria as they were computed before issue 19, kept as the reference that the chunked, prefix-reusing
// implementation (depth.cpp) is tested and benchmarked against: one full forward per skip pattern (two when the full
// model's outputs are too large to cache), full-vocabulary float32 logits and log-probabilities for both models.
// Memory: several [batch, seq, vocab] float32 tensors at once (84 GB at 4 x 4096 tokens on a 12B). Not used by
// `minipuzzle score`.
#include "pruning/depth.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"

namespace mp::importance {

namespace {
using Criteria = std::map<std::string, double>;
// Collects 1 - cos(layer input, layer output) per token, summed, for every layer.
class ReferenceInfluenceObserver : public ActivationObserver {
 public:
  explicit ReferenceInfluenceObserver(int64_t layers) : sums_(layers, 0.0) {}
  bool wants(Tap tap, int64_t) const override { return tap == Tap::LayerInput || tap == Tap::LayerOutput; }
  void observe(Tap tap, int64_t layer, const at::Tensor& v) override {
    if (tap == Tap::LayerInput) {
      input_ = v;
      return;
    }
    at::Tensor cos = at::cosine_similarity(input_.to(at::kFloat), v.to(at::kFloat), -1, 1e-8);
    sums_[layer] += (1.0 - cos).to(at::kDouble).sum().item<double>();
  }
  std::vector<double> sums_;

 private:
  at::Tensor input_;
};

constexpr int64_t kCacheLimitBytes = 1ll << 30;

class ReferenceDepthEvaluator {
 public:
  ReferenceDepthEvaluator(const NemotronH& model, const at::Tensor& calibration_ids, int64_t batch_size);
  Criteria evaluate(const std::vector<bool>& skip) const;
  std::vector<double> block_influence() const { return block_influence_; }

 private:
  struct Reference {
    at::Tensor ids, log_probs, logits, hidden;
    double ce_sum = 0;
  };
  Reference full_pass(const at::Tensor& ids, ActivationObserver* observer = nullptr) const;
  const NemotronH& model_;
  std::vector<at::Tensor> batches_;
  std::vector<Reference> cached_;  // full-model outputs per batch, kept when small enough
  std::vector<double> block_influence_;
  int64_t tokens_ = 0;
};
}  // namespace

ReferenceDepthEvaluator::ReferenceDepthEvaluator(const NemotronH& model, const at::Tensor& ids, int64_t batch_size) : model_(model) {
  const int64_t n = ids.size(0), bs = std::max<int64_t>(1, batch_size);
  for (int64_t s = 0; s < n; s += bs) batches_.push_back(ids.narrow(0, s, std::min(bs, n - s)));
  const int64_t V = model.config().vocab_size, H = model.config().hidden_size;
  const bool cache = ids.numel() * (2 * V + H) * 4 <= kCacheLimitBytes;
  ReferenceInfluenceObserver obs(model.config().num_layers());
  for (auto& b : batches_) {
    Reference r = full_pass(b.to(model.device()), &obs);  // the same pass gives block influence
    if (cache) cached_.push_back(std::move(r));
    tokens_ += b.numel();
  }
  for (double s : obs.sums_) block_influence_.push_back(s / double(tokens_));
}

ReferenceDepthEvaluator::Reference ReferenceDepthEvaluator::full_pass(const at::Tensor& ids, ActivationObserver* observer) const {
  Reference r;
  r.ids = ids;
  ForwardOptions fo;
  fo.observer = observer;
  r.hidden = model_.forward_hidden(ids, fo).to(at::kFloat);
  r.logits = at::linear(r.hidden.to(model_.dtype()), model_.lm_head_weight()).to(at::kFloat);
  r.log_probs = at::log_softmax(r.logits, -1);
  const int64_t T = ids.size(1);
  r.ce_sum = at::nll_loss(r.log_probs.narrow(1, 0, T - 1).reshape({-1, r.log_probs.size(-1)}),
                          ids.narrow(1, 1, T - 1).reshape({-1}), {}, at::Reduction::Sum)
                 .item<double>();
  return r;
}

Criteria ReferenceDepthEvaluator::evaluate(const std::vector<bool>& skip) const {
  ForwardOptions fo;
  fo.skip_layers = skip;
  double ce = 0, ce_full = 0, kl = 0, mse_h = 0, mse_z = 0;
  int64_t predicted = 0;
  for (size_t k = 0; k < batches_.size(); ++k) {
    Reference full = cached_.empty() ? full_pass(batches_[k].to(model_.device())) : cached_[k];
    at::Tensor h = model_.forward_hidden(full.ids, fo).to(at::kFloat);
    at::Tensor z = at::linear(h.to(model_.dtype()), model_.lm_head_weight()).to(at::kFloat);
    at::Tensor lp = at::log_softmax(z, -1);
    const int64_t T = full.ids.size(1);
    ce += at::nll_loss(lp.narrow(1, 0, T - 1).reshape({-1, lp.size(-1)}), full.ids.narrow(1, 1, T - 1).reshape({-1}), {},
                       at::Reduction::Sum)
              .item<double>();
    ce_full += full.ce_sum;
    kl += (full.log_probs.exp() * (full.log_probs - lp)).sum().item<double>();
    mse_h += (h - full.hidden).pow(2).mean(-1).sum().item<double>();
    mse_z += (z - full.logits).pow(2).mean(-1).sum().item<double>();
    predicted += full.ids.size(0) * (T - 1);
  }
  return {{"lm_loss_increase", (ce - ce_full) / double(predicted)},
          {"kl", kl / double(tokens_)},
          {"mse_hidden", mse_h / double(tokens_)},
          {"mse_logits", mse_z / double(tokens_)}};
}

void score_depth_reference(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                           Scores& scores, int64_t max_layers) {
  const int64_t L = model.config().num_layers();
  at::Tensor ids = calibration_ids;
  if (options.depth_samples > 0 && options.depth_samples < ids.size(0)) ids = ids.narrow(0, 0, options.depth_samples);
  ReferenceDepthEvaluator eval(model, ids, options.batch_size);
  auto influence = eval.block_influence();
  const int64_t blocks = options.block_k > 0 ? std::max<int64_t>(0, L - options.block_k + 1) : 0;
  int64_t work = (options.depth ? L : 0) + blocks;
  for (int64_t s = 0; s < options.iterative_steps; ++s) work += L - s;
  Progress progress("score: depth", work, "skips");

  if (options.depth) {
    for (int64_t i = 0; i < (max_layers >= 0 ? std::min(max_layers, L) : L); ++i) {
      std::vector<bool> skip(L, false);
      skip[i] = true;
      scores.layers[i].depth.by_criterion = eval.evaluate(skip);
      scores.layers[i].depth.by_criterion["block_influence"] = influence[i];
      progress.advance();
    }
  }
  if (blocks > 0) {
    scores.block_k = options.block_k;
    for (int64_t s = 0; s < blocks; ++s) {
      std::vector<bool> skip(L, false);
      for (int64_t i = s; i < s + options.block_k; ++i) skip[i] = true;
      BlockScore b;
      b.start = s;
      b.by_criterion = eval.evaluate(skip);
      scores.blocks.push_back(b);
      progress.advance();
    }
  }
  if (options.iterative_steps > 0) {
    // Nemotron Nano 2: remove the layer whose removal hurts least, re-score with it gone, repeat.
    MP_CHECK(options.iterative_steps < L, "score: cannot remove ", options.iterative_steps, " of ", L, " layers");
    scores.removal_criterion = options.iterative_criterion;
    std::vector<bool> removed(L, false);
    for (int64_t step = 0; step < options.iterative_steps; ++step) {
      int64_t best = -1;
      double best_value = std::numeric_limits<double>::infinity();
      for (int64_t i = 0; i < L; ++i) {
        if (removed[i]) continue;
        std::vector<bool> skip = removed;
        skip[i] = true;
        Criteria c = eval.evaluate(skip);
        MP_CHECK(c.count(options.iterative_criterion), "score: unknown depth criterion \"", options.iterative_criterion,
                 "\" (expected lm_loss_increase, kl, mse_hidden or mse_logits)");
        if (c[options.iterative_criterion] < best_value) {
          best_value = c[options.iterative_criterion];
          best = i;
        }
        progress.advance();
      }
      removed[best] = true;
      scores.removal_order.push_back(best);
      scores.removal_scores.push_back(best_value);
    }
  }
  progress.finish();
}

}  // namespace mp::importance
