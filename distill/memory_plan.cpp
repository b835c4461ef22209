// The training memory plan (include/minipuzzle/train_memory.h). Every activation term names the tensors the
// forward of src/model keeps for backward (the autograd node that saves each is in the comment); the formulas and
// their checks are in distill/MEMORY_PLAN.md. Parameter counts and the teacher's no-grad working set are
// search's (search/memory_model.cpp), so the two memory models cannot drift apart where they coincide.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#ifdef MINIPUZZLE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "minipuzzle/error.h"
#include "minipuzzle/search.h"
#include "minipuzzle/train_memory.h"

namespace mp::distill {
namespace {

constexpr double kGiB = search::kGiB;

double D(int64_t v) { return static_cast<double>(v); }

// Pre-mixer RMSNorm (src/model/norms.cpp rms_norm) on T tokens of width H: the fp32 input (PowBackward and
// MulBackward save it; for an fp32 model it is the residual stream itself), h * inv (saved by the weight's
// MulBackward), inv (RsqrtBackward's result), the fp32 copy of a bf16 weight, and the output in the model dtype
// (saved by the mixer's first linear).
double norm_kept(double T, int64_t H, int64_t b, bool output_kept) {
  double bytes = T * D(H) * 4.0 * 2.0 + T * 4.0;
  if (b != 4) bytes += D(H) * 4.0;
  if (output_kept) bytes += T * D(H) * D(b);
  return bytes;
}

// Mamba-2 mixer through the autograd kernels (src/model/mamba2.cpp with causal_conv1d_silu, ssd_scan,
// gated_rms_norm): in_proj's output [T, 2d+2GN+h] (the conv saves its x|B|C view and the gated norm its z view,
// so the whole storage stays), the conv output [T, d+2GN] (the scan saves its x, B, C views), dt three times
// (softplus saves its input, clamp_min its input, the scan the result; all in the model dtype, on CPU as on CUDA),
// the scan's fp32 output y [T, d] (saved by the gated norm) and the gated norm's output [T, d] (saved by out_proj).
// The scan writes y for whole chunks (T_pad = batch * ceil(L / chunk) * chunk tokens) and returns a narrowed view.
// A = -exp(A_log) in float32 keeps exp's result (ExpBackward) and A itself (saved by the scan), [h] each.
double mamba_kept(const ModelConfig& c, double T, double T_pad, int64_t b) {
  const double d = D(c.mamba_d_inner()), h = D(c.mamba_num_heads);
  double bytes = T * D(c.mamba_in_proj_dim()) * D(b) + T * D(c.mamba_conv_dim()) * D(b);
  bytes += 3.0 * T * h * D(b);
  bytes += T_pad * d * 4.0 + T * d * D(b);
  bytes += 2.0 * 4.0 * h;
  return bytes;
}

double padded_tokens(const ModelConfig& c, const TrainSetup& s) {
  const int64_t Q = std::max<int64_t>(1, c.chunk_size);
  return D(s.micro_batch) * D((s.seq_len + Q - 1) / Q * Q);
}

// Grouped-query attention (src/model/attention.cpp): q [T, q*a] (q_proj's output, saved by SDPA), K and V
// expanded to every query head by repeat_interleave (saved by SDPA; with as many KV heads as query heads the
// projections themselves), the attention output [T, q*a] (saved by SDPA and, as a view, by o_proj: both the CUDA
// flash kernel and the CPU one write it [B, L, q, a]) and SDPA's fp32 log-sum-exp [B, q, L].
double attention_kept(const ModelConfig& c, double T, int64_t b) {
  const double qa = D(c.num_attention_heads * c.head_dim);
  return 4.0 * T * qa * D(b) + T * D(c.num_attention_heads) * 4.0;
}

// MLP (src/model/mlp.cpp): relu's output (ReluBackward saves its result; MulBackward of a*a saves it too) and the
// square (saved by down_proj). up_proj's own output is freed.
double mlp_kept(const ModelConfig& c, double T, int64_t b) { return 2.0 * T * D(c.intermediate_size) * D(b); }

// SSD scan work buffers of one Mamba layer's backward on CUDA (src/kernels/ssd_scan_binding.cpp SsdWorkBuffers +
// SsdGradBuffers), beyond the gradients of its inputs.
double ssd_backward_work(const ModelConfig& c, int64_t batch, int64_t L, int64_t b) {
  const double Q = D(c.chunk_size), nc = std::ceil(D(L) / Q) * D(batch), T = nc * Q;
  const double H = D(c.mamba_num_heads), P = D(c.mamba_head_dim), N = D(c.ssm_state_size), G = D(c.n_groups);
  const double d = H * P;
  double w = nc * G * Q * Q * 4.0 + nc * H * Q * Q * D(b) + T * d * D(b) + nc * H * P * N * (4.0 + D(b)) + T * d * 4.0;
  w += T * d * D(b) * 2.0 + nc * H * P * N * D(b) + T * d * 4.0;  // dy, dy_decayed, dstates, dXw
  return w;
}

bool cuda_like(const TrainSetup& s) { return s.weight_bytes != 4; }

}  // namespace

json TrainSetup::to_json() const {
  return {{"seq_len", seq_len},
          {"micro_batch", micro_batch},
          {"grad_accum", grad_accum},
          {"weight_bytes", weight_bytes},
          {"mamba_kernels", mamba_kernels},
          {"fused_lm_head", fused_lm_head},
          {"logits_buffer_bytes", logits_buffer_bytes},
          {"activation_checkpointing", checkpoint_layers > 0},
          {"checkpoint_layers", checkpoint_layers},
          {"offload_fraction", offload_fraction},
          {"has_teacher", has_teacher},
          {"world_size", world_size},
          {"shard", shard},
          {"shard_group_size", shard_group()},
          {"shard_teacher", shard_teacher}};
}

double TrainMemory::device_total() const {
  double t = 0;
  for (auto& x : terms) t += x.device;
  return t;
}
double TrainMemory::host_total() const {
  double t = 0;
  for (auto& x : terms) t += x.host;
  return t;
}

json TrainMemory::to_json() const {
  json rows = json::array();
  for (auto& t : terms)
    rows.push_back({{"term", t.name}, {"device_bytes", t.device}, {"host_bytes", t.host}, {"device_gib", t.device / kGiB},
                    {"host_gib", t.host / kGiB}, {"note", t.note}});
  return {{"terms", rows},
          {"device_total_bytes", device_total()},
          {"host_total_bytes", host_total()},
          {"device_total_gib", device_total() / kGiB},
          {"host_total_gib", host_total() / kGiB},
          {"kept_activations_bytes", kept_activations}};
}

std::string TrainMemory::table() const {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %10s %10s  %s\n", "term", "GPU GiB", "host GiB", "what");
  o << line;
  for (auto& t : terms) {
    std::snprintf(line, sizeof line, "%-24s %10.2f %10.2f  %s\n", t.name.c_str(), t.device / kGiB, t.host / kGiB,
                  t.note.c_str());
    o << line;
  }
  std::snprintf(line, sizeof line, "%-24s %10.2f %10.2f\n", "total", device_total() / kGiB, host_total() / kGiB);
  o << line;
  return o.str();
}

int64_t trainable_parameters(const ModelConfig& student) {
  return search::count_params(search::Shape::of(student)).total();
}

namespace {
// Parameters of the sharding units (distill/fsdp.cpp): the root (embedding, final norm, lm_head), all layers, and
// the largest single layer (its pre-mixer norm included).
struct UnitParams {
  double root = 0, layers = 0, largest_layer = 0;
};
UnitParams unit_params(const ModelConfig& c) {
  const search::Shape sh = search::Shape::of(c);
  const search::ParamCounts pc = search::count_params(sh);
  UnitParams u;
  u.root = D(pc.embeddings + pc.lm_head + pc.final_norm);
  u.layers = D(pc.total()) - u.root;
  for (LayerType t : c.layers) {
    int64_t n = c.hidden_size;
    switch (t) {
      case LayerType::Mamba: n += search::mamba_layer_params(sh); break;
      case LayerType::Attention: n += search::attention_layer_params(sh); break;
      case LayerType::Mlp: n += search::mlp_layer_params(sh); break;
      case LayerType::Moe: n += search::moe_layer_params(sh); break;
    }
    u.largest_layer = std::max(u.largest_layer, D(n));
  }
  return u;
}
}  // namespace

KeptActivations kept_activation_bytes(const ModelConfig& c, const TrainSetup& s) {
  MP_CHECK(s.seq_len > 0 && s.micro_batch > 0, "memory plan: seq_len and micro_batch must be positive, found ",
           s.seq_len, " and ", s.micro_batch);
  const double T = D(s.seq_len) * D(s.micro_batch);
  const int64_t b = s.weight_bytes;
  KeptActivations k;
  if (s.checkpoint_layers > 0) {
    // Each segment's input (Recompute saves it); inside a segment grad mode is off in forward.
    const int64_t segments = (c.num_layers() + s.checkpoint_layers - 1) / s.checkpoint_layers;
    k.checkpoint_inputs = D(segments) * T * D(c.hidden_size) * D(b);
  } else {
    for (LayerType t : c.layers) {
      const double norm = norm_kept(T, c.hidden_size, b, /*output_kept=*/true);
      switch (t) {
        case LayerType::Mamba: k.mamba += norm + mamba_kept(c, T, padded_tokens(c, s), b); break;
        case LayerType::Attention: k.attention += norm + attention_kept(c, T, b); break;
        case LayerType::Mlp: k.mlp += norm + mlp_kept(c, T, b); break;
        case LayerType::Moe: fail("memory plan: mixture-of-experts layers are not modelled");
      }
    }
  }
  // The token ids on the device (the embedding's backward reads them); the CPU batch is already int64 there.
  if (cuda_like(s)) k.other += T * 8.0;
  // Final norm; its output is kept only when lm_head runs as an autograd linear (not the fused loss).
  const bool fused = s.fused_lm_head && s.has_teacher && cuda_like(s);
  k.other += norm_kept(T, c.hidden_size, b, /*output_kept=*/!fused);
  const double V = D(c.vocab_size), Hs = D(c.hidden_size);
  if (fused) {
    k.other += T * Hs * D(b) + V * Hs * D(b);  // linear_kd's gradients for hidden and lm_head, made in forward
  } else {
    // kd_loss keeps d loss / d logits [T, V] in fp32; cross-entropy keeps log_softmax's fp32 result.
    k.other += T * V * 4.0;
  }
  return k;
}

double backward_transient_bytes(const ModelConfig& c, const TrainSetup& s) {
  const double T = D(s.seq_len) * D(s.micro_batch);
  const int64_t b = s.weight_bytes;
  double layer_max = 0;
  double mamba = 0, attention = 0, mlp = 0;
  const double norm = norm_kept(T, c.hidden_size, b, true);
  if (c.count(LayerType::Mamba)) mamba = norm + mamba_kept(c, T, padded_tokens(c, s), b);
  if (c.count(LayerType::Attention)) attention = norm + attention_kept(c, T, b);
  if (c.count(LayerType::Mlp)) mlp = norm + mlp_kept(c, T, b);
  // Backward of a layer holds gradients the size of what it kept (freed as it goes, so about once), plus the scan's
  // work buffers for Mamba; checkpointing first recomputes the segment's kept activations.
  const double mamba_work = mamba > 0 && cuda_like(s) ? ssd_backward_work(c, s.micro_batch, s.seq_len, b) : 0.0;
  layer_max = std::max({mamba + mamba_work, attention, mlp});
  const double largest_kept = std::max({mamba, attention, mlp});
  double recompute = 0;
  if (s.checkpoint_layers > 0) recompute = D(std::min<int64_t>(s.checkpoint_layers, c.num_layers())) * largest_kept;
  // The residual stream's gradient flows in fp32 beside the layer's (two [T, H] buffers alive across a layer).
  return recompute + layer_max + 2.0 * T * D(c.hidden_size) * 4.0;
}

TrainMemory estimate_train_memory(const ModelConfig& student, const std::optional<ModelConfig>& teacher,
                                  const TrainSetup& s) {
  MP_CHECK(s.offload_fraction >= 0 && s.offload_fraction <= 1, "memory plan: offload fraction must lie in [0, 1], found ",
           s.offload_fraction);
  const int64_t b = s.weight_bytes;
  const double Ps = D(trainable_parameters(student));
  const double T = D(s.seq_len) * D(s.micro_batch);
  const double f = s.offload_fraction;
  TrainMemory m;
  auto add = [&](std::string name, double device, double host, std::string note) {
    m.terms.push_back({std::move(name), device, host, std::move(note)});
  };
  const std::string wdt = b == 2 ? "bf16" : "fp32";
  MP_CHECK(s.shard == "none" || s.shard == "zero2" || s.shard == "zero3", "memory plan: shard must be none, zero2 or "
           "zero3, found \"", s.shard, "\"");
  const double S = D(s.shard_group());
  const bool sharded = s.shard != "none";
  const std::string per = sharded ? " / " + std::to_string(s.shard_group()) + " ranks" : "";
  const UnitParams us = unit_params(student);
  if (teacher) {
    if (s.shard_teacher && S > 1) {
      const UnitParams ut = unit_params(*teacher);
      add("teacher weights", (ut.root + ut.layers / S + 2.0 * ut.largest_layer) * D(b), 0,
          "frozen, " + wdt + ", layers" + per + ", root replicated, 2 layers gathered");
    } else {
      add("teacher weights", D(trainable_parameters(*teacher)) * D(b), 0, "frozen, " + wdt + (sharded ? ", replicated" : ""));
    }
  }
  if (s.shard == "zero3")
    add("student weights", (us.root + us.layers / S + 2.0 * us.largest_layer) * D(b), 0,
        wdt + ", layers" + per + ", root replicated, 2 layers gathered (current + prefetch)");
  else
    add("student weights", Ps * D(b), 0, wdt + (sharded ? ", replicated" : ""));
  if (sharded)
    // The shard, plus full-size gradients while they wait for their reduce-scatter: the root's (lm_head's from the
    // start of backward to the embedding's at its end) and up to three layers' (autograd's, the flat copy, one
    // more in flight).
    add("gradients", Ps * D(b) / S + (us.root + 3.0 * us.largest_layer) * D(b), 0,
        wdt + per + " + root and 3 layers full-size in flight");
  else
    add("gradients", Ps * D(b), 0, wdt + ", accumulated over micro-batches");
  // fp32 masters exist only for low-precision parameters (an fp32 parameter is its own master). Offloaded fp32
  // parameters get a host master: the host update never writes the device tensor it reads.
  const double master_bytes = (b != 4 ? Ps * 4.0 : 0.0) / S;
  add("fp32 master weights", master_bytes * (1 - f), Ps * 4.0 / S * f, "fp32" + per);
  add("AdamW moments", Ps * 8.0 / S * (1 - f), Ps * 8.0 / S * f, "exp_avg + exp_avg_sq, fp32" + per);
  const KeptActivations k = kept_activation_bytes(student, s);
  m.kept_activations = k.total();
  {
    std::ostringstream note;
    note.precision(3);
    if (s.checkpoint_layers > 0)
      note << "checkpointed (" << s.checkpoint_layers << " layer(s)/segment): segment inputs " << k.checkpoint_inputs / kGiB
           << " GiB";
    else
      note << "Mamba " << k.mamba / kGiB << ", attention " << k.attention / kGiB << ", MLP " << k.mlp / kGiB << " GiB";
    note << "; micro-batch " << s.micro_batch << " x " << s.seq_len;
    add("activations (kept)", k.total() - k.other, 0, note.str());
  }
  add("loss + final norm (kept)", k.other, 0, s.has_teacher ? (s.fused_lm_head && b != 4 ? "linear_kd gradients" : "d loss/d logits") : "log-softmax");
  // Transients: the largest of the teacher's forward (no grad; search's prefill working set + its output), the
  // fused loss's chunk buffers, one layer's backward, and the resident optimizer's fp32 gradient chunk.
  double teacher_fwd = 0, kd = 0;
  if (teacher) {
    const search::Shape ts = search::Shape::of(*teacher);
    teacher_fwd = search::prefill_activation_bytes(ts, s.seq_len, s.micro_batch, b == 2 ? search::DType::BF16 : search::DType::F32) +
                  T * D(teacher->hidden_size) * D(b);
    if (s.fused_lm_head && b != 4) {
      const double V = D(student.vocab_size);
      const double chunk = std::max(1.0, std::min(T, std::floor(D(s.logits_buffer_bytes) / (V * D(b)))));
      kd = 1.25 * chunk * V * D(b) + T * D(teacher->hidden_size) * D(b) + T * 4.0 * 2;
    } else {
      kd = 2.0 * T * D(student.vocab_size) * 4.0;  // teacher and student fp32 logits beside the kept gradient
    }
  }
  // Evaluation on CUDA makes logits 1024 tokens at a time (distill/trainer.cpp): student and teacher fp32 logits,
  // log-softmax and the KL's temporaries, about five [1024, V] fp32 buffers, beside the teacher's forward.
  const double eval = b != 4 ? 5.0 * std::min(T, 1024.0) * D(student.vocab_size) * 4.0 + teacher_fwd : 0.0;
  const double bwd = backward_transient_bytes(student, s);
  const double opt = b != 4 ? std::min(Ps / S * (1 - f), D(int64_t(128) << 20)) * 4.0 : 0.0;
  const double transient = std::max({teacher_fwd, kd, bwd, opt, eval});
  {
    std::string which = transient == teacher_fwd ? "teacher forward" : transient == kd ? "fused KD chunks"
                        : transient == bwd        ? "layer backward"
                        : transient == eval       ? "evaluation chunks"
                                                  : "optimizer fp32 gradient chunk";
    add("peak transient", transient, 0, "largest of teacher forward, KD chunks, layer backward, optimizer, evaluation: " + which);
  }
  // Host: the offloaded update streams gradients and weights through a ring of pinned buffers.
  if (f > 0) add("host staging", 0, 4.0 * D(int64_t(32) << 20) * D(b), "pinned ring: gradients down, weights up");
  // Allocator slack: the caching allocator rounds blocks and fragments; measured peaks on CUDA sit a few percent
  // above the sum of live tensors. The CUDA context and cuBLAS workspaces are outside the allocator.
  const double body = m.device_total();
  add("allocator slack", b != 4 ? 0.03 * body + 0.75 * kGiB : 0.0, 0, b != 4 ? "3% + CUDA context and workspaces" : "");
  return m;
}

json Plan::to_json() const {
  return {{"fits", fits},
          {"setup", setup.to_json()},
          {"memory", memory.to_json()},
          {"device_budget_bytes", device_budget},
          {"host_budget_bytes", host_budget},
          {"device_budget_gib", device_budget / kGiB},
          {"host_budget_gib", host_budget / kGiB},
          {"reason", reason}};
}

namespace {

struct Candidate {
  TrainSetup setup;
  TrainMemory memory;
  double cost = 0;
};

// Relative step time, for choosing among setups that fit: recomputation adds one student forward (2 N_s of the
// 2 N_t + 6 N_s FLOPs per token); the host update of the offloaded fraction runs at about 30 bytes per parameter
// over host memory (fp32 master, moments read and written; bf16 gradient in, weight out) at an assumed 20 GB/s,
// against GPU compute at an assumed 400 TFLOP/s. Both assumptions only order the candidates.
double estimated_step_seconds(const ModelConfig& student, const std::optional<ModelConfig>& teacher, const TrainSetup& s) {
  const double Ps = D(trainable_parameters(student));
  const double Pt = teacher ? D(trainable_parameters(*teacher)) : 0.0;
  const double tokens = D(s.seq_len) * D(s.micro_batch) * D(s.grad_accum);
  double flops = tokens * (2.0 * Pt + 6.0 * Ps + (s.checkpoint_layers > 0 ? 2.0 * Ps : 0.0));
  return flops / 4e14 + s.offload_fraction * Ps * 30.0 / 2e10;
}

bool fits(const TrainMemory& m, const PlanRequest& r, double device_budget, double host_budget, const TrainSetup& s) {
  if (r.device_bytes <= 0) return m.device_total() + m.host_total() <= host_budget || host_budget <= 0;
  return m.device_total() <= device_budget && (host_budget <= 0 || m.host_total() <= host_budget);
}

std::string describe_flags(const TrainSetup& chosen, const TrainSetup& asked) {
  std::ostringstream o;
  char buf[64];
  if (chosen.offload_fraction != asked.offload_fraction) {
    std::snprintf(buf, sizeof buf, "%.2f", chosen.offload_fraction);
    o << (o.tellp() > 0 ? " " : "") << "--offload-optimizer " << (chosen.offload_fraction >= 1 ? std::string("1") : buf);
  }
  if ((chosen.checkpoint_layers > 0) != (asked.checkpoint_layers > 0))
    o << (o.tellp() > 0 ? " " : "") << (chosen.checkpoint_layers > 0 ? "--activation-checkpointing" : "(no checkpointing)");
  if (chosen.micro_batch != asked.micro_batch)
    o << (o.tellp() > 0 ? " " : "") << "--micro-batch " << chosen.micro_batch << " --grad-accum " << chosen.grad_accum;
  return o.str();
}

}  // namespace

Plan make_plan(const ModelConfig& student, const std::optional<ModelConfig>& teacher, const PlanRequest& r) {
  MP_CHECK(r.setup.micro_batch > 0 && r.setup.grad_accum > 0, "memory plan: micro-batch and grad-accum must be positive");
  Plan plan;
  plan.device_budget = r.device_bytes * (1.0 - r.reserve_fraction);
  plan.host_budget = r.host_bytes * (1.0 - r.host_reserve_fraction);
  const bool cpu_run = r.device_bytes <= 0;

  // All setups the request allows, each with the smallest offload fraction (0.05 steps) that fits the device.
  auto search = [&](bool free_choices, std::optional<Candidate>& best) {
    const bool mb_free = free_choices || r.choose_micro_batch;
    const bool ck_free = free_choices || r.choose_checkpointing;
    const bool off_free = (free_choices || r.choose_offload) && !cpu_run;
    const int64_t per_step = r.setup.micro_batch * r.setup.grad_accum;
    std::vector<int64_t> micro;
    for (int64_t m = r.setup.micro_batch; m >= 1; --m)
      if (per_step % m == 0 && (mb_free || m == r.setup.micro_batch)) micro.push_back(m);
    std::vector<int64_t> ckpt{r.setup.checkpoint_layers};
    if (ck_free) ckpt = r.setup.checkpoint_layers > 0 ? std::vector<int64_t>{r.setup.checkpoint_layers, 0}
                                                      : std::vector<int64_t>{0, 1};
    for (int64_t m : micro)
      for (int64_t k : ckpt) {
        TrainSetup s = r.setup;
        s.micro_batch = m;
        s.grad_accum = per_step / m;
        s.checkpoint_layers = k;
        std::vector<double> fractions{r.setup.offload_fraction};
        if (off_free) {
          fractions.clear();
          for (int i = 0; i <= 20; ++i) fractions.push_back(i / 20.0);
        }
        for (double f : fractions) {
          s.offload_fraction = f;
          TrainMemory mem = estimate_train_memory(student, teacher, s);
          if (!fits(mem, r, plan.device_budget, plan.host_budget, s)) continue;
          const double cost = estimated_step_seconds(student, teacher, s);
          // Ties (the same FLOPs and offload) go to the larger micro-batch: fewer, larger kernels.
          if (!best || cost < best->cost * (1 - 1e-9)) best = Candidate{s, mem, cost};
          break;  // a larger fraction of the same setup is only slower
        }
      }
  };

  std::optional<Candidate> best;
  search(false, best);
  if (best) {
    plan.fits = true;
    plan.setup = best->setup;
    plan.memory = best->memory;
    return plan;
  }
  plan.setup = r.setup;
  plan.memory = estimate_train_memory(student, teacher, r.setup);
  const bool device_short = !cpu_run && plan.memory.device_total() > plan.device_budget;
  const double host_need = cpu_run ? plan.memory.device_total() + plan.memory.host_total() : plan.memory.host_total();
  const bool host_short = plan.host_budget > 0 && host_need > plan.host_budget;
  std::ostringstream why;
  if (device_short)
    why << "needs " << format_gib(plan.memory.device_total()) << " on the GPU, " << format_gib(plan.device_budget)
        << " available";
  if (host_short || !device_short)
    why << (device_short ? " and " : "needs ") << format_gib(host_need) << " of host memory, "
        << format_gib(plan.host_budget) << " available";
  std::optional<Candidate> any;
  search(true, any);
  if (any) {
    why << "; " << describe_flags(any->setup, r.setup) << " fits with " << format_gib(any->memory.device_total())
        << (cpu_run ? "" : " on the GPU") << " and " << format_gib(any->memory.host_total()) << " on the host";
  } else {
    TrainSetup least = r.setup;
    least.micro_batch = 1;
    least.checkpoint_layers = 1;
    least.offload_fraction = cpu_run ? r.setup.offload_fraction : 1.0;
    TrainMemory mem = estimate_train_memory(student, teacher, least);
    why << "; even micro-batch 1 with activation checkpointing" << (cpu_run ? "" : " and all optimizer state on the host")
        << " needs " << format_gib(mem.device_total()) << (cpu_run ? "" : " on the GPU") << " and "
        << format_gib(mem.host_total()) << " on the host (" << format_gib(plan.host_budget) << " available)";
  }
  plan.reason = why.str();
  return plan;
}

double parse_memory_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t j = i;
  while (j < text.size() && (std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '.')) ++j;
  MP_CHECK(j > i, "memory size \"", text, "\": expected a number with an optional unit (GiB, GB, G, MiB, TiB), e.g. 141GiB");
  double value = 0;
  try {
    value = std::stod(text.substr(i, j - i));
  } catch (...) {
    fail("memory size \"", text, "\": \"", text.substr(i, j - i), "\" is not a number");
  }
  std::string unit;
  for (size_t k = j; k < text.size(); ++k)
    if (!std::isspace(static_cast<unsigned char>(text[k]))) unit += char(std::tolower(static_cast<unsigned char>(text[k])));
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "k" || unit == "kib") scale = 1024.0;
  else if (unit == "kb") scale = 1e3;
  else if (unit == "m" || unit == "mib") scale = 1024.0 * 1024.0;
  else if (unit == "mb") scale = 1e6;
  else if (unit == "g" || unit == "gib") scale = kGiB;
  else if (unit == "gb") scale = 1e9;
  else if (unit == "t" || unit == "tib") scale = kGiB * 1024.0;
  else if (unit == "tb") scale = 1e12;
  MP_CHECK(scale > 0, "memory size \"", text, "\": unknown unit \"", unit, "\" (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  MP_CHECK(std::isfinite(value) && value >= 0, "memory size \"", text, "\" must be a non-negative number");
  return value * scale;
}

std::string format_gib(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / kGiB);
  return buf;
}

double cuda_free_bytes(int device_index) {
#ifdef MINIPUZZLE_WITH_CUDA
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) return 0;
  if (cudaSetDevice(device_index) != cudaSuccess) return 0;
  size_t free_b = 0, total_b = 0;
  const cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  cudaSetDevice(current);
  return e == cudaSuccess ? D(static_cast<int64_t>(free_b)) : 0.0;
#else
  (void)device_index;
  return 0;
#endif
}

double host_available_bytes() {
  // MemAvailable (what can be had without swapping), else all physical memory.
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return D(kb) * 1024.0;
  }
  return D(static_cast<int64_t>(sysconf(_SC_PHYS_PAGES))) * D(static_cast<int64_t>(sysconf(_SC_PAGE_SIZE)));
}

}  // namespace mp::distill
