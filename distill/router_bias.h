// Aux-loss-free load balancing of MoE students (issue 25), DeepSeek-V3's rule (arXiv 2412.19437, section 2.1.2),
// which Nemotron 3 Nano trained with at update rate 1e-3 beside a 1e-4 load-balancing loss (arXiv 2512.20848):
// after every optimizer step each MoE layer's router correction bias moves toward balance,
//     e_score_correction_bias[i] += rate * sign(mean_j load[j] - load[i]),
// load[i] = the (token, slot) assignments routed to expert i during the step (every micro-batch, every rank). The
// bias only selects experts (the routing weights are the plain sigmoid scores), so it changes where tokens go, not
// how expert outputs are weighted; it gets no gradient and the optimizer never touches it. Opt-in:
// `distill --router-bias-update RATE`.
#pragma once
#include <ATen/ATen.h>

#include <map>

#include "minipuzzle/distill.h"
#include "minipuzzle/json.h"
#include "minipuzzle/model.h"

namespace mp::distill {

class RouterBiasUpdate : public ActivationObserver {
 public:
  RouterBiasUpdate(const ModelConfig& config, double rate);
  bool wants(Tap tap, int64_t layer) const override { return tap == Tap::MoeRouting && layer >= 0; }
  // weights: [tokens, E], the routing weight where a token chose the expert, 0 elsewhere (the MoeRouting tap).
  void observe(Tap tap, int64_t layer, const at::Tensor& weights) override;
  // Sums the step's counts over ranks, applies the rule to `student`'s biases (every rank the same update) and
  // clears the counts. Returns {"max_over_mean": the largest max load / mean load over the MoE layers this step,
  // "bias_abs_max": the largest |bias| after the update}.
  json apply(const NemotronH& student, Communicator* comm);
  void clear() { counts_.clear(); }
  // The step's per-expert load of one MoE layer (undefined before any observation): for tests.
  at::Tensor load(int64_t layer) const { return counts_.count(layer) ? counts_.at(layer) : at::Tensor(); }

 private:
  const ModelConfig& config_;
  double rate_;
  std::map<int64_t, at::Tensor> counts_;  // on the model's device, float64, [E]
};

}  // namespace mp::distill
