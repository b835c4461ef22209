// Layer streaming: running a model whose weights do not fit the accelerator (issue 19). The layer weights stay in
// host memory and are copied to the device layer by layer, the copy of the next layer overlapping the compute of the
// current one (a separate CUDA stream and events); the non-layer tensors (embeddings, final norm, lm_head) are
// copied once and stay. Layers that fit the budget beside the two in flight are kept on the device (the last ones
// first: depth scoring runs them most often). Used by `minipuzzle score --max-gpu-memory`.
//
// Host memory: every layer tensor once, in the model dtype. On CUDA it is page-locked (cudaHostRegister on an
// exact-size allocation) so that copies run asynchronously at full PCIe speed; if locking fails the copies are
// synchronous (slower, same results). On CPU the "device copy" is a copy into fresh tensors, so that the streaming
// logic (budget, slots, prefetch order) runs and is tested without a GPU.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/model.h"

namespace mp {

class LayerStreamer {
 public:
  // From a checkpoint: layer tensors read from the mapped files into host memory, the others onto `device`.
  // `weight_budget_bytes`: device memory the weights may take (non-layer tensors + two layers in flight + the
  // layers kept resident). Throws when even the non-layer tensors and two layers do not fit.
  static std::unique_ptr<LayerStreamer> open(const Checkpoint& ck, c10::Device device, at::ScalarType dtype,
                                             int64_t weight_budget_bytes);
  // From a model in memory (tests, benchmarks): its tensors are copied, the model is not changed.
  static std::unique_ptr<LayerStreamer> from_model(const NemotronH& model, c10::Device device, at::ScalarType dtype,
                                                   int64_t weight_budget_bytes);
  ~LayerStreamer();
  LayerStreamer(const LayerStreamer&) = delete;
  LayerStreamer& operator=(const LayerStreamer&) = delete;

  // The model with its non-layer tensors on the device and its layer tensors on the host: call
  // model().forward_layer(i, h, weights(i, next), options), never forward_layer(i, h, options).
  const NemotronH& model() const { return *model_; }
  // Layer `layer`'s tensors on the device, by full name, ready for work queued on the current stream after this
  // call. Starts copying layer `next` (-1: none) on the copy stream. Valid until the next call.
  const std::map<std::string, at::Tensor>& weights(int64_t layer, int64_t next = -1);

  // Free memory of a CUDA device (-1 for other devices), and a cap on what ATen's CUDA allocator may hold there (so
  // that a run given --max-gpu-memory stays within it or fails with an out-of-memory error).
  static int64_t device_free_bytes(c10::Device device);
  static void limit_device_memory(c10::Device device, int64_t bytes);

  // Bytes of layer `layer`'s tensors in `dtype`, and of the non-layer tensors.
  static int64_t layer_bytes(const ModelConfig& config, int64_t layer, at::ScalarType dtype);
  static int64_t non_layer_bytes(const ModelConfig& config, at::ScalarType dtype);
  // The least weight budget streaming takes: the non-layer tensors and the two widest layers (in flight).
  static int64_t min_weight_bytes(const ModelConfig& config, at::ScalarType dtype);

  struct Stats {
    int64_t resident_layers = 0;  // kept on the device for the whole run
    int64_t loads = 0;            // layer copies to the device
    int64_t bytes_loaded = 0;
    int64_t prefetch_hits = 0;    // copies started one layer ahead (the others were waited for)
    bool pinned = false;          // host copies page-locked (asynchronous copies)
  };
  const Stats& stats() const { return stats_; }

 private:
  LayerStreamer(const ModelConfig& config, c10::Device device, at::ScalarType dtype, int64_t weight_budget_bytes);
  static std::unique_ptr<LayerStreamer> build(const ModelConfig& config, c10::Device device, at::ScalarType dtype,
                                              int64_t weight_budget_bytes, bool tied,
                                              const std::function<at::Tensor(const std::string&)>& source);
  void start_copy(int64_t layer, int slot);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<NemotronH> model_;
  Stats stats_;
};

}  // namespace mp
