// The Nemotron-H stack: embeddings, per layer pre-norm + mixer + residual, final norm, lm_head.
#include <ATen/ATen.h>

#include <cmath>

#include "minipuzzle/error.h"
#include "minipuzzle/model.h"
#include "src/model/layers.h"

namespace mp {

const char* tap_name(Tap tap) {
  switch (tap) {
    case Tap::LayerInput: return "layer_input";
    case Tap::NormOutput: return "norm_output";
    case Tap::MambaX: return "mamba_x";
    case Tap::MambaY: return "mamba_y";
    case Tap::AttnHeads: return "attn_heads";
    case Tap::MlpAct: return "mlp_act";
    case Tap::LayerOutput: return "layer_output";
    case Tap::FinalHidden: return "final_hidden";
    case Tap::MoeShared: return "moe_shared";
    case Tap::MoeRouting: return "moe_routing";
    case Tap::MoeExpertOutput: return "moe_expert_output";
    case Tap::MoeExpertChannels: return "moe_expert_channels";
  }
  return "?";
}

namespace model {
at::Tensor Params::get(const std::string& name) const {
  auto it = all.find(prefix + name);
  MP_CHECK(it != all.end(), "model: missing parameter \"", prefix + name, "\"");
  return it->second;
}
at::Tensor Params::optional(const std::string& name) const {
  auto it = all.find(prefix + name);
  return it == all.end() ? at::Tensor() : it->second;
}
}  // namespace model

NemotronH::NemotronH(ModelConfig config, std::map<std::string, at::Tensor> params)
    : config_(std::move(config)), params_(std::move(params)) {
  config_.validate();
  for (auto& spec : expected_tensors(config_)) {
    auto it = params_.find(spec.name);
    MP_CHECK(it != params_.end(), "model: parameter \"", spec.name, "\" is missing");
    MP_CHECK(it->second.sizes().vec() == spec.shape, "model: parameter \"", spec.name, "\" has shape ",
             it->second.sizes(), ", the config implies ", at::IntArrayRef(spec.shape));
  }
}

NemotronH NemotronH::load(const Checkpoint& ck, c10::Device device, at::ScalarType dtype) {
  std::map<std::string, at::Tensor> params;
  for (auto& spec : expected_tensors(ck.config())) {
    // Copy: the checkpoint tensor is a read-only view of the mapped file. Tensors stored in float32 whatever the
    // model's dtype (the router's e_score_correction_bias, as transformers keeps it) stay at least float32.
    at::ScalarType t = spec.dtype ? at::promote_types(dtype, to_scalar_type(*spec.dtype)) : dtype;
    params[spec.name] = ck.tensor(spec.name).to(device, t, /*non_blocking=*/false, /*copy=*/true);
  }
  if (ck.config().tie_word_embeddings && ck.info("lm_head.weight").begin == ck.info("backbone.embeddings.weight").begin &&
      &ck.info("lm_head.weight") == &ck.info("backbone.embeddings.weight")) {
    params["lm_head.weight"] = params["backbone.embeddings.weight"];  // truly tied: train one tensor
  }
  NemotronH model(ck.config(), std::move(params));
  // MTP layers: not part of the forward pass (transformers ignores them too), kept as stored so save() writes them.
  for (const auto& name : ck.mtp_tensor_names())
    model.mtp_[name] = ck.tensor(name).to(at::kCPU, ck.tensor(name).scalar_type(), false, /*copy=*/true);
  return model;
}

NemotronH NemotronH::random_init(const ModelConfig& config, uint64_t seed, c10::Device device, at::ScalarType dtype) {
  // Initialisation as transformers' NemotronH: normal(0, 0.02) for linear and embedding weights, zero biases,
  // unit norms, A_log = log(1..H), D = 1, dt_bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max],
  // out_proj scaled by 1/sqrt(n_layers) (rescale_prenorm_residual).
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double std = 0.02;
  auto cpu = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, at::Tensor> params;
  for (auto& spec : expected_tensors(config)) {
    const std::string& n = spec.name;
    auto ends_with = [&](const char* s) {
      std::string suffix(s);
      return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    at::Tensor t;
    if (ends_with("A_log")) {
      t = at::log(at::arange(1, config.mamba_num_heads + 1, cpu));
    } else if (ends_with(".D") || ends_with("norm.weight") || ends_with("norm_f.weight")) {
      t = at::ones(spec.shape, cpu);
    } else if (ends_with("dt_bias")) {
      const double lo = std::log(0.001), hi = std::log(0.1);
      at::Tensor dt = at::exp(at::rand(spec.shape, gen, cpu) * (hi - lo) + lo).clamp_min(1e-4);
      t = dt + at::log(-at::expm1(-dt));
    } else if (ends_with("bias")) {
      t = at::zeros(spec.shape, cpu);
    } else if (ends_with("conv1d.weight")) {
      const double bound = 1.0 / std::sqrt(double(config.conv_kernel));  // PyTorch's Conv1d default
      t = at::empty(spec.shape, cpu).uniform_(-bound, bound, gen);
    } else {
      t = at::empty(spec.shape, cpu).normal_(0.0, std, gen);
      if (ends_with("out_proj.weight")) t = t / std::sqrt(double(config.num_layers()));
    }
    params[n] = t.to(device, spec.dtype ? at::promote_types(dtype, to_scalar_type(*spec.dtype)) : dtype);
  }
  if (config.tie_word_embeddings) params["lm_head.weight"] = params["backbone.embeddings.weight"];  // one tensor
  return NemotronH(config, std::move(params));
}

at::Tensor NemotronH::lm_head_weight() const {
  return params_.at("lm_head.weight");
}

at::Tensor NemotronH::embed(const at::Tensor& input_ids) const {
  MP_CHECK(input_ids.dim() == 2, "model: input_ids must be [batch, seq], found ", input_ids.sizes());
  return at::embedding(params_.at("backbone.embeddings.weight"), input_ids.to(device(), at::kLong));
}

at::Tensor NemotronH::forward_layer(int64_t i, const at::Tensor& h, const ForwardOptions& options) const {
  return forward_layer(i, h, params_, options);
}

at::Tensor NemotronH::forward_layer(int64_t i, const at::Tensor& h, const std::map<std::string, at::Tensor>& weights,
                                    const ForwardOptions& options) const {
  MP_CHECK(i >= 0 && i < config_.num_layers(), "model: layer ", i, " does not exist; the model has ",
           config_.num_layers(), " layers");
  MP_CHECK(options.skip_layers.empty() || (int64_t)options.skip_layers.size() == config_.num_layers(),
           "model: skip_layers has ", options.skip_layers.size(), " entries for ", config_.num_layers(), " layers");
  const LayerMask* mask = nullptr;
  if (options.masks) {
    auto it = options.masks->find(i);
    if (it != options.masks->end()) mask = &it->second;
  }
  model::LayerContext ctx{config_, i, options, mask};
  ctx.tap(Tap::LayerInput, h);
  if (!options.skip_layers.empty() && options.skip_layers[i]) {
    ctx.tap(Tap::LayerOutput, h);
    return h;
  }
  std::string prefix = "backbone.layers." + std::to_string(i) + ".";
  auto norm = weights.find(prefix + "norm.weight");
  MP_CHECK(norm != weights.end(), "model: missing parameter \"", prefix, "norm.weight\"");
  at::Tensor norm_w = norm->second;
  at::Tensor normed = model::rms_norm(h.to(norm_w.scalar_type()), norm_w, config_.layer_norm_epsilon);
  ctx.tap(Tap::NormOutput, normed);
  model::Params p{weights, prefix + "mixer."};
  at::Tensor out;
  switch (config_.layers[i]) {
    case LayerType::Mamba: out = model::mamba2_mixer(ctx, p, normed); break;
    case LayerType::Attention: out = model::attention_mixer(ctx, p, normed); break;
    case LayerType::Mlp: out = model::mlp_mixer(ctx, p, normed); break;
    case LayerType::Moe: out = model::moe_mixer(ctx, p, normed); break;
  }
  at::Tensor next = h + out;
  ctx.tap(Tap::LayerOutput, next);
  return next;
}

at::Tensor NemotronH::final_norm(const at::Tensor& h) const {
  return model::rms_norm(h, params_.at("backbone.norm_f.weight"), config_.layer_norm_epsilon);
}

at::Tensor NemotronH::logits(const at::Tensor& final_hidden) const {
  return at::linear(final_hidden, lm_head_weight()).to(at::kFloat);
}

std::vector<at::Tensor> NemotronH::layer_parameters(int64_t i) const {
  MP_CHECK(i >= 0 && i < config_.num_layers(), "model: layer ", i, " does not exist; the model has ",
           config_.num_layers(), " layers");
  const std::string prefix = "backbone.layers." + std::to_string(i) + ".";
  std::vector<at::Tensor> out;
  for (auto it = params_.lower_bound(prefix); it != params_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it)
    out.push_back(it->second);
  return out;
}

at::Tensor NemotronH::forward_hidden(const at::Tensor& input_ids, const ForwardOptions& options) const {
  MP_CHECK(options.skip_layers.empty() || (int64_t)options.skip_layers.size() == config_.num_layers(),
           "model: skip_layers has ", options.skip_layers.size(), " entries for ", config_.num_layers(), " layers");
  at::Tensor h = embed(input_ids);
  for (int64_t i = 0; i < config_.num_layers(); ++i) h = forward_layer(i, h, options);
  h = final_norm(h);
  if (options.observer && options.observer->wants(Tap::FinalHidden, -1)) options.observer->observe(Tap::FinalHidden, -1, h);
  return h;
}

at::Tensor NemotronH::forward(const at::Tensor& input_ids, const ForwardOptions& options) const {
  return logits(forward_hidden(input_ids, options));
}

void NemotronH::set_requires_grad(bool requires_grad) {
  // The router's e_score_correction_bias is a buffer in transformers (set by the load-balancing rule, not by
  // gradients; it only selects experts, so no gradient reaches it anyway).
  for (auto& [name, t] : params_)
    t.set_requires_grad(requires_grad && name.find("e_score_correction_bias") == std::string::npos);
}

void NemotronH::drop_mtp() {
  mtp_.clear();
  config_.num_nextn_predict_layers = 0;
}

int64_t NemotronH::num_parameters() const { return count_parameters(config_); }
c10::Device NemotronH::device() const { return params_.begin()->second.device(); }
at::ScalarType NemotronH::dtype() const { return params_.at("backbone.embeddings.weight").scalar_type(); }

void NemotronH::save(const std::string& out_dir, DType storage, const std::vector<std::string>& copy_files,
                     bool overwrite, uint64_t max_shard_bytes) const {
  CheckpointWriteOptions options;
  options.dtype = storage;
  options.copy_files = copy_files;
  options.max_shard_bytes = max_shard_bytes;
  std::vector<TensorSpec> specs = expected_tensors(config_);
  for (auto& [name, t] : mtp_) {
    TensorSpec spec{name, t.sizes().vec(), {}};
    if (t.scalar_type() == at::kFloat && name.find("e_score_correction_bias") != std::string::npos) spec.dtype = DType::F32;
    specs.push_back(spec);
  }
  write_checkpoint(out_dir, config_, specs,
                   [&](const TensorSpec& s) {
                     auto it = mtp_.find(s.name);
                     return it != mtp_.end() ? it->second : params_.at(s.name).detach();
                   },
                   options, overwrite);
}

}  // namespace mp
