// The Nemotron-H hybrid model (Mamba-2 SSD, GQA attention, relu^2 MLP), following transformers' NemotronH
// exactly, so that logits match. CPU in fp32, CUDA in bf16. Differentiable (autograd) for distillation.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/config.h"

namespace mp {

// Named capture points, where importance scoring observes activations without copying model code.
enum class Tap {
  LayerInput,   // [B,T,H] residual stream entering a layer
  NormOutput,   // [B,T,H] the layer's pre-mixer RMSNorm output (embedding-channel importance)
  MambaX,       // [B,T,d_inner] x slice of in_proj's output (before conv): Mamba head / head_dim importance
  MambaY,       // [B,T,d_inner] gated-norm output, the input of out_proj
  AttnHeads,    // [B,T,heads*head_dim] attention output per head, the input of o_proj
  MlpAct,       // [B,T,ffn] relu^2 activation, the input of down_proj
  LayerOutput,  // [B,T,H] residual stream leaving a layer
  FinalHidden,  // [B,T,H] after the final norm, the input of lm_head (layer = -1)
  // Mixture-of-experts layers (computed only when an observer wants them):
  MoeShared,         // [B,T,S] the shared expert's relu^2 activation, the input of its down_proj
  MoeRouting,        // [B*T,E] each token's routing weight per expert (0 where not chosen)
  MoeExpertOutput,   // [B*T,E] ||routing weight x expert output|| per token and expert (0 where not chosen)
  MoeExpertChannels, // [E,F] per expert, the sum over its routed tokens of its relu^2 activation squared
};
const char* tap_name(Tap tap);

class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  virtual bool wants(Tap tap, int64_t layer) const = 0;
  virtual void observe(Tap tap, int64_t layer, const at::Tensor& value) = 0;
};

// 0/1 masks over a layer's units; an undefined tensor keeps everything. Masking is exactly equivalent to
// removing the units (the Mamba gated norm averages over kept channels only), which the pruner's tests use.
struct LayerMask {
  at::Tensor mlp_neurons;     // [ffn]
  at::Tensor attn_heads;      // [heads]
  at::Tensor mamba_channels;  // [d_inner]: a head is its head_dim channels; head_dim pruning masks positions
  // MoE: a masked expert can never be chosen (its router score is -inf, also within its group's ranking);
  // channel masks zero relu^2 activations; moe_top_k > 0 routes each token to that many experts instead.
  at::Tensor moe_experts;          // [E]
  at::Tensor moe_expert_channels;  // [E,F] or [F] (the same channels in every expert)
  at::Tensor moe_shared_channels;  // [S]
  int64_t moe_top_k = 0;
};

// One MoE layer's routing as transformers' NemotronHTopkRouter computes it, for inputs x [N,H] (the layer's
// normed input): sigmoid(x W^T) in float32 (float64 for float64 inputs); experts chosen by score +
// e_score_correction_bias, within the topk_group best of n_group groups (a group scores the sum of its two best);
// weights = the chosen scores (without the bias), normalised to sum 1 when norm_topk_prob, times
// routed_scaling_factor. `expert_mask` [E] (0: never chosen) and `top_k` (> 0) are the pruning masks above.
struct MoeRouting {
  at::Tensor scores;   // [N,E] sigmoid scores
  at::Tensor indices;  // [N,k] int64 chosen experts
  at::Tensor weights;  // [N,k] their weights
};
MoeRouting moe_route(const ModelConfig& config, const at::Tensor& gate_weight, const at::Tensor& correction_bias,
                     const at::Tensor& x, const at::Tensor& expert_mask = {}, int64_t top_k = 0);

struct ForwardOptions {
  ActivationObserver* observer = nullptr;
  std::vector<bool> skip_layers;                 // true: the layer is bypassed (depth importance)
  const std::map<int64_t, LayerMask>* masks = nullptr;
};

class NemotronH {
 public:
  // Loads every tensor of a checkpoint onto `device` in `dtype` (floating tensors only).
  static NemotronH load(const Checkpoint& ck, c10::Device device, at::ScalarType dtype);
  // Fresh weights for training from scratch, initialised as transformers does (seeded).
  static NemotronH random_init(const ModelConfig& config, uint64_t seed, c10::Device device, at::ScalarType dtype);
  NemotronH(ModelConfig config, std::map<std::string, at::Tensor> params);

  const ModelConfig& config() const { return config_; }
  // input_ids [B,T] int64 -> logits [B,T,V] in float32.
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& options = {}) const;
  // -> [B,T,H] final hidden state (after norm_f), in the model dtype; lm_head is left to the caller (fused KD).
  at::Tensor forward_hidden(const at::Tensor& input_ids, const ForwardOptions& options = {}) const;
  at::Tensor lm_head_weight() const;

  // The same stack one piece at a time, for callers that run the layers themselves (activation checkpointing):
  //   forward_hidden(ids, o) == final_norm(forward_layer(L-1, ... forward_layer(0, embed(ids), o) ..., o))
  //   forward(ids, o)        == logits(forward_hidden(ids, o))
  // bit for bit: forward_hidden and forward are written with these functions.
  at::Tensor embed(const at::Tensor& input_ids) const;  // [B,T] token ids -> [B,T,H] residual stream
  // Layer `layer`: pre-norm, mixer, residual add; taps, skip_layers and masks of `options` apply to it.
  at::Tensor forward_layer(int64_t layer, const at::Tensor& hidden, const ForwardOptions& options = {}) const;
  // The same with the layer's tensors given by full name (e.g. copies on the device of a model whose layer weights
  // live in host memory: LayerStreamer, layer_stream.h); the model's own tensors of that layer are not read.
  at::Tensor forward_layer(int64_t layer, const at::Tensor& hidden, const std::map<std::string, at::Tensor>& weights,
                           const ForwardOptions& options) const;
  at::Tensor final_norm(const at::Tensor& hidden) const;    // norm_f, in the model dtype (no FinalHidden tap)
  at::Tensor logits(const at::Tensor& final_hidden) const;  // lm_head, as float32
  // The tensors forward_layer(layer, ...) reads (its norm and mixer weights), in name order.
  std::vector<at::Tensor> layer_parameters(int64_t layer) const;

  // Parameters by Hugging Face name (`backbone.*`, `lm_head.weight`; tied models share one tensor for both).
  const std::map<std::string, at::Tensor>& parameters() const { return params_; }
  std::map<std::string, at::Tensor>& parameters() { return params_; }
  // Multi-token-prediction tensors (`mtp.*`) read by load(), kept on the CPU as stored and written back by save();
  // never trained. drop_mtp() removes them (and sets num_nextn_predict_layers to 0).
  const std::map<std::string, at::Tensor>& mtp_tensors() const { return mtp_; }
  void drop_mtp();
  void set_requires_grad(bool requires_grad);
  int64_t num_parameters() const;
  c10::Device device() const;
  at::ScalarType dtype() const;

  // Saves as a Hugging Face checkpoint (atomic; see write_checkpoint).
  void save(const std::string& out_dir, DType storage, const std::vector<std::string>& copy_files = {},
            bool overwrite = false, uint64_t max_shard_bytes = 5ull << 30) const;

 private:
  ModelConfig config_;
  std::map<std::string, at::Tensor> params_;
  std::map<std::string, at::Tensor> mtp_;
};

}  // namespace mp
