// Depth importance: per layer, per contiguous block, and iterative removal (Nemotron Nano 2), each compared
// with the full model on the same calibration tokens.
#include "pruning/depth.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"

namespace mp::importance {

namespace {
// Collects 1 - cos(layer input, layer output) per token, summed, for every layer. The sums stay on the device
// (one small tensor per layer): no host synchronisation per layer.
class InfluenceObserver : public ActivationObserver {
 public:
  explicit InfluenceObserver(int64_t layers) : sums_(layers) {}
  bool wants(Tap tap, int64_t) const override { return tap == Tap::LayerInput || tap == Tap::LayerOutput; }
  void observe(Tap tap, int64_t layer, const at::Tensor& v) override {
    if (tap == Tap::LayerInput) {
      input_ = v;
      return;
    }
    at::Tensor cos = at::cosine_similarity(input_.to(at::kFloat), v.to(at::kFloat), -1, 1e-8);
    at::Tensor s = (1.0 - cos).to(at::kDouble).sum();
    sums_[layer] = sums_[layer].defined() ? sums_[layer] + s : s;
    input_ = at::Tensor();
  }
  std::vector<double> totals() const {
    std::vector<double> out;
    for (auto& s : sums_) out.push_back(s.defined() ? s.item<double>() : 0.0);
    return out;
  }

 private:
  std::vector<at::Tensor> sums_;
  at::Tensor input_;
};

// Next-token labels of [B,T] ids, flattened: ids[b, t+1] at (b, t), -100 at each sequence's last position.
at::Tensor next_token_labels(const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  at::Tensor labels = at::full_like(ids, -100);
  labels.narrow(1, 0, T - 1).copy_(ids.narrow(1, 1, T - 1));
  return labels.reshape({-1});
}
}  // namespace

DepthEvaluator::DepthEvaluator(const NemotronH& model, const at::Tensor& ids, int64_t batch_size,
                               int64_t logits_chunk_bytes)
    : model_(model) {
  const int64_t n = ids.size(0), bs = std::max<int64_t>(1, batch_size);
  const int64_t V = model.config().vocab_size;
  chunk_tokens_ = std::max<int64_t>(1, logits_chunk_bytes / (V * int64_t(sizeof(float))));
  InfluenceObserver obs(model.config().num_layers());
  for (int64_t s = 0; s < n; s += bs) {
    at::Tensor b = ids.narrow(0, s, std::min(bs, n - s));
    references_.push_back(full_pass(b.to(model.device()), &obs));  // the same pass gives block influence
    tokens_ += b.numel();
    predicted_ += b.size(0) * (b.size(1) - 1);
  }
  for (double s : obs.totals()) block_influence_.push_back(s / double(tokens_));
}

DepthEvaluator::Reference DepthEvaluator::full_pass(const at::Tensor& ids, ActivationObserver* observer) const {
  Reference r;
  r.ids = ids;
  r.labels = next_token_labels(ids);
  ForwardOptions fo;
  fo.observer = observer;
  at::Tensor h = model_.forward_hidden(ids, fo);
  r.hidden = h.reshape({-1, h.size(-1)});
  const int64_t N = r.hidden.size(0);
  r.lse = at::empty({N}, h.options().dtype(at::kFloat));
  r.ce_sum = at::zeros({}, h.options().dtype(at::kDouble));
  for (int64_t s = 0; s < N; s += chunk_tokens_) {
    const int64_t n = std::min(chunk_tokens_, N - s);
    at::Tensor z = model_.logits(r.hidden.narrow(0, s, n));  // [n,V] float32
    at::Tensor lse = at::logsumexp(z, {1});
    r.lse.narrow(0, s, n).copy_(lse);
    at::Tensor labels = r.labels.narrow(0, s, n);
    at::Tensor picked = z.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1);
    r.ce_sum.add_(((lse - picked) * labels.ge(0)).sum(at::kDouble));
  }
  return r;
}

at::Tensor DepthEvaluator::compare(const Reference& ref, const at::Tensor& final_hidden) const {
  const at::Tensor hs = final_hidden.reshape({-1, final_hidden.size(-1)});
  const at::Tensor& hf = ref.hidden;
  const int64_t N = hs.size(0);
  at::Tensor ce = at::zeros({}, hs.options().dtype(at::kDouble)), kl = at::zeros_like(ce), mse_z = at::zeros_like(ce);
  at::Tensor mse_h = (hs.to(at::kFloat) - hf.to(at::kFloat)).pow(2).mean(-1).sum().to(at::kDouble);
  at::Tensor diff;  // one [n,V] buffer reused for z_s - z_t and then log q - log p
  for (int64_t s = 0; s < N; s += chunk_tokens_) {
    const int64_t n = std::min(chunk_tokens_, N - s);
    at::Tensor zs = model_.logits(hs.narrow(0, s, n));  // skipped model, float32 [n,V]
    at::Tensor zt = model_.logits(hf.narrow(0, s, n));  // full model, the same GEMM as in full_pass
    at::Tensor labels = ref.labels.narrow(0, s, n);
    at::Tensor lse_s = at::logsumexp(zs, {1});
    at::Tensor picked = zs.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1);
    ce.add_(((lse_s - picked) * labels.ge(0)).sum(at::kDouble));
    diff = diff.defined() && diff.size(0) == n ? at::sub_out(diff, zs, zt) : zs - zt;
    mse_z.add_(diff.square_().mean(-1).sum().to(at::kDouble));
    at::Tensor ls = zs.sub_(lse_s.unsqueeze(1));                        // log q (skipped), in place
    at::Tensor lt = zt.sub_(ref.lse.narrow(0, s, n).unsqueeze(1));      // log p (full), in place
    at::sub_out(diff, lt, ls);                                          // log p - log q
    kl.add_(diff.mul_(lt.exp_()).sum().to(at::kDouble));                // sum p (log p - log q)
  }
  return at::stack({ce, kl, mse_h, mse_z});
}

Criteria DepthEvaluator::evaluate(const std::vector<bool>& skip) const {
  ForwardOptions fo;
  fo.skip_layers = skip;
  at::Tensor sums;
  double ce_full = 0;
  for (const Reference& ref : references_) {
    at::Tensor s = compare(ref, model_.forward_hidden(ref.ids, fo));
    sums = sums.defined() ? sums + s : s;
    ce_full += ref.ce_sum.item<double>();
  }
  sums = sums.cpu();
  const double* v = sums.data_ptr<double>();
  return {{"lm_loss_increase", (v[0] - ce_full) / double(predicted_)},
          {"kl", v[1] / double(tokens_)},
          {"mse_hidden", v[2] / double(tokens_)},
          {"mse_logits", v[3] / double(tokens_)}};
}

void score_depth(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                 Scores& scores) {
  const int64_t L = model.config().num_layers();
  at::Tensor ids = calibration_ids;
  if (options.depth_samples > 0 && options.depth_samples < ids.size(0)) ids = ids.narrow(0, 0, options.depth_samples);
  DepthEvaluator eval(model, ids, options.batch_size, options.logits_chunk_bytes);
  auto influence = eval.block_influence();
  const int64_t blocks = options.block_k > 0 ? std::max<int64_t>(0, L - options.block_k + 1) : 0;
  int64_t work = (options.depth ? L : 0) + blocks;
  for (int64_t s = 0; s < options.iterative_steps; ++s) work += L - s;
  Progress progress("score: depth", work, "skips");

  if (options.depth) {
    for (int64_t i = 0; i < L; ++i) {
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
