// Width importance from activations observed at the model's taps, streamed over calibration batches; the
// depth criteria live in depth.cpp. Everything here aggregates: no activation outlives its batch.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/kernels.h"
#include "minipuzzle/model.h"
#include "minipuzzle/progress.h"
#include "pruning/depth.h"
#include "pruning/moe_importance.h"
#include "pruning/runner.h"
#include "src/model/layers.h"

namespace mp {

using importance::LayerRunner;

namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// L2 over the channels of each group of `size` consecutive channels: per-head scores from per-channel ones.
at::Tensor l2_per_block(const at::Tensor& channels, int64_t size) { return channels.view({-1, size}).norm(2, 1); }

// Observes the taps that width importance needs and keeps one streaming statistic per (tap, layer). All
// statistics stay on the model's device until fill_width_scores reads them: a batch adds a few reductions
// per tap and never waits for the device.
class WidthObserver : public ActivationObserver {
 public:
  WidthObserver(const NemotronH& model, Reduction reduction, bool taylor)
      : model_(model), reduction_(reduction), taylor_(taylor) {}

  bool wants(Tap tap, int64_t layer) const override {
    return tap == Tap::NormOutput || tap == Tap::MlpAct || tap == Tap::AttnHeads || tap == Tap::MambaX ||
           tap == Tap::MambaY;
  }

  void observe(Tap tap, int64_t layer, const at::Tensor& value) override {
    auto key = std::make_pair(tap, layer);
    if (tap == Tap::MambaY) {  // out_proj's input feeds FLAP (its variance) and the head outputs only
      auto v = variance_.find(layer);
      if (v == variance_.end()) v = variance_.emplace(layer, ChannelStatistic(Reduction::Variance, value.size(-1))).first;
      v->second.add(value);
    } else {
      auto it = stats_.find(key);
      if (it == stats_.end()) it = stats_.emplace(key, ChannelStatistic(reduction_, value.size(-1))).first;
      it->second.add(value);
    }
    if (tap == Tap::MambaY || tap == Tap::AttnHeads) add_head_contributions(tap, layer, value);
    if (taylor_ && value.requires_grad() && tap != Tap::NormOutput && tap != Tap::MambaY) {
      at::Tensor keep = value;
      keep.retain_grad();
      retained_.push_back({key, keep});
    }
  }

  // After backward: |sum_t a * dL/da| per sample and channel, summed over samples.
  void collect_taylor() {
    for (auto& [key, t] : retained_) {
      if (!t.grad().defined()) continue;
      at::Tensor s = (t.detach() * t.grad()).to(at::kDouble).sum(1).abs().sum(0);  // stays on the device
      auto it = taylor_sums_.find(key);
      if (it == taylor_sums_.end())
        taylor_sums_.emplace(key, s);
      else
        it->second += s;
    }
    retained_.clear();
  }

  at::Tensor stat(Tap tap, int64_t layer) const {
    auto it = stats_.find({tap, layer});
    MP_CHECK(it != stats_.end(), "importance: no activations seen at ", tap_name(tap), " of layer ", layer);
    return it->second.result();
  }
  at::Tensor variance(int64_t layer) const { return variance_.at(layer).result(); }
  at::Tensor head_contribution(int64_t layer) const { return contributions_.at(layer).result(); }
  const std::map<std::pair<Tap, int64_t>, at::Tensor>& taylor() const { return taylor_sums_; }

 private:
  // Each head's output through the output projection, ||a_h W_h^T|| per token: a head whose projection
  // columns are zero contributes nothing, whatever its input activations. a_h W_h^T ([tokens, hidden] per
  // head, as many FLOPs and far more bytes than the projection itself) is never formed:
  // ||a_h W_h^T||^2 = a_h G_h a_h^T with G_h = W_h^T W_h ([width, width], once per layer), so all heads
  // take one batched [tokens, width] x [width, width] product and a row-wise dot.
  void add_head_contributions(Tap tap, int64_t layer, const at::Tensor& value) {
    const ModelConfig& c = model_.config();
    const bool mamba = tap == Tap::MambaY;
    const int64_t heads = mamba ? c.mamba_num_heads : c.num_attention_heads;
    const int64_t width = mamba ? c.mamba_head_dim : c.head_dim;
    auto g = gram_.find(layer);
    if (g == gram_.end()) {
      at::Tensor w = model_.parameters().at("backbone.layers." + std::to_string(layer) +
                                            (mamba ? ".mixer.out_proj.weight" : ".mixer.o_proj.weight"));
      // Streamed models keep layer weights on the host: the Gram matrix is made on the activations' device.
      at::Tensor wh = w.detach().to(value.device()).to(at::kFloat).view({w.size(0), heads, width}).permute({1, 0, 2});
      g = gram_.emplace(layer, at::bmm(wh.transpose(1, 2), wh)).first;                              // [heads,w,w]
    }
    const int64_t B = value.size(0), T = value.size(1), N = B * T;
    // A chunk of tokens at a time: the float32 copy of the activations and the product are [heads, chunk, width]
    // (64 MiB), not [heads, B*T, width] (0.6 GiB each for a Mamba layer of the 12B at 4 x 4096 tokens).
    const at::Tensor all = value.detach().reshape({N, heads, width});
    const int64_t chunk = std::max<int64_t>(1, kHeadChunkBytes / (heads * width * int64_t(sizeof(float))));
    at::Tensor per_head = at::empty({N, heads}, all.options().dtype(at::kFloat));
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor a = all.narrow(0, s, n).to(at::kFloat).transpose(0, 1);  // [heads,n,w]
      at::Tensor sq = at::bmm(a, g->second).mul_(a).sum(-1);             // [heads,n]
      per_head.narrow(0, s, n).copy_(sq.clamp_min_(0.0).sqrt_().t());
    }
    per_head = per_head.view({B, T, heads});
    auto it = contributions_.find(layer);
    if (it == contributions_.end()) it = contributions_.emplace(layer, ChannelStatistic(reduction_, heads)).first;
    it->second.add(per_head);
  }

  static constexpr int64_t kHeadChunkBytes = int64_t(64) << 20;
  const NemotronH& model_;
  Reduction reduction_;
  bool taylor_;
  std::map<std::pair<Tap, int64_t>, ChannelStatistic> stats_;
  std::map<int64_t, ChannelStatistic> variance_, contributions_;
  std::map<int64_t, at::Tensor> gram_;  // per layer: W_h^T W_h of each head's output-projection columns
  std::vector<std::pair<std::pair<Tap, int64_t>, at::Tensor>> retained_;
  std::map<std::pair<Tap, int64_t>, at::Tensor> taylor_sums_;
};

std::vector<std::vector<int64_t>> rank_within_groups(const std::vector<double>& heads, int64_t groups) {
  const int64_t per_group = static_cast<int64_t>(heads.size()) / groups;
  std::vector<std::vector<int64_t>> ranks(groups);
  for (int64_t g = 0; g < groups; ++g) {
    auto& r = ranks[g];
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) r.push_back(h);
    std::stable_sort(r.begin(), r.end(), [&](int64_t a, int64_t b) { return heads[a] > heads[b]; });
  }
  return ranks;
}

void fill_width_scores(const NemotronH& model, const WidthObserver& obs, Scores& scores) {
  const ModelConfig& c = model.config();
  at::Tensor hidden = at::zeros({c.hidden_size}, at::kDouble);
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    LayerScores& l = scores.layers[i];
    hidden += obs.stat(Tap::NormOutput, i);
    switch (c.layers[i]) {
      case LayerType::Mlp: l.mlp_neurons = to_vector(obs.stat(Tap::MlpAct, i)); break;
      case LayerType::Attention: {
        at::Tensor heads = l2_per_block(obs.stat(Tap::AttnHeads, i), c.head_dim);
        l.attn_heads = to_vector(heads);
        l.attn_kv_groups = to_vector(l2_per_block(heads, c.num_attention_heads / c.num_key_value_heads));
        l.attn_heads_out = to_vector(obs.head_contribution(i));
        break;
      }
      case LayerType::Mamba: {
        const int64_t H = c.mamba_num_heads, P = c.mamba_head_dim;
        at::Tensor x = obs.stat(Tap::MambaX, i).view({H, P});
        MambaScores& m = l.mamba;
        m.channels = to_vector(x.reshape({-1}));
        m.heads = to_vector(x.norm(2, 1));
        m.head_dim = to_vector(x.norm(2, 0));
        m.groups = to_vector(l2_per_block(x.norm(2, 1), H / c.n_groups));
        m.head_rank_in_group = rank_within_groups(m.heads, c.n_groups);
        m.heads_out = to_vector(obs.head_contribution(i));
        // FLAP: input variance of out_proj times the squared norm of its weight column, summed per head.
        at::Tensor w = model.parameters().at("backbone.layers." + std::to_string(i) + ".mixer.out_proj.weight");
        at::Tensor col = at::linalg_vector_norm(w.detach().to(model.device()), 2, std::vector<int64_t>{0}, false,
                                                model.device().is_cuda() ? at::kFloat : at::kDouble)
                             .to(at::kDouble)
                             .square_()
                             .cpu();
        m.heads_flap = to_vector((obs.variance(i) * col).view({H, P}).sum(1));
        break;
      }
      case LayerType::Moe: break;
    }
  }
  scores.hidden = to_vector(hidden);
  for (auto& [key, sum] : obs.taylor()) {
    auto [tap, i] = key;
    LayerScores& l = scores.layers[i];
    if (tap == Tap::MlpAct) l.taylor["mlp_neurons"] = to_vector(sum);
    if (tap == Tap::AttnHeads) l.taylor["attn_heads"] = to_vector(sum.view({c.num_attention_heads, c.head_dim}).sum(1));
    if (tap == Tap::MambaX) l.taylor["mamba_heads"] = to_vector(sum.view({c.mamba_num_heads, c.mamba_head_dim}).sum(1));
  }
}

// d mean next-token cross-entropy / d final hidden state [B,T,H], with lm_head applied a chunk of tokens at a time
// (a [chunk, V] float32 logits tensor at most, never [B,T,V]). The lm_head weight is taken as a constant: the
// Taylor scores need the gradient of the activations only.
at::Tensor mean_next_token_ce_grad(const NemotronH& model, const at::Tensor& ids, const at::Tensor& hidden,
                                   int64_t logits_chunk_bytes) {
  const int64_t B = ids.size(0), T = ids.size(1), H = hidden.size(-1), N = B * T;
  at::Tensor labels = at::full_like(ids, -100);
  labels.narrow(1, 0, T - 1).copy_(ids.narrow(1, 1, T - 1));
  labels = labels.reshape({-1});
  const at::Tensor w = model.lm_head_weight().detach();
  const at::Tensor h = hidden.detach().reshape({N, H});
  at::Tensor grad = at::empty_like(h);
  const int64_t chunk = std::max<int64_t>(1, logits_chunk_bytes / (w.size(0) * int64_t(sizeof(float))));
  const double predicted = double(B * (T - 1));
  for (int64_t s = 0; s < N; s += chunk) {
    const int64_t n = std::min(chunk, N - s);
    at::Tensor x = h.narrow(0, s, n).detach().requires_grad_(true);
    at::Tensor z = at::linear(x, w).to(at::kFloat);
    at::Tensor loss = at::cross_entropy_loss(z, labels.narrow(0, s, n), {}, at::Reduction::Sum) / predicted;
    loss.backward();
    grad.narrow(0, s, n).copy_(x.grad());
  }
  return grad.view_as(hidden);
}

}  // namespace

std::vector<double> nested_mamba_head_scores(const MambaScores& m, int64_t heads, int64_t head_dim, int64_t keep_dims) {
  // Minitron-SSM: keep the top head_dim positions (one global ranking), then score heads over those only.
  std::vector<int64_t> dims(head_dim);
  std::iota(dims.begin(), dims.end(), 0);
  std::stable_sort(dims.begin(), dims.end(), [&](int64_t a, int64_t b) { return m.head_dim[a] > m.head_dim[b]; });
  dims.resize(std::min(keep_dims, head_dim));
  std::vector<double> out(heads, 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    double s = 0;
    for (int64_t d : dims) s += m.channels[h * head_dim + d] * m.channels[h * head_dim + d];
    out[h] = std::sqrt(s);
  }
  return out;
}

namespace {

// Width statistics with resident weights: batch by batch through the whole model (with Taylor, a backward each).
void width_pass_batch_by_batch(const NemotronH& model, const at::Tensor& calibration_ids, int64_t bs,
                               const ScoreOptions& options, WidthObserver& obs, const ForwardOptions& fo) {
  const int64_t n = calibration_ids.size(0);
  Progress progress("score: width", n, "samples");
  // Taylor needs gradients: the embedding table requiring grad makes every activation part of the graph.
  at::Tensor emb = model.parameters().at("backbone.embeddings.weight");
  const bool was_requiring = emb.requires_grad();
  if (options.taylor) const_cast<at::Tensor&>(emb).set_requires_grad(true);
  for (int64_t s = 0; s < n; s += bs) {
    at::Tensor ids = calibration_ids.narrow(0, s, std::min(bs, n - s)).to(model.device());
    if (options.taylor) {
      c10::AutoGradMode grad(true);
      at::Tensor h = model.forward_hidden(ids, fo);
      h.backward(mean_next_token_ce_grad(model, ids, h, options.logits_chunk_bytes));
      obs.collect_taylor();
    } else {
      c10::AutoGradMode no_grad(false);
      model.forward_hidden(ids, fo);  // lm_head adds nothing to width scores
    }
    progress.advance(ids.size(0));
  }
  if (options.taylor) {
    const_cast<at::Tensor&>(emb).set_requires_grad(was_requiring);
    for (auto& [_, p] : model.parameters()) {
      if (p.grad().defined()) const_cast<at::Tensor&>(p).mutable_grad() = at::Tensor();
    }
  }
  progress.finish();
}

// Width statistics with streamed weights: the whole calibration set passes through one layer before the next
// layer's weights are needed (each layer is copied to the device once). The residual streams of all samples are
// kept, on the device when they take at most kDeviceHiddenBytes, else on the host. The statistics see the same
// batches in the same order as the resident path (batch by batch within each layer), so the scores are the same.
constexpr int64_t kDeviceHiddenBytes = int64_t(2) << 30;

void width_pass_layer_by_layer(const LayerRunner& runner, const at::Tensor& calibration_ids, int64_t bs,
                               const ForwardOptions& fo) {
  c10::AutoGradMode no_grad(false);
  const int64_t n = calibration_ids.size(0), L = runner.config().num_layers();
  const int64_t bytes = calibration_ids.numel() * runner.config().hidden_size *
                        int64_t(c10::elementSize(runner.model().dtype()));
  const bool on_device = bytes <= kDeviceHiddenBytes;
  std::vector<at::Tensor> hidden;
  for (int64_t s = 0; s < n; s += bs) {
    at::Tensor h = runner.embed(calibration_ids.narrow(0, s, std::min(bs, n - s)).to(runner.device()));
    hidden.push_back(on_device ? h : h.cpu());
  }
  Progress progress("score: width (layer streaming)", L, "layers");
  for (int64_t i = 0; i < L; ++i) {
    for (size_t b = 0; b < hidden.size(); ++b) {
      const int64_t next = b + 1 < hidden.size() ? i : (i + 1 < L ? i + 1 : -1);
      at::Tensor h = runner.layer(i, on_device ? hidden[b] : hidden[b].to(runner.device()), fo, next);
      hidden[b] = on_device ? h : h.cpu();
    }
    progress.advance();
  }
  progress.finish();
}

Scores score_with(const LayerRunner& runner, const at::Tensor& calibration_ids, const ScoreOptions& options) {
  const NemotronH& model = runner.model();
  const ModelConfig& c = model.config();
  MP_CHECK(calibration_ids.dim() == 2 && calibration_ids.size(0) > 0 && calibration_ids.size(1) > 1,
           "score: calibration must be [samples, seq_len] with seq_len > 1, found ", calibration_ids.sizes());
  Scores scores;
  scores.fingerprint = shape_fingerprint(c);
  scores.pattern = c.pattern();
  scores.model = {{"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                  {"num_attention_heads", c.num_attention_heads}, {"num_key_value_heads", c.num_key_value_heads},
                  {"mamba_num_heads", c.mamba_num_heads}, {"mamba_head_dim", c.mamba_head_dim},
                  {"n_groups", c.n_groups}, {"num_layers", c.num_layers()}};
  scores.calibration = {{"samples", calibration_ids.size(0)}, {"seq_len", calibration_ids.size(1)},
                        {"tokens", calibration_ids.numel()}};
  scores.reduction = options.reduction;
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    LayerScores l;
    l.index = i;
    l.type = c.layers[i];
    scores.layers.push_back(l);
  }
  int64_t bs = std::max<int64_t>(1, options.batch_size);
  // Streaming within a budget may run fewer samples per forward (score_stream_batch_size): width and depth alike.
  if (runner.streaming() && options.stream_batch_size > 0) bs = std::min(bs, options.stream_batch_size);
  ScoreOptions per_forward = options;
  per_forward.batch_size = bs;

  if (options.width) {
    WidthObserver obs(model, options.reduction, options.taylor);
    importance::MoeObserver moe(c, options.reduction);  // MoE layers' expert and channel statistics
    importance::TeeObserver both(&obs, &moe);
    ForwardOptions fo;
    fo.observer = c.count(LayerType::Moe) ? static_cast<ActivationObserver*>(&both) : &obs;
    if (runner.streaming()) {
      MP_CHECK(!options.taylor, "score: --taylor needs gradients through every layer at once, which layer streaming "
               "(--max-gpu-memory) cannot give; score Taylor on a device that holds the model");
      width_pass_layer_by_layer(runner, calibration_ids, bs, fo);
    } else {
      width_pass_batch_by_batch(model, calibration_ids, bs, options, obs, fo);
    }
    fill_width_scores(model, obs, scores);
    moe.fill(scores);
    if (options.nested_head_dim > 0)
      for (auto& l : scores.layers)
        if (l.type == LayerType::Mamba)
          l.mamba.heads_nested = nested_mamba_head_scores(l.mamba, c.mamba_num_heads, c.mamba_head_dim, options.nested_head_dim);
  }
  if (options.expert_loss && c.count(LayerType::Moe)) importance::score_expert_loss(model, calibration_ids, options, scores);
  if (options.depth || options.block_k > 0 || options.iterative_steps > 0) {
    c10::AutoGradMode no_grad(false);
    importance::score_depth(runner, calibration_ids, per_forward, scores);
  }
  return scores;
}

}  // namespace

int64_t score_activation_bytes(const ModelConfig& c, const ScoreOptions& o, int64_t element, bool streaming) {
  const int64_t samples_per_forward =
      streaming && o.stream_batch_size > 0 ? std::min(o.stream_batch_size, o.batch_size) : o.batch_size;
  const int64_t tokens = std::max<int64_t>(1, samples_per_forward) * o.seq_len;
  const int64_t H = c.hidden_size, F = c.intermediate_size, d_inner = c.mamba_d_inner();
  const int64_t heads = c.mamba_num_heads, P = c.mamba_head_dim, N = c.ssm_state_size, Q = c.chunk_size;
  const int64_t proj = 2 * d_inner + 2 * c.n_groups * N + heads, conv_dim = d_inner + 2 * c.n_groups * N;
  // The CUDA scan kernel (bf16, head_dim and chunk multiples of 32) holds its buffers for the whole batch: per head
  // and token M (Q bf16), the weighted x (P bf16), chunk and start states (P N / Q, float32 and bf16), y_off and y
  // (P float32 each) and its input copies. Every other shape runs ATen's scan in slices of at most
  // model::scan_slice_bytes() (src/model/layers.h), whatever the batch.
  const bool scan_kernel = kernels::built_with_cuda() && element == 2 && P % 32 == 0 && Q % 32 == 0;
  const int64_t scan_per_token = scan_kernel ? heads * (2 * Q + 2 * P + 6 * P * N / std::max<int64_t>(1, Q) + 10 * P) : 0;
  const int64_t scan_fixed =
      scan_kernel || c.count(LayerType::Mamba) == 0
          ? 0
          : std::min(model::scan_slice_bytes(), tokens * heads * model::ssd_aten_bytes_per_head_token(P, N, Q));
  // Per token, the tensors alive together at each layer type's peak:
  //   Mamba: in_proj's output (kept to the end), the conv output, the scan output and the gated norm's output in
  //          float32, and that output cast back for out_proj;
  //   MLP:   up_proj's output and its relu (or relu and its square), and a float32 copy for the statistics'
  //          reductions where ATen widens before reducing;
  //   attention: q, k, v, k and v repeated to the query heads, the output and its [B,T,heads*d] copy.
  int64_t per_token = 0;
  for (LayerType t : c.layers) {
    int64_t b = 0;
    if (t == LayerType::Mamba) b = (proj + conv_dim + d_inner) * element + 2 * d_inner * 4 + scan_per_token;
    if (t == LayerType::Mlp) b = 2 * F * element + 4 * F;
    if (t == LayerType::Attention)
      b = (5 * c.num_attention_heads * c.head_dim + 2 * c.num_key_value_heads * c.head_dim) * element;
    if (t == LayerType::Moe) b = 2 * F * element + 4 * F + 8 * H;  // a shared expert's width, routing in float32
    per_token = std::max(per_token, b);
  }
  per_token += 3 * H * element;  // the residual stream in and out, the norm output
  int64_t bytes = tokens * per_token + scan_fixed;
  if (o.width) {  // head contributions, a chunk of tokens at a time: a float32 copy and the product
    const int64_t widest_heads = std::max(d_inner, c.num_attention_heads * c.head_dim) * 4;
    bytes += 2 * std::min(int64_t(64) << 20, tokens * widest_heads);
  }
  const bool depth = o.depth || o.block_k > 0 || o.iterative_steps > 0;
  if (depth) {
    const int64_t samples = o.depth_samples > 0 ? std::min(o.depth_samples, o.samples) : o.samples;
    const int64_t V = c.vocab_size;
    // Logits are made a chunk of tokens at a time (DepthEvaluator): a small batch makes smaller chunks.
    const int64_t chunk_tokens = std::min(tokens, std::max<int64_t>(1, o.logits_chunk_bytes / (V * 4)));
    bytes += 4 * chunk_tokens * V * 4;                               // two logits chunks, their difference, exp
    bytes += samples * o.seq_len * (H * element + 4 + 8);            // kept references: final hidden, lse, labels
    bytes += tokens * H * element;                                   // the prefix, kept while a branch runs
    bytes += tokens * H * 4 * 4;                                     // mse_hidden: both sides, difference, square
  }
  if (streaming) {
    const int64_t hidden = o.samples * o.seq_len * H * element;  // all samples' residual streams
    if (hidden <= kDeviceHiddenBytes) bytes += hidden;
  }
  // The caching allocator's rounding and fragmentation, and cuBLAS workspaces (which it also serves).
  return bytes + bytes / 20 + (int64_t(128) << 20);
}

int64_t score_stream_batch_size(const ModelConfig& c, const ScoreOptions& o, int64_t element, int64_t available) {
  ScoreOptions t = o;
  for (int64_t b = std::max<int64_t>(1, o.batch_size); b >= 1; --b) {
    t.stream_batch_size = b;
    if (score_activation_bytes(c, t, element, /*streaming=*/true) <= available) return b;
  }
  return 0;
}

Scores compute_scores(const NemotronH& model, const at::Tensor& calibration_ids, const ScoreOptions& options) {
  return score_with(LayerRunner(model), calibration_ids, options);
}

Scores compute_scores(LayerStreamer& streamer, const at::Tensor& calibration_ids, const ScoreOptions& options) {
  return score_with(LayerRunner(streamer), calibration_ids, options);
}

}  // namespace mp
