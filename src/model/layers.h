// Internal to the model library: one function per layer type, each taking its weights explicitly.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <string>

#include "minipuzzle/config.h"
#include "minipuzzle/model.h"

namespace mp::model {

// Looks up `prefix + name`; undefined tensor when optional and absent.
struct Params {
  const std::map<std::string, at::Tensor>& all;
  std::string prefix;
  at::Tensor get(const std::string& name) const;
  at::Tensor optional(const std::string& name) const;
};

struct LayerContext {
  const ModelConfig& config;
  int64_t layer;
  const ForwardOptions& options;
  const LayerMask* mask;  // nullptr: no mask
  void tap(Tap t, const at::Tensor& value) const {
    if (options.observer && options.observer->wants(t, layer)) options.observer->observe(t, layer, value);
  }
  bool wants(Tap t) const { return options.observer && options.observer->wants(t, layer); }
};

// The dtype of norm statistics and of the SSD scan: float32 for bf16 / fp16 / fp32 models (as transformers), float64
// for float64 models, so that a float64 forward is float64 throughout (the pruner's exactness test relies on it).
inline at::ScalarType statistics_type(at::ScalarType t) { return at::promote_types(t, at::kFloat); }

// RMSNorm as transformers computes it: in float32 (statistics_type), weight applied there, cast back to input dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Mamba's gated RMSNorm: y * silu(z), normalised within each of n_groups groups, then times the weight.
// With a channel mask, masked channels are zero and the mean runs over kept channels only.
at::Tensor gated_rms_norm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& weight, int64_t n_groups,
                          double eps, const at::Tensor& channel_mask);

// Chunked SSD scan of Mamba-2 in statistics_type(x) (float32 but for float64 inputs). x [B,T,H,P], dt [B,T,H] (after
// softplus and clamp), A [H] (negative), Bm, Cm [B,T,G,N], D [H]. Returns y [B,T,H,P] in that dtype.
at::Tensor ssd_chunk_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                          const at::Tensor& Cm, const at::Tensor& D, int64_t chunk_size);

// The ATen scans (the CPU path, and CUDA shapes the fused kernel does not take, such as Nemotron Nano 12B v2's
// head_dim 80) hold every intermediate in float32, about 4 (10 P + 3 N + 5 Q) bytes per head and token (7.3 KB at
// the 12B's P 80, N 128, Q 128: 13.5 GiB at 4 x 4096 tokens and 128 heads). Heads and samples are independent, so
// mamba2_mixer runs those scans on slices of samples and heads (never of time) holding at most this many bytes.
int64_t ssd_aten_bytes_per_head_token(int64_t head_dim, int64_t state, int64_t chunk);
int64_t scan_slice_bytes();
void set_scan_slice_bytes(int64_t bytes);  // tests: force slicing on small shapes

at::Tensor mamba2_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h);
at::Tensor attention_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h);
at::Tensor mlp_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h);
at::Tensor moe_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h);

}  // namespace mp::model
