// Depth importance (internal to the pruning library): how much the model changes when layers are skipped.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"

namespace mp::importance {

// Criteria of one skip pattern against the full model, averaged over calibration tokens:
//   lm_loss_increase  CE(skipped) - CE(full)               (Minitron)
//   kl                KL(p_full || p_skipped) per token     (Minitron-SSM)
//   mse_hidden        mean (h_skipped - h_full)^2 of the final hidden state (MiniPuzzle)
//   mse_logits        mean (z_skipped - z_full)^2 of the logits (Nemotron Nano 2)
using Criteria = std::map<std::string, double>;

class DepthEvaluator {
 public:
  DepthEvaluator(const NemotronH& model, const at::Tensor& calibration_ids, int64_t batch_size);
  Criteria evaluate(const std::vector<bool>& skip) const;
  // Block influence per layer from one full pass: 1 - cos(input, output) averaged over tokens (ModelOpt).
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

void score_depth(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                 Scores& scores);

}  // namespace mp::importance
