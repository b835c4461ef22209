// AdamW on fp32 master weights, through ATen's fused multi-tensor kernel (_fused_adamw_: one launch per group
// on CUDA, a vectorised loop on CPU), and global gradient-norm clipping.
//
// Optimizer offload (issue 20): for the offloaded share of the parameters the fp32 master and the moments are
// plain host tensors. A step streams each offloaded gradient to the host in pieces of at most kPiece elements
// through a ring of pinned staging buffers (a side CUDA stream; the copy of piece j+R runs while piece j is
// updated), updates the piece on all cores (at::parallel_for over 64k-element chunks, each running the same CPU
// _fused_adamw_ the resident path runs on CPU tensors), rounds the master into the staging buffer and streams it
// back into the parameter. The resident part's update is queued on the GPU first, so it runs beside the host work.
// Piece and chunk boundaries fall on multiples of 1024 elements from each tensor's start: the CPU kernel works in
// 64-byte-aligned units with a scalar loop only at a tensor's end, so the same elements take the same path as in
// one whole-tensor call, and the result is bit for bit the resident one on CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#ifdef MINIPUZZLE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <chrono>
#include <cmath>
#include <optional>
#include <set>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

bool AdamW::decays(const std::string& name, const at::Tensor& param) {
  // Flat shards of sharded training (distill/fsdp.cpp) say by name which range they cover.
  if (name.rfind("flat.decay/", 0) == 0) return true;
  if (name.rfind("flat.nodecay/", 0) == 0) return false;
  return param.dim() >= 2;
}

namespace {
constexpr int64_t kPiece = int64_t(32) << 20;  // elements per staged piece (64 MiB of bf16)
constexpr int64_t kChunk = int64_t(64) << 10;  // elements per host thread task
constexpr int kRing = 4;                       // staging buffers in flight
}  // namespace

struct AdamW::Offload {
  struct Piece {
    size_t param;
    int64_t offset, length;
  };
  std::vector<Piece> pieces;
  std::vector<size_t> todo;  // this step's pieces whose parameter has a gradient
  bool device_is_cuda = false;
  std::vector<at::Tensor> staging;  // kRing pinned buffers of kPiece elements in the parameters' dtype (CUDA)
#ifdef MINIPUZZLE_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> stream;
  std::vector<at::cuda::CUDAEvent> arrived;  // per ring slot: the gradient piece is on the host
#endif
};

AdamW::AdamW(const std::map<std::string, at::Tensor>& params, AdamWOptions options, double offload_fraction)
    : options_(options) {
  MP_CHECK(offload_fraction >= 0 && offload_fraction <= 1, "distill: the offloaded fraction of the optimizer state must "
           "lie in [0, 1], found ", offload_fraction);
  at::NoGradGuard no_grad;
  std::set<const void*> seen;  // tied parameters are one tensor under two names
  int64_t total = 0;
  for (auto& [name, p] : params) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    MP_CHECK(p.is_floating_point(), "distill: parameter ", name, " is not floating point (", p.scalar_type(), ")");
    names_.push_back(name);
    params_.push_back(p);
    decay_.push_back(decays(name, p));
    total += p.numel();
  }
  // Whole tensors in name order until the fraction is reached (the last one may overshoot it by one tensor).
  int64_t offloaded = 0;
  for (auto& p : params_) {
    const bool off = offload_fraction > 0 && double(offloaded) < offload_fraction * double(total);
    offloaded_.push_back(off);
    if (off) offloaded += p.numel();
  }
  const auto host = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    if (offloaded_[i]) {
      // The host master is its own tensor even for fp32 parameters: the update never writes the tensor it reads.
      masters_.push_back(p.detach().to(host, /*non_blocking=*/false, /*copy=*/true).contiguous());
      exp_avg_.push_back(at::zeros(p.sizes(), host));
      exp_avg_sq_.push_back(at::zeros(p.sizes(), host));
    } else {
      masters_.push_back(p.scalar_type() == at::kFloat ? p : p.detach().to(at::kFloat).clone());
      exp_avg_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
      exp_avg_sq_.push_back(at::zeros(p.sizes(), p.options().dtype(at::kFloat)));
    }
  }
  if (offloaded == 0) return;
  offload_ = std::make_unique<Offload>();
  at::ScalarType staged = at::kFloat;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!offloaded_[i]) continue;
    MP_CHECK(params_[i].is_contiguous(), "distill: offloaded parameter ", names_[i], " is not contiguous");
    for (int64_t off = 0; off < params_[i].numel(); off += kPiece)
      offload_->pieces.push_back({i, off, std::min(kPiece, params_[i].numel() - off)});
    offload_->device_is_cuda = params_[i].is_cuda();
    staged = params_[i].scalar_type();
  }
  if (offload_->device_is_cuda) {
#ifdef MINIPUZZLE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(params_[0].device());
    offload_->stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, params_[0].device().index());
    for (int k = 0; k < kRing; ++k) {
      offload_->staging.push_back(at::empty({kPiece}, at::TensorOptions().dtype(staged).pinned_memory(true)));
      offload_->arrived.emplace_back();
    }
#else
    fail("distill: optimizer offload of CUDA parameters needs a build with CUDA");
#endif
  }
}

AdamW::~AdamW() = default;

int64_t AdamW::offloaded_elements() const {
  int64_t n = 0;
  for (size_t i = 0; i < params_.size(); ++i)
    if (offloaded_[i]) n += params_[i].numel();
  return n;
}

int64_t AdamW::total_elements() const {
  int64_t n = 0;
  for (auto& p : params_) n += p.numel();
  return n;
}

void AdamW::step(double lr) {
  const auto t0 = std::chrono::steady_clock::now();
  at::NoGradGuard no_grad;
  ++steps_;
  // Offloaded gradients start down to the host before the resident update is queued, so the copies, the host
  // update and the GPU's resident update run side by side.
  if (offload_) offload_begin();
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
        if (offloaded_[i] || decay_[i] != decay || !params_[i].grad().defined()) continue;
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
  last_host_seconds_ = 0;
  if (offload_) {
    const auto h0 = std::chrono::steady_clock::now();
    step_offloaded(lr);
    last_host_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count();
  }
#ifdef MINIPUZZLE_WITH_CUDA
  // The resident update runs asynchronously; wait for it so that the step's time share is its own.
  if (!params_.empty() && params_[0].is_cuda()) c10::cuda::device_synchronize();
#endif
  last_step_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

#ifdef MINIPUZZLE_WITH_CUDA
namespace {
// Queues piece todo[k]'s gradient into its ring slot on the side stream.
void fetch_piece(AdamW::Offload& o, const std::vector<at::Tensor>& params, size_t k);
}  // namespace
#endif

void AdamW::offload_begin() {
  Offload& o = *offload_;
  o.todo.clear();
  for (size_t j = 0; j < o.pieces.size(); ++j)
    if (params_[o.pieces[j].param].grad().defined()) o.todo.push_back(j);
  if (o.todo.empty() || !o.device_is_cuda) return;
#ifdef MINIPUZZLE_WITH_CUDA
  const c10::Device device = params_[o.pieces[o.todo[0]].param].device();
  const c10::cuda::CUDAGuard guard(device);
  // The gradients are final once the compute stream's work so far (backward, clipping) is done.
  at::cuda::CUDAEvent grads_ready;
  grads_ready.record(c10::cuda::getCurrentCUDAStream(device.index()));
  grads_ready.block(*o.stream);
  for (size_t k = 0; k < o.todo.size() && k < size_t(kRing); ++k) fetch_piece(o, params_, k);
#endif
}

#ifdef MINIPUZZLE_WITH_CUDA
namespace {
void fetch_piece(AdamW::Offload& o, const std::vector<at::Tensor>& params, size_t k) {
  const AdamW::Offload::Piece& piece = o.pieces[o.todo[k]];
  const c10::cuda::CUDAStreamGuard on_side(*o.stream);
  const at::Tensor g = params[piece.param].grad().reshape(-1).narrow(0, piece.offset, piece.length);
  o.staging[k % kRing].narrow(0, 0, piece.length).copy_(g, /*non_blocking=*/true);
  o.arrived[k % kRing].record(*o.stream);
}
}  // namespace
#endif

void AdamW::step_offloaded(double lr) {
  Offload& o = *offload_;
  const std::vector<size_t>& todo = o.todo;
  if (todo.empty()) return;
  const at::Tensor step_count = at::full({}, double(steps_), at::TensorOptions().dtype(at::kFloat));

  // The update of one piece on the host: g (float32 or lower) into master/m/v at [offset, offset + length), and the
  // updated master rounded into `out` (the parameter's dtype) chunk by chunk while the chunk is still in cache:
  // a separate rounding pass over the piece read every master a second time from memory, and the host update is
  // bound by memory bandwidth (about 28 bytes per parameter this way). `out` may alias g: a chunk of g is read
  // (converted into its own fp32 tensor, or read by the update) before the same chunk of `out` is written.
  auto update = [&](const Offload::Piece& piece, const at::Tensor& g, const at::Tensor& out) {
    const size_t i = piece.param;
    const at::Tensor master = masters_[i].view(-1).narrow(0, piece.offset, piece.length);
    const at::Tensor m = exp_avg_[i].view(-1).narrow(0, piece.offset, piece.length);
    const at::Tensor v = exp_avg_sq_[i].view(-1).narrow(0, piece.offset, piece.length);
    const double wd = decay_[i] ? options_.weight_decay : 0.0;
    at::parallel_for(0, (piece.length + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = c * kChunk, n = std::min(kChunk, piece.length - first);
        at::Tensor gc = g.narrow(0, first, n);
        if (gc.scalar_type() != at::kFloat) gc = gc.to(at::kFloat);
        const at::Tensor mc = master.narrow(0, first, n);
        at::_fused_adamw_({mc}, {gc}, {m.narrow(0, first, n)}, {v.narrow(0, first, n)},
                          /*max_exp_avg_sqs=*/{}, {step_count}, lr, options_.beta1, options_.beta2, wd, options_.eps,
                          /*amsgrad=*/false, /*maximize=*/false);
        out.narrow(0, first, n).copy_(mc);
      }
    });
  };

  if (!o.device_is_cuda) {
    for (size_t j : todo) {
      const Offload::Piece& piece = o.pieces[j];
      const at::Tensor param = params_[piece.param].view(-1).narrow(0, piece.offset, piece.length);
      const at::Tensor g = params_[piece.param].grad().reshape(-1).narrow(0, piece.offset, piece.length);
      update(piece, g, param);
    }
    return;
  }
#ifdef MINIPUZZLE_WITH_CUDA
  const c10::Device device = params_[o.pieces[todo[0]].param].device();
  const c10::cuda::CUDAGuard guard(device);
  for (size_t k = 0; k < todo.size(); ++k) {
    const Offload::Piece& piece = o.pieces[todo[k]];
    at::Tensor slot = o.staging[k % kRing].narrow(0, 0, piece.length);
    o.arrived[k % kRing].synchronize();
    update(piece, slot, slot);  // gradient in, rounded weights out, in the pinned buffer
    {
      const c10::cuda::CUDAStreamGuard on_side(*o.stream);
      params_[piece.param].view(-1).narrow(0, piece.offset, piece.length).copy_(slot, /*non_blocking=*/true);
    }
    // The next fetch into this slot is queued behind the upload on the same stream.
    if (k + kRing < todo.size()) fetch_piece(o, params_, k + kRing);
  }
  // The compute stream reads the parameters next: it waits for the last upload.
  at::cuda::CUDAEvent uploaded;
  uploaded.record(*o.stream);
  uploaded.block(c10::cuda::getCurrentCUDAStream(device.index()));
  // The caching allocator must not hand the gradients' memory to the compute stream before the side stream read it.
  for (size_t j : todo) params_[o.pieces[j].param].grad().record_stream(*o.stream);
#endif
}

std::map<std::string, at::Tensor> AdamW::state_tensors() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < names_.size(); ++i) {
    out["exp_avg/" + names_[i]] = exp_avg_[i];
    out["exp_avg_sq/" + names_[i]] = exp_avg_sq_[i];
    // An fp32 parameter is its own master (an offloaded one has a host copy equal to it): not stored twice.
    if (params_[i].scalar_type() != at::kFloat) out["master/" + names_[i]] = masters_[i];
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
    if (params_[i].scalar_type() != at::kFloat)
      load("master/" + names_[i], masters_[i]);
    else if (!masters_[i].is_same(params_[i]))
      masters_[i].copy_(params_[i]);  // offloaded fp32: the host master follows the loaded parameter
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
