// MoE importance (internal to the pruning library): per-expert and per-channel scores of 'E' layers.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>

#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"

namespace mp::importance {

// Observes the MoE taps (routing, router-weighted expert outputs, expert relu^2 channels, shared-expert
// activations) and accumulates MoeScores per layer: see MoeScores in include/minipuzzle/importance.h.
class MoeObserver : public ActivationObserver {
 public:
  MoeObserver(const ModelConfig& config, Reduction reduction) : config_(config), reduction_(reduction) {}
  bool wants(Tap tap, int64_t layer) const override;
  void observe(Tap tap, int64_t layer, const at::Tensor& value) override;
  void fill(Scores& scores) const;

 private:
  struct Layer {
    at::Tensor routed_count, output_sq, channel_sq;  // [E], [E], [E,F]: float64 sums over tokens
    int64_t tokens = 0;
    std::unique_ptr<ChannelStatistic> shared;
  };
  const ModelConfig& config_;
  Reduction reduction_;
  std::map<int64_t, Layer> layers_;
};

// Forwards one observer's calls to two (width scoring keeps its own observer; MoE adds this one beside it).
class TeeObserver : public ActivationObserver {
 public:
  TeeObserver(ActivationObserver* a, ActivationObserver* b) : a_(a), b_(b) {}
  bool wants(Tap tap, int64_t layer) const override { return a_->wants(tap, layer) || b_->wants(tap, layer); }
  void observe(Tap tap, int64_t layer, const at::Tensor& value) override {
    if (a_->wants(tap, layer)) a_->observe(tap, layer, value);
    if (b_->wants(tap, layer)) b_->observe(tap, layer, value);
  }

 private:
  ActivationObserver *a_, *b_;
};

// "loss": per MoE layer and expert, the mean next-token cross-entropy with that expert removed from the router
// (masked: never chosen) minus the full model's, over the calibration batches (depth_samples of them when set).
// One forward per expert per MoE layer per batch.
void score_expert_loss(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                       Scores& scores);

}  // namespace mp::importance
