// Aux-loss-free load balancing: the per-step expert loads and the bias update (see router_bias.h).
#include "distill/router_bias.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "minipuzzle/error.h"

namespace mp::distill {

RouterBiasUpdate::RouterBiasUpdate(const ModelConfig& config, double rate) : config_(config), rate_(rate) {
  MP_CHECK(rate > 0, "distill: the router bias update rate must be positive, found ", rate);
  MP_CHECK(config.count(LayerType::Moe) > 0, "distill: --router-bias-update needs a student with MoE layers");
}

void RouterBiasUpdate::observe(Tap, int64_t layer, const at::Tensor& weights) {
  at::Tensor n = weights.detach().ne(0).sum(0).to(at::kDouble);  // stays on the device: no sync per layer
  auto it = counts_.find(layer);
  if (it == counts_.end()) counts_.emplace(layer, n);
  else it->second += n;
}

json RouterBiasUpdate::apply(const NemotronH& student, Communicator* comm) {
  at::NoGradGuard no_grad;
  const int64_t E = config_.n_routed_experts;
  std::vector<int64_t> layers;
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < config_.num_layers(); ++i) {
    if (config_.layers[static_cast<size_t>(i)] != LayerType::Moe) continue;
    layers.push_back(i);
    rows.push_back(counts_.count(i) ? counts_.at(i).cpu() : at::zeros({E}, at::kDouble));
  }
  at::Tensor packed = at::stack(rows);  // [MoE layers, E]; every rank reduces the same shape
  all_reduce_sum(comm, packed);
  double worst = 0, bias_max = 0;
  for (size_t r = 0; r < layers.size(); ++r) {
    at::Tensor load = packed[static_cast<int64_t>(r)];
    const double mean = load.mean().item<double>();
    at::Tensor bias = student.parameters().at("backbone.layers." + std::to_string(layers[r]) +
                                              ".mixer.gate.e_score_correction_bias");
    if (mean > 0) {
      worst = std::max(worst, load.max().item<double>() / mean);
      at::Tensor step = at::sign(mean - load) * rate_;  // float64 on the host: exact signs, ties move nothing
      bias.add_(step.to(bias.device(), bias.scalar_type()));
    }
    bias_max = std::max(bias_max, bias.abs().max().item<double>());
  }
  clear();
  return {{"max_over_mean", worst}, {"bias_abs_max", bias_max}};
}

}  // namespace mp::distill
