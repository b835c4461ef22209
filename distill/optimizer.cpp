// AdamW on fp32 master weights, through ATen's fused multi-tensor kernel (_fused_adamw_: one launch per group
// on CUDA, a vectorised loop on CPU), and global gradient-norm clipping.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <set>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

bool AdamW::decays(const std::string& name, const at::Tensor& param) { return param.dim() >= 2; }

AdamW::AdamW(const std::map<std::string, at::Tensor>& params, AdamWOptions options) : options_(options) {
  at::NoGradGuard no_grad;
  std::set<const void*> seen;  // tied parameters are one tensor under two names
  for (auto& [name, p] : params) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    MP_CHECK(p.is_floating_point(), "distill: parameter ", name, " is not floating point (", p.scalar_type(), ")");
    names_.push_back(name);
    params_.push_back(p);
    masters_.push_back(p.scalar_type() == at::kFloat ? p : p.detach().to(at::kFloat).clone());
    exp_avg_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    exp_avg_sq_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    decay_.push_back(decays(name, p));
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++steps_;
  // Two groups (with and without weight decay), each updated in chunks of about 512 MB of parameters so that the
  // float32 copies of bf16 gradients exist for one chunk at a time (a 1B-parameter student would need 4 GB).
  const int64_t chunk_elements = int64_t(128) << 20;
  for (bool decay : {true, false}) {
    size_t i = 0;
    while (i < params_.size()) {
      std::vector<at::Tensor> masters, grads, m, v, steps;
      std::vector<size_t> idx;
      int64_t elements = 0;
      for (; i < params_.size() && (elements == 0 || elements + params_[i].numel() <= chunk_elements); ++i) {
        if (decay_[i] != decay || !params_[i].grad().defined()) continue;
        at::Tensor g = params_[i].grad();
        masters.push_back(masters_[i]);
        grads.push_back(g.scalar_type() == at::kFloat ? g : g.to(at::kFloat));
        m.push_back(exp_avg_[i]);
        v.push_back(exp_avg_sq_[i]);
        steps.push_back(at::full({}, double(steps_), masters_[i].options()));
        idx.push_back(i);
        elements += params_[i].numel();
      }
      if (masters.empty()) continue;
      at::_fused_adamw_(masters, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, options_.beta1, options_.beta2,
                        decay ? options_.weight_decay : 0.0, options_.eps, /*amsgrad=*/false, /*maximize=*/false);
      for (size_t k : idx)
        if (!masters_[k].is_same(params_[k])) params_[k].copy_(masters_[k]);  // round the master into bf16
    }
  }
}

std::map<std::string, at::Tensor> AdamW::state_tensors() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < names_.size(); ++i) {
    out["exp_avg/" + names_[i]] = exp_avg_[i];
    out["exp_avg_sq/" + names_[i]] = exp_avg_sq_[i];
    if (!masters_[i].is_same(params_[i])) out["master/" + names_[i]] = masters_[i];
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& tensors, int64_t steps) {
  at::NoGradGuard no_grad;
  auto load = [&](const std::string& key, at::Tensor& dst) {
    auto it = tensors.find(key);
    MP_CHECK(it != tensors.end(), "distill: optimizer state \"", key, "\" missing from the checkpoint");
    MP_CHECK(it->second.sizes() == dst.sizes(), "distill: optimizer state \"", key, "\" has shape ",
             it->second.sizes(), ", the parameter has ", dst.sizes());
    dst.copy_(it->second);
  };
  for (size_t i = 0; i < names_.size(); ++i) {
    load("exp_avg/" + names_[i], exp_avg_[i]);
    load("exp_avg_sq/" + names_[i], exp_avg_sq_[i]);
    if (!masters_[i].is_same(params_[i])) load("master/" + names_[i], masters_[i]);
  }
  steps_ = steps;
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (auto& p : params)
    if (p.grad().defined()) norms.push_back(at::linalg_vector_norm(p.grad(), 2, {}, false, at::kDouble));
  if (norms.empty()) return 0.0;
  const double norm = at::linalg_vector_norm(at::stack(norms), 2).item<double>();
  if (!std::isfinite(norm)) return norm;
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace mp::distill
