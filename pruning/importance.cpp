// Width importance from activations observed at the model's taps, streamed over calibration batches; the
// depth criteria live in depth.cpp. Everything here aggregates: no activation outlives its batch.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/progress.h"
#include "pruning/depth.h"
#include "pruning/moe_importance.h"

namespace mp {

namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// L2 over the channels of each group of `size` consecutive channels: per-head scores from per-channel ones.
at::Tensor l2_per_block(const at::Tensor& channels, int64_t size) { return channels.view({-1, size}).norm(2, 1); }

// Observes the taps that width importance needs and keeps one streaming statistic per (tap, layer). All
// statistics stay on the model's device until fill_width_scores reads them: a batch adds a few reductions
// per tap and never waits for the device.
class WidthObserver : public ActivationObserver {
 public:
  WidthObserver(const NemotronH& model, Reduction reduction, bool taylor)
      : model_(model), reduction_(reduction), taylor_(taylor) {}

  bool wants(Tap tap, int64_t layer) const override {
    return tap == Tap::NormOutput || tap == Tap::MlpAct || tap == Tap::AttnHeads || tap == Tap::MambaX ||
           tap == Tap::MambaY;
  }

  void observe(Tap tap, int64_t layer, const at::Tensor& value) override {
    auto key = std::make_pair(tap, layer);
    if (tap == Tap::MambaY) {  // out_proj's input feeds FLAP (its variance) and the head outputs only
      auto v = variance_.find(layer);
      if (v == variance_.end()) v = variance_.emplace(layer, ChannelStatistic(Reduction::Variance, value.size(-1))).first;
      v->second.add(value);
    } else {
      auto it = stats_.find(key);
      if (it == stats_.end()) it = stats_.emplace(key, ChannelStatistic(reduction_, value.size(-1))).first;
      it->second.add(value);
    }
    if (tap == Tap::MambaY || tap == Tap::AttnHeads) add_head_contributions(tap, layer, value);
    if (taylor_ && value.requires_grad() && tap != Tap::NormOutput && tap != Tap::MambaY) {
      at::Tensor keep = value;
      keep.retain_grad();
      retained_.push_back({key, keep});
    }
  }

  // After backward: |sum_t a * dL/da| per sample and channel, summed over samples.
  void collect_taylor() {
    for (auto& [key, t] : retained_) {
      if (!t.grad().defined()) continue;
      at::Tensor s = (t.detach() * t.grad()).to(at::kDouble).sum(1).abs().sum(0);  // stays on the device
      auto it = taylor_sums_.find(key);
      if (it == taylor_sums_.end())
        taylor_sums_.emplace(key, s);
      else
        it->second += s;
    }
    retained_.clear();
  }

  at::Tensor stat(Tap tap, int64_t layer) const {
    auto it = stats_.find({tap, layer});
    MP_CHECK(it != stats_.end(), "importance: no activations seen at ", tap_name(tap), " of layer ", layer);
    return it->second.result();
  }
  at::Tensor variance(int64_t layer) const { return variance_.at(layer).result(); }
  at::Tensor head_contribution(int64_t layer) const { return contributions_.at(layer).result(); }
  const std::map<std::pair<Tap, int64_t>, at::Tensor>& taylor() const { return taylor_sums_; }

 private:
  // Each head's output through the output projection, ||a_h W_h^T|| per token: a head whose projection
  // columns are zero contributes nothing, whatever its input activations. a_h W_h^T ([tokens, hidden] per
  // head, as many FLOPs and far more bytes than the projection itself) is never formed:
  // ||a_h W_h^T||^2 = a_h G_h a_h^T with G_h = W_h^T W_h ([width, width], once per layer), so all heads
  // take one batched [tokens, width] x [width, width] product and a row-wise dot.
  void add_head_contributions(Tap tap, int64_t layer, const at::Tensor& value) {
    const ModelConfig& c = model_.config();
    const bool mamba = tap == Tap::MambaY;
    const int64_t heads = mamba ? c.mamba_num_heads : c.num_attention_heads;
    const int64_t width = mamba ? c.mamba_head_dim : c.head_dim;
    auto g = gram_.find(layer);
    if (g == gram_.end()) {
      at::Tensor w = model_.parameters().at("backbone.layers." + std::to_string(layer) +
                                            (mamba ? ".mixer.out_proj.weight" : ".mixer.o_proj.weight"));
      at::Tensor wh = w.detach().to(at::kFloat).view({w.size(0), heads, width}).permute({1, 0, 2});  // [heads,D,w]
      g = gram_.emplace(layer, at::bmm(wh.transpose(1, 2), wh)).first;                              // [heads,w,w]
    }
    const int64_t B = value.size(0), T = value.size(1);
    at::Tensor a = value.detach().to(at::kFloat).reshape({B * T, heads, width}).transpose(0, 1);  // [heads,BT,w]
    at::Tensor sq = at::bmm(a, g->second).mul_(a).sum(-1);                                       // [heads,BT]
    at::Tensor per_head = sq.clamp_min_(0.0).sqrt_().t().view({B, T, heads});
    auto it = contributions_.find(layer);
    if (it == contributions_.end()) it = contributions_.emplace(layer, ChannelStatistic(reduction_, heads)).first;
    it->second.add(per_head);
  }

  const NemotronH& model_;
  Reduction reduction_;
  bool taylor_;
  std::map<std::pair<Tap, int64_t>, ChannelStatistic> stats_;
  std::map<int64_t, ChannelStatistic> variance_, contributions_;
  std::map<int64_t, at::Tensor> gram_;  // per layer: W_h^T W_h of each head's output-projection columns
  std::vector<std::pair<std::pair<Tap, int64_t>, at::Tensor>> retained_;
  std::map<std::pair<Tap, int64_t>, at::Tensor> taylor_sums_;
};

std::vector<std::vector<int64_t>> rank_within_groups(const std::vector<double>& heads, int64_t groups) {
  const int64_t per_group = static_cast<int64_t>(heads.size()) / groups;
  std::vector<std::vector<int64_t>> ranks(groups);
  for (int64_t g = 0; g < groups; ++g) {
    auto& r = ranks[g];
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) r.push_back(h);
    std::stable_sort(r.begin(), r.end(), [&](int64_t a, int64_t b) { return heads[a] > heads[b]; });
  }
  return ranks;
}

void fill_width_scores(const NemotronH& model, const WidthObserver& obs, Scores& scores) {
  const ModelConfig& c = model.config();
  at::Tensor hidden = at::zeros({c.hidden_size}, at::kDouble);
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    LayerScores& l = scores.layers[i];
    hidden += obs.stat(Tap::NormOutput, i);
    switch (c.layers[i]) {
      case LayerType::Mlp: l.mlp_neurons = to_vector(obs.stat(Tap::MlpAct, i)); break;
      case LayerType::Attention: {
        at::Tensor heads = l2_per_block(obs.stat(Tap::AttnHeads, i), c.head_dim);
        l.attn_heads = to_vector(heads);
        l.attn_kv_groups = to_vector(l2_per_block(heads, c.num_attention_heads / c.num_key_value_heads));
        l.attn_heads_out = to_vector(obs.head_contribution(i));
        break;
      }
      case LayerType::Mamba: {
        const int64_t H = c.mamba_num_heads, P = c.mamba_head_dim;
        at::Tensor x = obs.stat(Tap::MambaX, i).view({H, P});
        MambaScores& m = l.mamba;
        m.channels = to_vector(x.reshape({-1}));
        m.heads = to_vector(x.norm(2, 1));
        m.head_dim = to_vector(x.norm(2, 0));
        m.groups = to_vector(l2_per_block(x.norm(2, 1), H / c.n_groups));
        m.head_rank_in_group = rank_within_groups(m.heads, c.n_groups);
        m.heads_out = to_vector(obs.head_contribution(i));
        // FLAP: input variance of out_proj times the squared norm of its weight column, summed per head.
        at::Tensor w = model.parameters().at("backbone.layers." + std::to_string(i) + ".mixer.out_proj.weight");
        at::Tensor col = at::linalg_vector_norm(w.detach(), 2, std::vector<int64_t>{0}, false,
                                                w.is_cuda() ? at::kFloat : at::kDouble)
                             .to(at::kDouble)
                             .square_()
                             .cpu();
        m.heads_flap = to_vector((obs.variance(i) * col).view({H, P}).sum(1));
        break;
      }
      case LayerType::Moe: break;
    }
  }
  scores.hidden = to_vector(hidden);
  for (auto& [key, sum] : obs.taylor()) {
    auto [tap, i] = key;
    LayerScores& l = scores.layers[i];
    if (tap == Tap::MlpAct) l.taylor["mlp_neurons"] = to_vector(sum);
    if (tap == Tap::AttnHeads) l.taylor["attn_heads"] = to_vector(sum.view({c.num_attention_heads, c.head_dim}).sum(1));
    if (tap == Tap::MambaX) l.taylor["mamba_heads"] = to_vector(sum.view({c.mamba_num_heads, c.mamba_head_dim}).sum(1));
  }
}

}  // namespace

std::vector<double> nested_mamba_head_scores(const MambaScores& m, int64_t heads, int64_t head_dim, int64_t keep_dims) {
  // Minitron-SSM: keep the top head_dim positions (one global ranking), then score heads over those only.
  std::vector<int64_t> dims(head_dim);
  std::iota(dims.begin(), dims.end(), 0);
  std::stable_sort(dims.begin(), dims.end(), [&](int64_t a, int64_t b) { return m.head_dim[a] > m.head_dim[b]; });
  dims.resize(std::min(keep_dims, head_dim));
  std::vector<double> out(heads, 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    double s = 0;
    for (int64_t d : dims) s += m.channels[h * head_dim + d] * m.channels[h * head_dim + d];
    out[h] = std::sqrt(s);
  }
  return out;
}

Scores compute_scores(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options) {
  const ModelConfig& c = model.config();
  MP_CHECK(calibration_ids.dim() == 2 && calibration_ids.size(0) > 0 && calibration_ids.size(1) > 1,
           "score: calibration must be [samples, seq_len] with seq_len > 1, found ", calibration_ids.sizes());
  Scores scores;
  scores.fingerprint = shape_fingerprint(c);
  scores.pattern = c.pattern();
  scores.model = {{"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                  {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
                  {"mamba_num_heads", c.mamba_num_heads}, {"mamba_head_dim", c.mamba_head_dim},
                  {"n_groups", c.n_groups}, {"num_layers", c.num_layers()}};
  scores.calibration = {{"samples", calibration_ids.size(0)}, {"seq_len", calibration_ids.size(1)},
                        {"tokens", calibration_ids.numel()}};
  scores.reduction = options.reduction;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    LayerScores l;
    l.index = i;
    l.type = c.layers[i];
    scores.layers.push_back(l);
  }
  const int64_t n = calibration_ids.size(0), bs = std::max<int64_t>(1, options.batch_size);

  if (options.width) {
    WidthObserver obs(model, options.reduction, options.taylor);
    importance::MoeObserver moe(c, options.reduction);  // MoE layers' expert and channel statistics
    importance::TeeObserver both(&obs, &moe);
    ForwardOptions fo;
    fo.observer = c.count(LayerType::Moe) ? static_cast<ActivationObserver*>(&both) : &obs;
    Progress progress("score: width", n, "samples");
    // Taylor needs gradients: the embedding table requiring grad makes every activation part of the graph.
    at::Tensor emb = model.parameters().at("backbone.embeddings.weight");
    const bool was_requiring = emb.requires_grad();
    if (options.taylor) const_cast<at::Tensor&>(emb).set_requires_grad(true);
    for (int64_t s = 0; s < n; s += bs) {
      at::Tensor ids = calibration_ids.narrow(0, s, std::min(bs, n - s)).to(model.device());
      if (options.taylor) {
        c10::AutoGradMode grad(true);
        at::Tensor logits = model.forward(ids, fo);
        at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, ids.size(1) - 1).reshape({-1, logits.size(-1)}),
                                                 ids.narrow(1, 1, ids.size(1) - 1).reshape({-1}));
        loss.backward();
        obs.collect_taylor();
      } else {
        c10::AutoGradMode no_grad(false);
        model.forward_hidden(ids, fo);  // lm_head adds nothing to width scores
      }
      progress.advance(ids.size(0));
    }
    if (options.taylor) {
      const_cast<at::Tensor&>(emb).set_requires_grad(was_requiring);
      for (auto& [_, p] : model.parameters()) {
        if (p.grad().defined()) const_cast<at::Tensor&>(p).mutable_grad() = at::Tensor();
      }
    }
    progress.finish();
    fill_width_scores(model, obs, scores);
    moe.fill(scores);
    if (options.nested_head_dim > 0)
      for (auto& l : scores.layers)
        if (l.type == LayerType::Mamba)
          l.mamba.heads_nested = nested_mamba_head_scores(l.mamba, c.mamba_num_heads, c.mamba_head_dim, options.nested_head_dim);
  }
  if (options.expert_loss && c.count(LayerType::Moe)) importance::score_expert_loss(model, calibration_ids, options, scores);
  if (options.depth || options.block_k > 0 || options.iterative_steps > 0) {
    c10::AutoGradMode no_grad(false);
    importance::score_depth(model, calibration_ids, options, scores);
  }
  return scores;
}

}  // namespace mp
