// Layer streaming (see include/minipuzzle/layer_stream.h): host copies of the layer tensors, two device slots that
// alternate (the layer handed out, and the next one being copied on a side stream), and the layers that fit the
// budget beside them kept on the device.
//
// On CUDA each slot is one buffer of the widest layer's size, allocated once; a layer's tensors are views into it.
// Allocating every layer's tensors afresh on the copy stream (as a first version did) leaves the caching allocator
// with blocks that belong to that stream and cannot serve the compute stream's activations: under a
// --max-gpu-memory cap the 12B ran out of memory from that fragmentation alone (H200, 16 GiB).
#include "minipuzzle/layer_stream.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "minipuzzle/error.h"

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/AllocatorConfig.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace mp {

namespace {

// "backbone.layers.<i>.<rest>" -> i, else -1.
int64_t layer_of(const std::string& name) {
  static const std::string prefix = "backbone.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t end = name.find('.', prefix.size());
  if (end == std::string::npos) return -1;
  return std::stoll(name.substr(prefix.size(), end - prefix.size()));
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

constexpr size_t kAlign = 4096;
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// One exact-size host allocation per layer (page-locked on CUDA when possible). ATen's pinned allocator rounds
// each block up to a power of two (a 337 MB Mamba layer of the 12B would take 512 MB), so it is not used here.
struct HostBlock {
  void* data = nullptr;
  size_t bytes = 0;
  bool registered = false;
  explicit HostBlock(size_t n) : bytes(round_up(std::max<size_t>(n, 1), kAlign)) {
    data = std::aligned_alloc(kAlign, bytes);
    MP_CHECK(data != nullptr, "layer streaming: cannot allocate ", bytes, " bytes of host memory for a layer's weights");
  }
  ~HostBlock() {
#ifdef MINIPUZZLE_WITH_CUDA
    if (registered) cudaHostUnregister(data);
#endif
    std::free(data);
  }
  bool pin() {
#ifdef MINIPUZZLE_WITH_CUDA
    registered = cudaHostRegister(data, bytes, cudaHostRegisterDefault) == cudaSuccess;
    if (!registered) cudaGetLastError();  // clear the error: the copies fall back to synchronous ones
#endif
    return registered;
  }
};

}  // namespace

struct LayerStreamer::Impl {
  ModelConfig config;
  c10::Device device{c10::kCPU};
  at::ScalarType dtype = at::kFloat;
  int64_t budget = 0;
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> host;  // per layer, in name order
  std::vector<std::unique_ptr<HostBlock>> blocks;
  std::map<int64_t, std::map<std::string, at::Tensor>> resident;
  struct Slot {
    int64_t layer = -1;
    bool handed_out = false;  // since its copy started
    std::map<std::string, at::Tensor> weights;
    at::Tensor buffer;  // CUDA: bytes of the widest layer; the weights are views into it
#ifdef MINIPUZZLE_WITH_CUDA
    std::optional<at::cuda::CUDAEvent> ready;
#endif
  };
  Slot slots[2];
  int current = 0;  // the slot handed out last
  bool pinned = false;
#ifdef MINIPUZZLE_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> copy_stream;
#endif
};

int64_t LayerStreamer::layer_bytes(const ModelConfig& config, int64_t layer, at::ScalarType dtype) {
  int64_t n = 0;
  for (auto& spec : expected_tensors(config))
    if (layer_of(spec.name) == layer) n += numel(spec.shape);
  return n * int64_t(c10::elementSize(dtype));
}

int64_t LayerStreamer::non_layer_bytes(const ModelConfig& config, at::ScalarType dtype) {
  int64_t n = 0;
  for (auto& spec : expected_tensors(config)) {
    if (layer_of(spec.name) >= 0) continue;
    if (spec.name == "lm_head.weight" && config.tie_word_embeddings) continue;  // one tensor when tied
    n += numel(spec.shape);
  }
  return n * int64_t(c10::elementSize(dtype));
}

int64_t LayerStreamer::min_weight_bytes(const ModelConfig& config, at::ScalarType dtype) {
  int64_t widest = 0;
  for (int64_t i = 0; i < config.num_layers(); ++i) widest = std::max(widest, layer_bytes(config, i, dtype));
  return non_layer_bytes(config, dtype) + 2 * widest;
}

int64_t LayerStreamer::device_free_bytes(c10::Device device) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device);
    size_t free = 0, total = 0;
    MP_CHECK(cudaMemGetInfo(&free, &total) == cudaSuccess, "layer streaming: cudaMemGetInfo failed on ", device.str());
    return int64_t(free);
  }
#endif
  return -1;
}

void LayerStreamer::limit_device_memory(c10::Device device, int64_t bytes) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device);
    size_t free = 0, total = 0;
    MP_CHECK(cudaMemGetInfo(&free, &total) == cudaSuccess, "layer streaming: cudaMemGetInfo failed on ", device.str());
    const double fraction = std::min(1.0, double(bytes) / double(total));
    // The caching allocator initialises on the first allocation; before it, setMemoryFraction fails with
    // "Allocator not initialized for device" (seen on the H200 with `score --max-gpu-memory 16GiB`).
    (void)at::empty({1}, at::TensorOptions().device(device).dtype(at::kByte));
    c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device.index() < 0 ? 0 : device.index());
    // Growing segments instead of one fixed segment per large request: under a cap, activations of changing sizes
    // (the depth sweep's prefix and suffix passes) otherwise leave free memory split into pieces none fits.
    c10::CachingAllocator::setAllocatorSettings("expandable_segments:True");
  }
#endif
}

LayerStreamer::LayerStreamer(const ModelConfig& config, c10::Device device, at::ScalarType dtype,
                             int64_t weight_budget_bytes)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->device = device;
  impl_->dtype = dtype;
  impl_->budget = weight_budget_bytes;
  impl_->host.resize(config.num_layers());
}

LayerStreamer::~LayerStreamer() {
#ifdef MINIPUZZLE_WITH_CUDA
  // Copies may still read the host blocks: wait for them before the blocks are freed.
  if (impl_ && impl_->copy_stream) impl_->copy_stream->synchronize();
  if (impl_ && impl_->device.is_cuda()) c10::cuda::getCurrentCUDAStream(impl_->device.index()).synchronize();
#endif
}

std::unique_ptr<LayerStreamer> LayerStreamer::open(const Checkpoint& ck, c10::Device device, at::ScalarType dtype,
                                                   int64_t weight_budget_bytes) {
  const bool tied = ck.config().tie_word_embeddings &&
                    &ck.info("lm_head.weight") == &ck.info("backbone.embeddings.weight");
  return build(ck.config(), device, dtype, weight_budget_bytes, tied,
               [&](const std::string& name) { return ck.tensor(name); });
}

std::unique_ptr<LayerStreamer> LayerStreamer::from_model(const NemotronH& model, c10::Device device,
                                                         at::ScalarType dtype, int64_t weight_budget_bytes) {
  const auto& p = model.parameters();
  const bool tied = p.at("lm_head.weight").is_same(p.at("backbone.embeddings.weight"));
  return build(model.config(), device, dtype, weight_budget_bytes, tied,
               [&](const std::string& name) { return p.at(name).detach(); });
}

std::unique_ptr<LayerStreamer> LayerStreamer::build(const ModelConfig& config, c10::Device device,
                                                    at::ScalarType dtype, int64_t weight_budget_bytes, bool tied,
                                                    const std::function<at::Tensor(const std::string&)>& source) {
  std::unique_ptr<LayerStreamer> s(new LayerStreamer(config, device, dtype, weight_budget_bytes));
  Impl& m = *s->impl_;
  const int64_t L = config.num_layers();
  int64_t widest = 0;
  for (int64_t i = 0; i < L; ++i) widest = std::max(widest, layer_bytes(config, i, dtype));
  const int64_t fixed = non_layer_bytes(config, dtype) + 2 * widest;
  MP_CHECK(weight_budget_bytes >= fixed, "layer streaming: ", weight_budget_bytes >> 20,
           " MiB of device memory for weights is too little: the embeddings, final norm and lm_head (",
           non_layer_bytes(config, dtype) >> 20, " MiB) and two layers in flight (", (2 * widest) >> 20,
           " MiB) need ", fixed >> 20, " MiB; give more memory, or a smaller --batch-size / --seq-len");
#ifdef MINIPUZZLE_WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (device.is_cuda()) {
    guard.emplace(device);
    m.copy_stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
  }
#endif
  // Host copies, one block per layer, in the model dtype (the conversion from the checkpoint's dtype happens once).
  std::map<std::string, at::Tensor> params;
  std::map<int64_t, std::vector<TensorSpec>> per_layer;
  for (auto& spec : expected_tensors(config)) {
    const int64_t layer = layer_of(spec.name);
    if (layer >= 0) {
      per_layer[layer].push_back(spec);
    } else if (!(tied && spec.name == "lm_head.weight")) {
      params[spec.name] = source(spec.name).to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
    }
  }
  if (tied) params["lm_head.weight"] = params.at("backbone.embeddings.weight");
  bool all_pinned = device.is_cuda();
  const int64_t element = int64_t(c10::elementSize(dtype));
  for (auto& [layer, specs] : per_layer) {
    size_t bytes = 0;
    for (auto& spec : specs) bytes += round_up(size_t(numel(spec.shape) * element), 256);
    auto block = std::make_unique<HostBlock>(bytes);
    size_t offset = 0;
    for (auto& spec : specs) {
      at::Tensor t = at::from_blob(static_cast<char*>(block->data) + offset, spec.shape,
                                   at::TensorOptions().dtype(dtype).device(at::kCPU));
      t.copy_(source(spec.name));
      offset += round_up(size_t(numel(spec.shape) * element), 256);
      m.host[layer].emplace_back(spec.name, t);
      params[spec.name] = t;
    }
    if (device.is_cuda()) all_pinned = block->pin() && all_pinned;
    m.blocks.push_back(std::move(block));
  }
  m.pinned = all_pinned;
  s->stats_.pinned = all_pinned;
  if (device.is_cuda()) {
    // The two slots, allocated once on the compute stream (see the top of this file).
    size_t slot_bytes = 0;
    for (auto& layer : m.host) {
      size_t bytes = 0;
      for (auto& [name, t] : layer) bytes += round_up(size_t(t.numel() * element), 256);
      slot_bytes = std::max(slot_bytes, bytes);
    }
    for (auto& slot : m.slots)
      slot.buffer = at::empty({int64_t(std::max<size_t>(slot_bytes, 1))}, at::TensorOptions().device(device).dtype(at::kByte));
  }
  s->model_ = std::make_unique<NemotronH>(config, std::move(params));
  // Layers kept on the device: the last ones first (depth scoring runs layer j once for every layer before it).
  int64_t left = weight_budget_bytes - fixed;
  for (int64_t i = L - 1; i >= 0; --i) {
    const int64_t b = layer_bytes(config, i, dtype);
    if (b > left) break;
    left -= b;
    auto& w = m.resident[i];
    for (auto& [name, t] : m.host[i]) w[name] = t.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
  }
  s->stats_.resident_layers = int64_t(m.resident.size());
  return s;
}

void LayerStreamer::start_copy(int64_t layer, int slot) {
  Impl& m = *impl_;
  Impl::Slot& s = m.slots[slot];
  s.weights.clear();
  s.layer = layer;
  s.handed_out = false;
#ifdef MINIPUZZLE_WITH_CUDA
  if (m.device.is_cuda()) {
    // The slot's previous layer may still be read by work queued on the compute stream: the copy waits for it.
    at::cuda::CUDAEvent slot_free;
    slot_free.record(c10::cuda::getCurrentCUDAStream(m.device.index()));
    slot_free.block(*m.copy_stream);
    c10::cuda::CUDAStreamGuard guard(*m.copy_stream);
    const int64_t element = int64_t(c10::elementSize(m.dtype));
    int64_t offset = 0;
    for (auto& [name, t] : m.host[layer]) {
      const int64_t bytes = t.numel() * element;
      at::Tensor d = s.buffer.narrow(0, offset, bytes).view(m.dtype).view(t.sizes());
      d.copy_(t, /*non_blocking=*/m.pinned);
      s.weights[name] = d;
      offset += int64_t(round_up(size_t(bytes), 256));
    }
    s.ready.emplace();
    s.ready->record(*m.copy_stream);
  } else
#endif
  {
    for (auto& [name, t] : m.host[layer]) s.weights[name] = t.to(m.device, m.dtype, false, /*copy=*/true);
  }
  ++stats_.loads;
  stats_.bytes_loaded += layer_bytes(m.config, layer, m.dtype);
}

const std::map<std::string, at::Tensor>& LayerStreamer::weights(int64_t layer, int64_t next) {
  Impl& m = *impl_;
  const int64_t L = m.config.num_layers();
  MP_CHECK(layer >= 0 && layer < L, "layer streaming: layer ", layer, " does not exist; the model has ", L, " layers");
  const std::map<std::string, at::Tensor>* out = nullptr;
  auto r = m.resident.find(layer);
  if (r != m.resident.end()) {
    out = &r->second;
  } else {
    int s = m.slots[0].layer == layer ? 0 : m.slots[1].layer == layer ? 1 : -1;
    if (s >= 0) {
      if (!m.slots[s].handed_out) ++stats_.prefetch_hits;  // copied ahead, on the side stream
    } else {
      s = 1 - m.current;
      start_copy(layer, s);  // a miss: the compute stream waits for this copy
    }
    m.slots[s].handed_out = true;
#ifdef MINIPUZZLE_WITH_CUDA
    if (m.device.is_cuda()) {
      c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(m.device.index());
      m.slots[s].ready->block(compute);  // work queued from now on waits for the copy, the host does not
    }
#endif
    m.current = s;
    out = &m.slots[s].weights;
  }
  if (next >= 0 && next < L && next != layer && !m.resident.count(next) && m.slots[0].layer != next &&
      m.slots[1].layer != next) {
    // The slot not handed out now; if this layer is resident, either slot is free to take it.
    start_copy(next, 1 - m.current);  // never the slot just handed out
  }
  return *out;
}

}  // namespace mp
