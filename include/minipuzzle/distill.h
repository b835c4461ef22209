// Distillation trainer (issue 8): retrains a pruned student on its teacher's logits, or trains a model from
// scratch on plain cross-entropy (the demo's teacher and scratch baselines).
//
// One step of training:
//   for each of grad_accum micro-batches (micro_batch packed windows of seq_len + 1 tokens):
//     loss = kd_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, next token)   (mp::kd_loss,
//            or mp::linear_kd on CUDA so that full [tokens, vocab] logits never exist), / grad_accum
//     backward; on the last micro-batch every gradient bucket is all-reduced as soon as backward filled it
//   non-finite loss or gradient norm: the step is skipped (counted, logged); after max_nonfinite in a row the
//   run stops with a checkpoint and kExitNonFinite
//   clip the global gradient norm, AdamW step on fp32 master weights, next learning rate (warm-up + cosine or WSD)
// Every save_every steps, on SIGINT/SIGTERM (after the current step) and at the end, the complete trainer state is
// written atomically to OUT/checkpoint; `resume` continues from it bit for bit (CPU, same thread count).
//
// Teacher and student sit behind small interfaces (Teacher, the student's parameter map) so that a teacher too
// large for one GPU can later be sharded (or its logits precomputed: TopkTeacherLogits) without touching the loop.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/json.h"
#include "minipuzzle/model.h"
#include "minipuzzle/token_file.h"

namespace mp {
class TeacherLogitsStore;  // minipuzzle/teacher_logits.h
}

namespace mp::distill {

// Exit codes of `minipuzzle distill` beside mp::kExitInterrupted (130: SIGINT/SIGTERM, checkpoint written).
constexpr int kExitNonFinite = 3;  // max_nonfinite non-finite steps in a row; checkpoint of the last good state

// ---------------------------------------------------------------------------------------------------------------
// Learning-rate schedules. `step` counts optimizer steps from 0; the value is the lr used by that step.
enum class LrSchedule { cosine, wsd };
LrSchedule lr_schedule_from_name(const std::string& name);  // "cosine" | "wsd"
const char* lr_schedule_name(LrSchedule schedule);

struct ScheduleOptions {
  LrSchedule kind = LrSchedule::cosine;
  double lr = 1e-4;             // peak
  double min_lr = 1e-5;         // floor reached at the last step
  int64_t warmup_steps = 0;     // linear from lr/warmup_steps to lr
  int64_t total_steps = 1;
  double wsd_decay_fraction = 0.2;  // WSD: the last fraction of steps decays linearly from lr to min_lr
};
// cosine: warm-up, then min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2 with progress from 0 to 1.
// wsd (warm-up, stable, decay): warm-up, constant lr, then a linear decay to min_lr over the last fraction.
double learning_rate(const ScheduleOptions& options, int64_t step);

// ---------------------------------------------------------------------------------------------------------------
// AdamW with decoupled weight decay (Loshchilov & Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
// Moments and, for parameters stored in a lower precision (bf16 on GPU), the master copy are float32; after each
// step the master is rounded into the model's parameter. Tied parameters (one tensor under two names) are one
// entry. Weight decay applies to tensors of 2 or more dimensions (linear, embedding, conv weights), not to norms,
// biases, A_log, D or dt_bias; the flat shards of sharded training are named flat.decay/* and flat.nodecay/*.
struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  // offload_fraction: the share of the parameters (by elements, whole tensors in name order) whose fp32 master
  // and moments live in host memory and are updated there (optimizer offload, issue 20); the rest stays with the
  // parameters. Results are the same either way (bit for bit on CPU): the host update runs the same fused kernel.
  AdamW(const std::map<std::string, at::Tensor>& params, AdamWOptions options, double offload_fraction = 0);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;
  // Applies one update from each parameter's .grad() (parameters without a gradient are left alone).
  void step(double lr);
  int64_t steps() const { return steps_; }
  // State by name: "exp_avg/NAME", "exp_avg_sq/NAME" and, for low-precision parameters, "master/NAME", wherever
  // it lives (offloaded state is returned as host tensors), so checkpoints do not depend on the placement.
  std::map<std::string, at::Tensor> state_tensors() const;
  void load_state(const std::map<std::string, at::Tensor>& tensors, int64_t steps);
  // Unique parameters in a fixed order (the order of their first name), as optimised.
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<at::Tensor>& params() const { return params_; }
  static bool decays(const std::string& name, const at::Tensor& param);
  // Elements whose optimizer state is on the host, and all elements.
  int64_t offloaded_elements() const;
  int64_t total_elements() const;
  // Seconds the last step spent in the host update (0 without offload) and in the whole step.
  double last_host_seconds() const { return last_host_seconds_; }
  double last_step_seconds() const { return last_step_seconds_; }

  struct Offload;  // distill/optimizer.cpp: host state, staging ring, side stream

 private:
  void offload_begin();             // queues the first gradient pieces' copies to the host
  void step_offloaded(double lr);   // the host update of every piece, weights streamed back
  AdamWOptions options_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_, masters_, exp_avg_, exp_avg_sq_;
  std::vector<bool> decay_, offloaded_;
  int64_t steps_ = 0;
  std::unique_ptr<Offload> offload_;
  double last_host_seconds_ = 0, last_step_seconds_ = 0;
};

// Global L2 norm of the gradients (float64 accumulation); scales them by max_norm / norm when norm > max_norm
// and max_norm > 0. Returns the norm before clipping (inf/NaN when a gradient is not finite; nothing is scaled).
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

// ---------------------------------------------------------------------------------------------------------------
// Data: the token file's documents are packed back to back (documents already end in EOS when the data stage
// appended one) and cut into windows of seq_len + 1 tokens with stride seq_len, so every token but the first is a
// target exactly once per epoch; a window may span a document boundary (attention is not masked there, as in
// GPT-style pre-training). Windows are visited in a seeded random order, a new permutation per epoch.
class PackedWindows {
 public:
  PackedWindows(std::shared_ptr<const TokenFile> file, int64_t seq_len);
  int64_t size() const { return count_; }
  int64_t seq_len() const { return seq_len_; }
  // Window i: int64 [seq_len + 1].
  at::Tensor window(int64_t i) const;

 private:
  std::shared_ptr<const TokenFile> file_;
  int64_t seq_len_, count_;
};

// Deterministic permutation of [0, n) per epoch from (seed, epoch): independent of platform and thread count.
// The data cursor is one integer: the number of windows consumed so far.
class WindowOrder {
 public:
  WindowOrder(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  int64_t window_at(int64_t cursor);  // the window served at position `cursor` (epoch = cursor / n)

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

struct Batch {
  at::Tensor input_ids;  // int64 [B, seq_len]
  at::Tensor labels;     // int64 [B, seq_len], the next tokens
};
Batch make_batch(const PackedWindows& windows, const std::vector<int64_t>& window_ids);

// ---------------------------------------------------------------------------------------------------------------
// Teacher: anything that gives logits (or hidden states + lm_head, for the fused loss) for a batch of token ids.
// ModelTeacher runs a frozen NemotronH on one device. A teacher sharded over GPUs (tensor or pipeline parallel
// over a c10d group) implements the same interface and returns the full-vocabulary result on every data rank.
struct TeacherOutput {
  at::Tensor logits;   // [B, T, V] float, or undefined when hidden/lm_head are given
  at::Tensor hidden;   // [B, T, Ht] (model dtype) for linear_kd
  at::Tensor lm_head;  // [V, Ht]
  // A sparse teacher (OfflineTeacher: stored top-k rows, include/minipuzzle/teacher_logits.h) gives instead its
  // top-k ids (int32 [B, T, k]), their logits (float32 [B, T, k]) and the full rows' log-sum-exp at each of
  // lse_temperatures (float32 [B, T, n]); the loss is then mp::sparse_kd_loss.
  at::Tensor topk_ids, topk_logits, topk_lse;
  std::vector<double> lse_temperatures;
  bool sparse() const { return topk_ids.defined(); }
  at::Tensor lse_at(double temperature) const;  // [B, T]; throws when that temperature was not stored
};

class Teacher {
 public:
  virtual ~Teacher() = default;
  // want_hidden: return hidden + lm_head instead of logits when the teacher can (the fused loss never forms the
  // teacher's logits either).
  virtual TeacherOutput run(const at::Tensor& input_ids, bool want_hidden) = 0;
  virtual int64_t vocab_size() const = 0;
  // True when run() gives the sparse fields of TeacherOutput (stored top-k rows) instead of logits.
  virtual bool sparse() const { return false; }
};

class ModelTeacher : public Teacher {
 public:
  explicit ModelTeacher(NemotronH model);
  TeacherOutput run(const at::Tensor& input_ids, bool want_hidden) override;
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  const NemotronH& model() const { return model_; }

 private:
  NemotronH model_;
};

// Precomputed teacher logits kept as the top k per token (values [*, k], int64 indices [*, k]) expand to full
// logits with -inf elsewhere: kd.h defines those tokens as having zero teacher probability, so forward KL over
// the kept tokens is exact for the truncated (renormalised) teacher distribution. A file-backed teacher source
// stores these pairs per window and serves them through Teacher::run.
at::Tensor logits_from_topk(const at::Tensor& values, const at::Tensor& indices, int64_t vocab_size);

// The teacher read from stores written by `minipuzzle teacher-logits` (issue 28): run() finds each row of
// input_ids among the stored windows by the hash of its tokens and returns the sparse fields of TeacherOutput on
// the ids' device. Several stores may be given (the training data's and the validation data's); a window in none
// of them is an error naming the stores' seq_len. has_window() says whether every row of a batch is stored.
class OfflineTeacher : public Teacher {
 public:
  explicit OfflineTeacher(const std::vector<std::string>& dirs);
  ~OfflineTeacher() override;
  TeacherOutput run(const at::Tensor& input_ids, bool want_hidden) override;
  int64_t vocab_size() const override;
  bool sparse() const override { return true; }
  int64_t seq_len() const;
  int64_t top_k() const;
  const std::vector<double>& lse_temperatures() const;
  bool has_windows(const at::Tensor& input_ids) const;
  // Windows of the first store (the training data's): they are the data's first windows, in order, so the trainer
  // draws its windows from [0, training_windows()) when the store holds fewer than the data (teacher-logits
  // --max-windows).
  int64_t training_windows() const;

 private:
  std::vector<std::shared_ptr<const mp::TeacherLogitsStore>> stores_;
};

// ---------------------------------------------------------------------------------------------------------------
// Data parallelism over c10d. Configured from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT); absent variables mean a single process. ProcessGroupNCCL for CUDA tensors, ProcessGroupGloo on CPU.
struct DistributedEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  static DistributedEnv from_environment();
  // The device of this process for --device SPEC: "cpu"; "cuda" (GPU LOCAL_RANK, torchrun's contract); "cuda:N"
  // (GPU N, for a single process only: several ranks on one GPU is refused).
  c10::Device device_for(const std::string& spec) const;
};

class Communicator;  // distill/ddp.cpp: the c10d backend (none when world_size == 1)

// Gradient synchronisation: parameters are grouped into buckets (~bucket_bytes, in reverse order, roughly the
// order backward produces their gradients); a post-accumulate-grad hook on each parameter launches the bucket's
// asynchronous all-reduce (sum, then / world_size) as soon as its last gradient is complete, overlapping
// communication with the rest of backward. World size 1 runs the same bucketing with no communication.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<Communicator> comm, const std::vector<at::Tensor>& params, int64_t bucket_bytes);
  ~GradientSync();
  // Only the last micro-batch of a step synchronises (the others accumulate locally).
  void begin_backward(bool synchronize);
  // Waits for every bucket (launching those a hook did not, e.g. unused parameters) and writes the averaged
  // gradients back into .grad().
  void finish();

  struct Impl;  // distill/ddp.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

std::shared_ptr<Communicator> make_communicator(const DistributedEnv& env, c10::Device device);
int communicator_rank(const Communicator* comm);
int communicator_size(const Communicator* comm);
// In-place sum over ranks of a small tensor (losses, flags), blocking; a no-op for a single process.
void all_reduce_sum(Communicator* comm, at::Tensor& tensor);
void barrier(Communicator* comm);

// ---------------------------------------------------------------------------------------------------------------
// Activation checkpointing: fn(input) runs without keeping its intermediate activations; backward runs it again
// with autograd and differentiates that. `params` are the tensors fn reads that need gradients (a layer's
// weights): their gradients reach .grad through this node, so gradient hooks (GradientSync) still fire. fn must be
// deterministic (the model has no dropout, so there is no RNG state to replay); the autocast state of forward is
// restored for the recomputation (distill/recompute.cpp).
at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& input,
                        const std::vector<at::Tensor>& params);
// model.forward_hidden(input_ids) with the layers in checkpointed segments of layers_per_segment layers: autograd
// keeps only each segment's input [B,T,H] (plus the embedding and norm_f), and backward recomputes one segment
// at a time. Same values and gradients as forward_hidden (tests/distill/test_distill_checkpointing.cpp).
// `observer` sees the layers' taps in the forward only (not again when backward recomputes them).
at::Tensor checkpointed_forward_hidden(const NemotronH& model, const at::Tensor& input_ids, int64_t layers_per_segment,
                                       ActivationObserver* observer = nullptr);

// ---------------------------------------------------------------------------------------------------------------
// The step itself, shared by run_distillation and the benchmark.
class ShardedStudent;  // minipuzzle/fsdp.h
struct LossOptions {
  double alpha = 1.0;          // loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE
  double temperature = 1.0;
  bool fused_lm_head = true;   // CUDA: linear_kd from hidden states (no [tokens, vocab] logits)
  int64_t checkpoint_layers = 0;  // > 0: the student's layers run checkpointed, this many per segment; 0: off
  const ShardedStudent* sharded = nullptr;  // set: the student's layers run through it (gathered per layer)
  ActivationObserver* observer = nullptr;  // sees the student's forward (e.g. the router loads of the step)
};
// The loss of one micro-batch, differentiable w.r.t. the student's parameters. teacher == nullptr: cross-entropy.
at::Tensor micro_batch_loss(const NemotronH& student, Teacher* teacher, const Batch& batch, const LossOptions& options);

struct StepResult {
  double loss = 0;       // mean over all micro-batches and ranks
  double grad_norm = 0;  // before clipping
  bool applied = false;  // false: non-finite loss or gradient norm, the update was skipped
};
// One optimizer step: gradients cleared; per micro-batch, backward of loss / count (gradients synchronised on the
// last); global loss; clipping; AdamW when everything is finite.
StepResult train_step(const NemotronH& student, Teacher* teacher, AdamW& optimizer, GradientSync& sync,
                      Communicator* comm, const std::vector<Batch>& micro_batches, double lr, double clip,
                      const LossOptions& options);

// ---------------------------------------------------------------------------------------------------------------
struct DistillOptions {
  std::string teacher;         // HF checkpoint directory (empty with from_scratch or teacher_logits)
  std::string teacher_logits;  // instead of a teacher: a store of `minipuzzle teacher-logits` made from train_data
                               // with this seq_len (OfflineTeacher; the loss is mp::sparse_kd_loss)
  std::string teacher_logits_valid;  // optional: one made from valid_data, for val_kl (omitted without it)
  std::string student;         // HF checkpoint directory, or with from_scratch a config.json (or dir holding one)
  bool from_scratch = false;   // no teacher: cross-entropy only; student = NemotronH::random_init(config, seed)
  std::string train_data, valid_data;  // any data argument of minipuzzle/data_input.h
  std::string data_format = "auto";    // their kind (DataInputOptions::format)
  std::string tokenizer;       // for text data: a tokenizer.json; "" the teacher's (else student's) if any, else bytes
  std::string out_dir;
  int64_t tokens = 0;          // training budget; steps = ceil(tokens / (world * micro * accum * seq_len))
  int64_t seq_len = 512, micro_batch = 4, grad_accum = 1;
  ScheduleOptions schedule;    // lr, min_lr, warm-up, kind (total_steps is derived)
  AdamWOptions adamw;
  double clip = 1.0;           // max gradient norm; 0 disables clipping
  double alpha = 1.0;          // loss = alpha * KD + (1 - alpha) * CE
  double temperature = 1.0;
  int64_t eval_every = 100, eval_tokens = 65536;  // eval also at step 0 and at the end
  int64_t save_every = 500;    // 0: only at the end / on a signal
  uint64_t seed = 1234;
  std::string device = "cpu";  // cpu | cuda (cuda: LOCAL_RANK picks the GPU)
  int threads = 0;             // CPU threads (0: ATen's default); fix it for bit-exact resume
  bool resume = false;
  bool fused_lm_head = true;   // CUDA: linear_kd (no full logits); CPU always uses kd_loss on logits
  bool activation_checkpointing = false;  // recompute the student's layers in backward instead of keeping them
  int64_t checkpoint_layers = 1;          // layers per checkpointed segment (with activation_checkpointing)
  int64_t max_nonfinite = 5;
  int64_t bucket_bytes = int64_t(25) << 20;
  std::string shard = "none";     // none | zero2 | zero3 (minipuzzle/fsdp.h)
  int64_t shard_group_size = 0;   // ranks per shard group (0: all; fewer: hybrid, replicated across groups)
  int64_t plan_world_size = 0;    // --plan-world-size: plan for this many ranks (0: WORLD_SIZE)
  bool shard_teacher = false;     // --shard-teacher (plan only): the teacher's layers sharded like the student's
  std::string save_dtype;      // "float32" | "bfloat16"; empty: the student's storage (float32 from scratch)
  // Memory plan (include/minipuzzle/train_memory.h), made before the models load and written to OUT/plan.json.
  bool plan_only = false;      // --plan: print the plan and return without training
  std::string fit = "check";   // check: refuse a setup that does not fit; auto: choose micro-batch (not above
                               // the given one, same tokens per step), checkpointing and offload; off: no plan
  std::string gpu_memory;      // --gpu-memory SIZE: plan for this much free GPU memory (a CPU run then plans as
                               // the CUDA trainer would hold the models: bf16, fused KD, and applies the offload)
  std::string host_memory;     // --host-memory SIZE: host RAM for the plan (default: MemAvailable)
  std::string offload_optimizer;  // "" none (auto may choose), "auto", or a fraction in [0, 1]
  int64_t stop_after_steps = 0;   // > 0: after this step, write the checkpoint and return (exit 0); --resume goes on
  // MoE students: > 0 applies aux-loss-free load balancing after every step (distill/router_bias.h): each router's
  // e_score_correction_bias += rate * sign(mean load - load). Nemotron 3 Nano trained with 1e-3. 0: off.
  double router_bias_update = 0;
  bool no_save = false;           // write neither OUT/checkpoint nor OUT/final (benchmarks whose state exceeds the disk)
  std::string elastic;            // --elastic BUDGETS: train nested budgets of a nested student (distill/elastic.h)
};

struct DistillResult {
  int exit_code = 0;           // 0, kExitInterrupted or kExitNonFinite
  int64_t steps_done = 0, total_steps = 0;
  std::vector<double> train_loss;  // per step from step 1 (NaN for skipped steps)
  json last_eval;              // {"step", "val_loss", "val_ppl", "val_kl"} (val_kl absent from scratch)
};

// Runs (or resumes) a training job. Writes OUT/log.jsonl, OUT/checkpoint/ (trainer state), OUT/final/ (HF
// checkpoint of the student), OUT/loss.svg, OUT/report.html and OUT/report.md. Errors throw mp::Error.
DistillResult run_distillation(const DistillOptions& options);

}  // namespace mp::distill
