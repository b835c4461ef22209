// Depth importance (internal to the pruning library): how much the model changes when layers are skipped.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "pruning/runner.h"

namespace mp {
class Progress;
}

namespace mp::importance {

// Criteria of one skip pattern against the full model, averaged over calibration tokens:
//   lm_loss_increase  CE(skipped) - CE(full)               (Minitron)
//   kl                KL(p_full || p_skipped) per token     (Minitron-SSM)
//   mse_hidden        mean (h_skipped - h_full)^2 of the final hidden state (MiniPuzzle)
//   mse_logits        mean (z_skipped - z_full)^2 of the logits (Nemotron Nano 2)
using Criteria = std::map<std::string, double>;

// Memory: the full model's outputs are kept per batch as its final hidden state (model dtype, [B*T,H]) and the
// log-sum-exp of its logits per token ([B*T] float); logits, log-probabilities and the criteria's products are made
// a chunk of tokens at a time (ScoreOptions::logits_chunk_bytes of float32 logits per chunk), so no [B,T,V] tensor
// ever exists. The full model's logits of a chunk are made again from its kept hidden state by the same lm_head
// GEMM (one extra [chunk,H] x [H,V] product per chunk, about 5% of a forward at 12B shapes).
//
// Time: skipping layer i changes nothing before it. A sweep walks the layers in order keeping one tensor, the
// (full or already-pruned) model's input of layer i; skipping i (or the block i..i+k-1) runs only the layers after
// the skipped ones from there. All one-layer criteria of a batch cost L(L-1)/2 + L layer forwards instead of the
// L^2 of L full passes (about 0.5x; the implementation this replaced also ran the full model again for every
// pattern once its outputs were too large to cache, 2 L^2). No layer inputs are stored, so this needs no
// checkpointing: the only extra memory is the [B,T,H] prefix and the branch being evaluated.
class DepthEvaluator {
 public:
  DepthEvaluator(const LayerRunner& runner, const at::Tensor& calibration_ids, int64_t batch_size,
                 int64_t logits_chunk_bytes);
  // Block influence per layer from one full pass: 1 - cos(input, output) averaged over tokens (ModelOpt).
  std::vector<double> block_influence() const { return block_influence_; }
  // For every layer i not in `removed` and every span k of `spans`: the criteria of skipping `removed` plus layers
  // i..i+k-1 (result[s][i], for spans[s]; absent when i + k > L or the span overlaps `removed`).
  std::vector<std::map<int64_t, Criteria>> sweep(const std::vector<bool>& removed, const std::vector<int64_t>& spans,
                                                 Progress* progress) const;
  // Number of patterns sweep() evaluates (for progress).
  int64_t patterns(const std::vector<bool>& removed, const std::vector<int64_t>& spans) const;

 private:
  struct Reference {
    at::Tensor ids;     // [B,T] on the model's device
    at::Tensor labels;  // [B*T] next token, -100 at each sequence's last position
    at::Tensor hidden;  // [B*T,H] final hidden state in the model dtype
    at::Tensor lse;     // [B*T] float32 log-sum-exp of the full model's logits
    double ce_sum = 0;  // summed next-token cross-entropy
  };
  Reference full_pass(const at::Tensor& ids, ActivationObserver* observer) const;
  // [ce, kl, mse_hidden, mse_logits] sums over the batch's tokens (float64, on the device) of a skipped model's
  // final hidden state against the reference.
  at::Tensor compare(const Reference& ref, const at::Tensor& final_hidden) const;
  bool skippable(const std::vector<bool>& removed, int64_t start, int64_t span) const;
  const LayerRunner& runner_;
  int64_t chunk_tokens_ = 1;
  std::vector<Reference> references_;
  std::vector<double> block_influence_;
  int64_t tokens_ = 0, predicted_ = 0;
};

void score_depth(const LayerRunner& runner, const at::Tensor& calibration_ids, const ScoreOptions& options,
                 Scores& scores);

// The implementation before issue 19 (depth_reference.cpp): one full forward per skip pattern with full-vocabulary
// float32 logits. The reference of tests/importance/test_depth.cpp and bench_score_budget; same Scores fields.
// max_layers >= 0: only the one-layer patterns of the first max_layers layers (benchmarks time a few).
void score_depth_reference(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options,
                           Scores& scores, int64_t max_layers = -1);

}  // namespace mp::importance
