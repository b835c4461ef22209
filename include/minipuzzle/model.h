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
};

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
};

}  // namespace mp
