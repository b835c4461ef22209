// MoE importance: routing frequency, router-weighted expert output norms, expert and shared-expert channels from
// one pass of the model's MoE taps; expert removal loss by masking one expert at a time.
#include "pruning/moe_importance.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"

namespace mp::importance {

namespace {
std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}
}  // namespace

bool MoeObserver::wants(Tap tap, int64_t layer) const {
  if (layer < 0 || layer >= config_.num_layers() || config_.layers[layer] != LayerType::Moe) return false;
  return tap == Tap::MoeShared || tap == Tap::MoeRouting || tap == Tap::MoeExpertOutput || tap == Tap::MoeExpertChannels;
}

void MoeObserver::observe(Tap tap, int64_t layer, const at::Tensor& value) {
  Layer& l = layers_[layer];
  at::Tensor v = value.detach();
  switch (tap) {
    case Tap::MoeShared:
      if (!l.shared) l.shared = std::make_unique<ChannelStatistic>(reduction_, v.size(-1));
      l.shared->add(v);
      break;
    case Tap::MoeRouting: {  // [N,E] weights, 0 where not chosen
      at::Tensor n = v.ne(0).sum(0).to(at::kDouble);
      l.routed_count = l.routed_count.defined() ? l.routed_count + n : n;
      l.tokens += v.size(0);
      break;
    }
    case Tap::MoeExpertOutput: {  // [N,E] ||w y||
      at::Tensor s = v.to(at::kDouble).square().sum(0);
      l.output_sq = l.output_sq.defined() ? l.output_sq + s : s;
      break;
    }
    case Tap::MoeExpertChannels: {  // [E,F] sums of squares over routed tokens
      at::Tensor s = v.to(at::kDouble);
      l.channel_sq = l.channel_sq.defined() ? l.channel_sq + s : s;
      break;
    }
    default: break;
  }
}

void MoeObserver::fill(Scores& scores) const {
  for (auto& [i, l] : layers_) {
    MP_CHECK(l.tokens > 0 && l.output_sq.defined() && l.channel_sq.defined() && l.shared, "importance: MoE layer ", i,
             " was not observed completely");
    MoeScores& m = scores.layers.at(static_cast<size_t>(i)).moe;
    const double n = static_cast<double>(l.tokens);
    m.frequency = to_vector(l.routed_count / n);
    m.experts = to_vector((l.output_sq / n).sqrt());  // RMS over all tokens of ||w_e(x) E_e(x)|| (0 if not routed)
    m.expert_channels = to_vector(l.channel_sq.sqrt().reshape({-1}));
    m.shared = to_vector(l.shared->result());
  }
}

void score_expert_loss(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                       Scores& scores) {
  const ModelConfig& c = model.config();
  c10::AutoGradMode no_grad(false);
  int64_t n = calibration_ids.size(0);
  if (options.depth_samples > 0) n = std::min(n, options.depth_samples);
  const int64_t bs = std::max<int64_t>(1, options.batch_size);
  auto mean_ce = [&](const ForwardOptions& fo) {
    double sum = 0;
    int64_t count = 0;
    for (int64_t s = 0; s < n; s += bs) {
      at::Tensor ids = calibration_ids.narrow(0, s, std::min(bs, n - s)).to(model.device());
      at::Tensor logits = model.forward(ids, fo);
      const int64_t T = ids.size(1);
      at::Tensor ce = at::cross_entropy_loss(logits.narrow(1, 0, T - 1).reshape({-1, logits.size(-1)}),
                                             ids.narrow(1, 1, T - 1).reshape({-1}), {}, at::Reduction::Sum);
      sum += ce.item<double>();
      count += ids.size(0) * (T - 1);
    }
    return sum / static_cast<double>(count);
  };
  const double full = mean_ce({});
  Progress progress("score: expert loss", c.count(LayerType::Moe) * c.n_routed_experts, "experts");
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    if (c.layers[i] != LayerType::Moe) continue;
    std::vector<double> loss;
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      std::map<int64_t, LayerMask> masks;
      masks[i].moe_experts = at::ones({c.n_routed_experts}, at::kFloat);
      masks[i].moe_experts[e] = 0;
      ForwardOptions fo;
      fo.masks = &masks;
      loss.push_back(mean_ce(fo) - full);
      progress.advance(1);
    }
    scores.layers.at(static_cast<size_t>(i)).moe.loss = loss;
  }
  progress.finish();
}

}  // namespace mp::importance
