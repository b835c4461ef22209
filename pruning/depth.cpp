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

DepthEvaluator::DepthEvaluator(const LayerRunner& runner, const at::Tensor& ids, int64_t batch_size,
                               int64_t logits_chunk_bytes)
    : runner_(runner) {
  const int64_t n = ids.size(0), bs = std::max<int64_t>(1, batch_size);
  const int64_t V = runner.config().vocab_size;
  chunk_tokens_ = std::max<int64_t>(1, logits_chunk_bytes / (V * int64_t(sizeof(float))));
  InfluenceObserver obs(runner.config().num_layers());
  for (int64_t s = 0; s < n; s += bs) {
    at::Tensor b = ids.narrow(0, s, std::min(bs, n - s));
    references_.push_back(full_pass(b.to(runner.device()), &obs));  // the same pass gives block influence
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
  const int64_t L = runner_.config().num_layers();
  at::Tensor h = runner_.embed(ids);
  for (int64_t j = 0; j < L; ++j) h = runner_.layer(j, h, fo, j + 1 < L ? j + 1 : 1);
  h = runner_.final_norm(h);
  r.hidden = h.reshape({-1, h.size(-1)});
  const int64_t N = r.hidden.size(0);
  r.lse = at::empty({N}, h.options().dtype(at::kFloat));
  at::Tensor ce = at::zeros({}, h.options().dtype(at::kDouble));
  for (int64_t s = 0; s < N; s += chunk_tokens_) {
    const int64_t n = std::min(chunk_tokens_, N - s);
    at::Tensor z = runner_.model().logits(r.hidden.narrow(0, s, n));  // [n,V] float32
    at::Tensor lse = at::logsumexp(z, {1});
    r.lse.narrow(0, s, n).copy_(lse);
    at::Tensor labels = r.labels.narrow(0, s, n);
    at::Tensor picked = z.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1);
    ce.add_(((lse - picked) * labels.ge(0)).sum(at::kDouble));
  }
  r.ce_sum = ce.item<double>();
  return r;
}

at::Tensor DepthEvaluator::compare(const Reference& ref, const at::Tensor& final_hidden) const {
  const NemotronH& model = runner_.model();
  const at::Tensor hs = final_hidden.reshape({-1, final_hidden.size(-1)});
  const at::Tensor& hf = ref.hidden;
  const int64_t N = hs.size(0);
  at::Tensor ce = at::zeros({}, hs.options().dtype(at::kDouble)), kl = at::zeros_like(ce), mse_z = at::zeros_like(ce);
  at::Tensor mse_h = (hs.to(at::kFloat) - hf.to(at::kFloat)).pow(2).mean(-1).sum().to(at::kDouble);
  at::Tensor diff;  // one [n,V] buffer reused for z_s - z_t and then log p - log q
  for (int64_t s = 0; s < N; s += chunk_tokens_) {
    const int64_t n = std::min(chunk_tokens_, N - s);
    at::Tensor zs = model.logits(hs.narrow(0, s, n));  // skipped model, float32 [n,V]
    at::Tensor zt = model.logits(hf.narrow(0, s, n));  // full model, the same GEMM as in full_pass
    at::Tensor labels = ref.labels.narrow(0, s, n);
    at::Tensor lse_s = at::logsumexp(zs, {1});
    at::Tensor picked = zs.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1);
    ce.add_(((lse_s - picked) * labels.ge(0)).sum(at::kDouble));
    diff = diff.defined() && diff.size(0) == n ? at::sub_out(diff, zs, zt) : zs - zt;
    mse_z.add_(diff.square_().mean(-1).sum().to(at::kDouble));
    at::Tensor ls = zs.sub_(lse_s.unsqueeze(1));                    // log q (skipped), in place
    at::Tensor lt = zt.sub_(ref.lse.narrow(0, s, n).unsqueeze(1));  // log p (full), in place
    at::sub_out(diff, lt, ls);                                      // log p - log q
    kl.add_(diff.mul_(lt.exp_()).sum().to(at::kDouble));            // sum p (log p - log q)
  }
  return at::stack({ce, kl, mse_h, mse_z});
}

bool DepthEvaluator::skippable(const std::vector<bool>& removed, int64_t start, int64_t span) const {
  if (start + span > runner_.config().num_layers()) return false;
  for (int64_t j = start; j < start + span; ++j)
    if (removed[j]) return false;
  return true;
}

int64_t DepthEvaluator::patterns(const std::vector<bool>& removed, const std::vector<int64_t>& spans) const {
  int64_t n = 0;
  for (int64_t k : spans)
    for (int64_t i = 0; i < runner_.config().num_layers(); ++i) n += skippable(removed, i, k);
  return n;
}

std::vector<std::map<int64_t, Criteria>> DepthEvaluator::sweep(const std::vector<bool>& removed,
                                                               const std::vector<int64_t>& spans,
                                                               Progress* progress) const {
  const int64_t L = runner_.config().num_layers();
  MP_CHECK((int64_t)removed.size() == L, "score: removal pattern of ", removed.size(), " layers for ", L);
  // sums[s][i]: [ce, kl, mse_hidden, mse_logits] summed over batches, on the device until the end.
  std::vector<std::map<int64_t, at::Tensor>> sums(spans.size());
  double ce_full = 0;
  for (const Reference& ref : references_) {
    ce_full += ref.ce_sum;
    ForwardOptions prefix_options;
    prefix_options.skip_layers = removed;
    // h: the input of layer i in the model with `removed` skipped; a branch from it skips i..i+k-1 and runs the rest.
    at::Tensor h = runner_.embed(ref.ids);
    for (int64_t i = 0; i < L; ++i) {
      for (size_t s = 0; s < spans.size(); ++s) {
        const int64_t k = spans[s];
        if (!skippable(removed, i, k)) continue;
        ForwardOptions branch;
        branch.skip_layers = removed;
        for (int64_t j = i; j < i + k; ++j) branch.skip_layers[j] = true;
        at::Tensor x = h;
        for (int64_t j = i + k; j < L; ++j) x = runner_.layer(j, x, branch, j + 1 < L ? j + 1 : i);
        at::Tensor c = compare(ref, runner_.final_norm(x));
        auto it = sums[s].find(i);
        if (it == sums[s].end())
          sums[s].emplace(i, c);
        else
          it->second.add_(c);
        if (progress) progress->advance();
      }
      if (i + 1 < L) h = runner_.layer(i, h, prefix_options, i + 2 < L ? i + 2 : -1);
    }
  }
  std::vector<std::map<int64_t, Criteria>> out(spans.size());
  for (size_t s = 0; s < spans.size(); ++s)
    for (auto& [i, t] : sums[s]) {
      at::Tensor c = t.cpu();
      const double* v = c.data_ptr<double>();
      out[s][i] = {{"lm_loss_increase", (v[0] - ce_full) / double(predicted_)},
                   {"kl", v[1] / double(tokens_)},
                   {"mse_hidden", v[2] / double(tokens_)},
                   {"mse_logits", v[3] / double(tokens_)}};
    }
  return out;
}

void score_depth(const LayerRunner& runner, const at::Tensor& calibration_ids, const ScoreOptions& options,
                 Scores& scores) {
  const int64_t L = runner.config().num_layers();
  at::Tensor ids = calibration_ids;
  if (options.depth_samples > 0 && options.depth_samples < ids.size(0)) ids = ids.narrow(0, 0, options.depth_samples);
  MP_CHECK(options.iterative_steps < L, "score: cannot remove ", options.iterative_steps, " of ", L, " layers");
  const std::vector<std::string> known{"lm_loss_increase", "kl", "mse_hidden", "mse_logits"};
  MP_CHECK(options.iterative_steps == 0 ||
               std::find(known.begin(), known.end(), options.iterative_criterion) != known.end(),
           "score: unknown depth criterion \"", options.iterative_criterion,
           "\" (expected lm_loss_increase, kl, mse_hidden or mse_logits)");
  DepthEvaluator eval(runner, ids, options.batch_size, options.logits_chunk_bytes);
  const std::vector<double> influence = eval.block_influence();
  const bool blocks = options.block_k > 0 && options.block_k <= L;
  // One sweep gives the one-layer criteria (which are also the first step of iterative removal) and the blocks.
  std::vector<int64_t> spans;
  if (options.depth || options.iterative_steps > 0) spans.push_back(1);
  if (blocks) spans.push_back(options.block_k);
  const std::vector<bool> none(L, false);
  int64_t work = eval.patterns(none, spans);
  for (int64_t s = 1; s < options.iterative_steps; ++s) work += L - s;
  Progress progress("score: depth", work, "skips");

  std::vector<std::map<int64_t, Criteria>> first = eval.sweep(none, spans, &progress);
  if (options.depth) {
    for (int64_t i = 0; i < L; ++i) {
      scores.layers[i].depth.by_criterion = first[0].at(i);
      scores.layers[i].depth.by_criterion["block_influence"] = influence[i];
    }
  }
  if (blocks) {
    scores.block_k = options.block_k;
    for (auto& [start, c] : first.back()) {
      BlockScore b;
      b.start = start;
      b.by_criterion = c;
      scores.blocks.push_back(b);
    }
  }
  if (options.iterative_steps > 0) {
    // Nemotron Nano 2: remove the layer whose removal hurts least, re-score with it gone, repeat.
    scores.removal_criterion = options.iterative_criterion;
    std::vector<bool> removed(L, false);
    std::map<int64_t, Criteria> step = first[0];
    for (int64_t s = 0; s < options.iterative_steps; ++s) {
      if (s > 0) step = eval.sweep(removed, {1}, &progress)[0];
      int64_t best = -1;
      double best_value = std::numeric_limits<double>::infinity();
      for (auto& [i, c] : step) {  // ascending layers: ties go to the first, as before
        if (c.at(options.iterative_criterion) < best_value) {
          best_value = c.at(options.iterative_criterion);
          best = i;
        }
      }
      removed[best] = true;
      scores.removal_order.push_back(best);
      scores.removal_scores.push_back(best_value);
    }
  }
  progress.finish();
}

}  // namespace mp::importance
