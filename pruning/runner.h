// How scoring runs the model's pieces (internal to the pruning library): with resident weights, or with layer
// weights streamed to the device by a LayerStreamer. Width and depth scoring call layers through this, so both
// paths execute the same operations in the same order (the streaming tests compare them on the CPU).
#pragma once
#include <ATen/core/Tensor.h>

#include "minipuzzle/layer_stream.h"
#include "minipuzzle/model.h"

namespace mp::importance {

class LayerRunner {
 public:
  explicit LayerRunner(const NemotronH& model) : model_(model) {}
  explicit LayerRunner(LayerStreamer& streamer) : model_(streamer.model()), streamer_(&streamer) {}

  // The model: on the device but for its layer weights when streaming (those stay on the host).
  const NemotronH& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  c10::Device device() const { return model_.device(); }
  bool streaming() const { return streamer_ != nullptr; }

  at::Tensor embed(const at::Tensor& ids) const { return model_.embed(ids); }
  // Layer `layer` on `h`; `next`: the layer that will run after it (-1: unknown), whose weights a streamer starts
  // copying while this one computes.
  at::Tensor layer(int64_t layer, const at::Tensor& h, const ForwardOptions& options, int64_t next = -1) const {
    // A skipped layer reads no weights: nothing to copy.
    const bool skipped = !options.skip_layers.empty() && options.skip_layers.at(layer);
    if (!streamer_ || skipped) return model_.forward_layer(layer, h, options);
    return model_.forward_layer(layer, h, streamer_->weights(layer, next), options);
  }
  at::Tensor final_norm(const at::Tensor& h) const { return model_.final_norm(h); }

 private:
  const NemotronH& model_;
  LayerStreamer* streamer_ = nullptr;
};

}  // namespace mp::importance
