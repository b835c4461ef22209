// MoE students: how evenly each MoE layer's router spreads tokens over its experts during validation (logged with
// every eval). A collapsed router (a few experts taking most tokens) shows here long before it shows in the loss.
#pragma once
#include <ATen/ATen.h>

#include <map>

#include "minipuzzle/json.h"
#include "minipuzzle/model.h"

namespace mp::distill {

class RouterLoad : public ActivationObserver {
 public:
  explicit RouterLoad(const ModelConfig& c) : config_(c) {}
  bool wants(Tap tap, int64_t layer) const override { return tap == Tap::MoeRouting && layer >= 0; }
  void observe(Tap, int64_t layer, const at::Tensor& weights) override {  // [N,E], 0 where not routed
    at::Tensor n = weights.detach().ne(0).sum(0).to(at::kDouble).cpu();
    auto it = counts_.find(layer);
    if (it == counts_.end()) counts_.emplace(layer, n);
    else it->second += n;
  }
  // All layers' counts as one tensor [moe layers x E] (for an all-reduce over ranks) and back.
  at::Tensor packed() const {
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < config_.num_layers(); ++i)
      if (config_.layers[i] == LayerType::Moe)
        rows.push_back(counts_.count(i) ? counts_.at(i) : at::zeros({config_.n_routed_experts}, at::kDouble));
    return at::stack(rows);
  }
  // Per MoE layer: each expert's share of the routed assignments (sums to 1), and max share / mean share (1 is a
  // perfectly even router, E a router that sends everything to one expert).
  json summary(const at::Tensor& packed) const {
    json j = json::object();
    int64_t r = 0;
    for (int64_t i = 0; i < config_.num_layers(); ++i) {
      if (config_.layers[i] != LayerType::Moe) continue;
      at::Tensor c = packed[r++];
      const double total = c.sum().item<double>();
      if (total <= 0) continue;
      at::Tensor share = c / total;
      std::vector<double> v(share.data_ptr<double>(), share.data_ptr<double>() + share.numel());
      j[std::to_string(i)] = {{"shares", v},
                              {"max_over_mean", share.max().item<double>() * static_cast<double>(share.numel())},
                              {"unused_experts", c.eq(0).sum().item<int64_t>()}};
    }
    return j;
  }

 private:
  const ModelConfig& config_;
  std::map<int64_t, at::Tensor> counts_;
};

}  // namespace mp::distill
