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

// Memory: the full model's outputs are kept per batch as its final hidden state (model dtype, [B,T,H]) and the
// log-sum-exp of its logits per token ([B*T] float); logits, log-probabilities and the criteria's products are made
// a chunk of tokens at a time (ScoreOptions::logits_chunk_bytes of float32 logits per chunk), so no [B,T,V] tensor
// ever exists. The full model's logits of a chunk are made again from its kept hidden state by the same lm_head
// GEMM (one extra [chunk,H] x [H,V] product per chunk, about 5% of a forward at 12B shapes).
class DepthEvaluator {
 public:
  DepthEvaluator(const NemotronH& model, const at::Tensor& calibration_ids, int64_t batch_size,
                 int64_t logits_chunk_bytes);
  Criteria evaluate(const std::vector<bool>& skip) const;
  // Block influence per layer from one full pass: 1 - cos(input, output) averaged over tokens (ModelOpt).
  std::vector<double> block_influence() const { return block_influence_; }

 private:
  struct Reference {
    at::Tensor ids;     // [B,T] on the model's device
    at::Tensor labels;  // [B*T] next token, -100 at each sequence's last position
    at::Tensor hidden;  // [B*T,H] final hidden state in the model dtype
    at::Tensor lse;     // [B*T] float32 log-sum-exp of the full model's logits
    at::Tensor ce_sum;  // float64 scalar: summed next-token cross-entropy
  };
  Reference full_pass(const at::Tensor& ids, ActivationObserver* observer) const;
  // [ce, kl, mse_hidden, mse_logits] sums over the batch's tokens (float64, on the device) of a skipped model's
  // final hidden state against the reference.
  at::Tensor compare(const Reference& ref, const at::Tensor& final_hidden) const;
  const NemotronH& model_;
  int64_t chunk_tokens_ = 1;
  std::vector<Reference> references_;
  std::vector<double> block_influence_;
  int64_t tokens_ = 0, predicted_ = 0;
};

void score_depth(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                 Scores& scores);

}  // namespace mp::importance

namespace mp::importance {
// The implementation before issue 19 (depth_reference.cpp): one full forward per skip pattern with full-vocabulary
// float32 logits. The reference of tests/importance/test_depth.cpp and bench_score_budget; same Scores fields.
void score_depth_reference(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                           Scores& scores);
}  // namespace mp::importance
