// Importance scoring: calibration data -> scores for embedding channels, MLP neurons, attention heads, Mamba
// heads (ranked within their group) and head_dim positions, and depth (layer / block) importance, as the
// Minitron, Minitron-SSM, MiniPuzzle and Nemotron Nano 2 papers and NVIDIA's ModelOpt compute them.
// The data types and the scores.json reader and writer are in minipuzzle/scores.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"
#include "minipuzzle/scores.h"

namespace mp {

class NemotronH;

// scores.md and scores.html (SVG heat maps of depth and width scores) in `dir`.
void write_scores_report(const Scores& scores, const std::string& dir);

struct ScoreOptions {
  int64_t samples = 64;
  int64_t seq_len = 256;
  int64_t batch_size = 4;
  Reduction reduction = Reduction::MeanL2;
  bool width = true;
  bool depth = true;                 // one-layer-removed criteria (a forward per layer per batch)
  int64_t block_k = 0;               // also contiguous blocks of k layers (0: off)
  int64_t iterative_steps = 0;       // iterative removal: how many layers to remove (0: off)
  std::string iterative_criterion = "mse_logits";
  bool taylor = false;               // first-order Taylor (gradient x activation) as an extra criterion
  int64_t depth_samples = 0;         // samples used by the depth criteria (0: all)
  int64_t nested_head_dim = 0;       // also Minitron-SSM nested head scores over the top-k head_dim (0: off)
  // Logits are made, and losses, log-softmax, KL and MSE computed, a chunk of tokens at a time: at most this many
  // bytes of float32 logits per chunk (no [batch, seq, vocab] tensor exists). 256 MiB: 512 tokens at V = 131072;
  // depth scoring holds about four such buffers at once.
  int64_t logits_chunk_bytes = int64_t(256) << 20;
  bool expert_loss = false;          // MoE: LM-loss increase per removed expert (a forward per expert per MoE layer)
  // Layer streaming only: samples per forward through a layer (0: batch_size). A smaller value fits a smaller
  // --max-gpu-memory (score_stream_batch_size picks it); the statistics then sum the same samples in smaller groups.
  int64_t stream_batch_size = 0;
};

// Minitron-SSM's nested Mamba head scores: keep the `keep_dims` best head_dim positions (global ranking),
// then score each head by the L2 of its kept channels' x scores.
std::vector<double> nested_mamba_head_scores(const MambaScores& m, int64_t heads, int64_t head_dim, int64_t keep_dims);

class TokenFile;
// `samples` windows of `seq_len` tokens at seeded random offsets of a token file -> [samples, seq_len] int64.
at::Tensor sample_calibration(const TokenFile& tokens, int64_t samples, int64_t seq_len, uint64_t seed);

// Scores a model on calibration sequences [N, L] of token ids (streamed in batches: statistics are
// accumulated, activations never all kept).
Scores compute_scores(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options);

class LayerStreamer;
// The same with the layer weights streamed to the device (minipuzzle/layer_stream.h): the whole calibration set
// passes through one layer before the next layer is needed; depth criteria run their sweeps with the next layer's
// copy overlapping the current one's compute. Same scores as the resident path. Not with `taylor`.
Scores compute_scores(LayerStreamer& streamer, const at::Tensor& calibration_ids, const ScoreOptions& options);

// Device memory scoring needs beside the weights, estimated from the layer widths (bytes): one batch's activations
// through the widest layer with the width statistics' temporaries, the depth criteria's logits chunks, kept
// references and branch, and when `streaming` the residual streams of all calibration samples (kept on the device
// up to 2 GiB). `element_size`: bytes per element of the model dtype.
int64_t score_activation_bytes(const ModelConfig& config, const ScoreOptions& options, int64_t element_size,
                               bool streaming);
// The largest samples per streamed forward (at most options.batch_size) whose score_activation_bytes fits
// `available` bytes; 0 when not even one sample fits.
int64_t score_stream_batch_size(const ModelConfig& config, const ScoreOptions& options, int64_t element_size,
                                int64_t available);

// The per-channel aggregation, exposed for tests: activations [B,T,C] -> per-sample partial statistic.
// Accumulator keeps sum over samples of (mean_t |a|)^2 etc. so batches stream. The sums stay on the
// activations' device (add() never waits for the device); result() reads them back.
class ChannelStatistic {
 public:
  ChannelStatistic(Reduction reduction, int64_t channels);
  void add(const at::Tensor& activations);  // [B,T,C] (or [B,T,heads,C'] flattened by the caller)
  at::Tensor result() const;                // [C] float64, on the CPU
  int64_t samples() const { return samples_; }

 private:
  Reduction reduction_;
  at::Tensor sum_, sum_sq_;
  int64_t samples_ = 0, tokens_ = 0;
};

}  // namespace mp
