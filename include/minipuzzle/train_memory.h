// The training memory plan of `minipuzzle distill` (issue 20): what one step of distillation holds on the GPU and
// on the host, term by term, and the choice of micro-batch, activation checkpointing and optimizer offload that
// fits a device. Parameter counts and the teacher's inference working set are search's memory model
// (mp::search::count_params, prefill_activation_bytes): one formula per term, shared. Formulas and what each
// counts: distill/MEMORY_PLAN.md.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/json.h"

namespace mp::distill {

// How a step runs: the terms follow from this and the two shapes.
struct TrainSetup {
  int64_t seq_len = 512;
  int64_t micro_batch = 4;
  int64_t grad_accum = 1;
  // Bytes per element of the weights, gradients and activations: 2 (bf16, CUDA) or 4 (fp32, CPU).
  int64_t weight_bytes = 2;
  // The Mamba mixer runs through the autograd kernels (causal conv1d, SSD scan, gated norm: each keeps only its
  // inputs), as on CUDA. false: the CPU ATen path, whose Mamba scan keeps many more intermediates (not modelled
  // exactly; see MEMORY_PLAN.md).
  bool mamba_kernels = true;
  bool fused_lm_head = true;        // linear_kd (CUDA) rather than full logits + kd_loss
  int64_t logits_buffer_bytes = int64_t(384) << 20;  // linear_kd's student-logits chunk (LinearKdOptions)
  int64_t checkpoint_layers = 0;    // > 0: activation checkpointing, layers per segment
  double offload_fraction = 0;      // of the optimizer state (fp32 master + moments) held on the host
  bool has_teacher = true;
  // Data parallelism and sharding (minipuzzle/fsdp.h): terms are per GPU. shard "none": every rank holds the whole
  // student state; "zero2": gradients, fp32 masters and AdamW moments are 1/S per rank; "zero3": the layers'
  // weights too (the root unit, embedding + final norm + lm_head, stays replicated; two layers are gathered at a
  // time). S = shard_group_size (0: world_size). shard_teacher: the teacher's layers 1/S per rank, gathered per layer.
  int64_t world_size = 1;
  std::string shard = "none";
  int64_t shard_group_size = 0;
  bool shard_teacher = false;
  int64_t shard_group() const { return shard == "none" ? 1 : shard_group_size > 0 ? shard_group_size : world_size; }
  json to_json() const;
};

// One row of the plan: bytes on the GPU (the training device) and on the host.
struct MemoryTerm {
  std::string name;
  double device = 0, host = 0;
  std::string note;
};

struct TrainMemory {
  std::vector<MemoryTerm> terms;  // in display order; "total" not included
  double device_total() const;
  double host_total() const;
  // Activations kept for backward per micro-batch (also a term) and the step's peak transient on top of them.
  double kept_activations = 0;
  json to_json() const;
  std::string table() const;  // aligned text table in GiB
};

// Elements and bytes of the parts the test measures directly.
int64_t trainable_parameters(const ModelConfig& student);
// Bytes autograd keeps between forward and backward for one micro-batch of `tokens` = micro_batch x seq_len tokens,
// by layer type (each the sum over the model's layers of that type) and the rest (embedding ids, final norm, loss).
struct KeptActivations {
  double mamba = 0, attention = 0, mlp = 0, checkpoint_inputs = 0, other = 0;
  double total() const { return mamba + attention + mlp + checkpoint_inputs + other; }
};
KeptActivations kept_activation_bytes(const ModelConfig& student, const TrainSetup& setup);
// The largest transient of one layer's backward beyond what it keeps (gradients of its intermediates, the scan's
// work buffers; with checkpointing, the recomputed segment's activations).
double backward_transient_bytes(const ModelConfig& student, const TrainSetup& setup);

// Every term of the step for the setup. The host column counts what the trainer pins there (offloaded optimizer
// state, gradient and weight staging buffers) plus the process's load-time peak of reading the checkpoints.
TrainMemory estimate_train_memory(const ModelConfig& student, const std::optional<ModelConfig>& teacher,
                                  const TrainSetup& setup);

// What a plan may choose, and what the user fixed.
struct PlanRequest {
  TrainSetup setup;                   // the user's settings (micro_batch is the largest allowed)
  double device_bytes = 0;            // free GPU memory (or --gpu-memory); 0 on a CPU run: no device limit
  double host_bytes = 0;              // host RAM available to the process (or --host-memory)
  bool choose_micro_batch = true;     // may lower micro_batch (raising grad_accum, same tokens per step)
  bool choose_checkpointing = true;   // may switch activation checkpointing on
  bool choose_offload = true;         // may move a fraction of the optimizer state to the host
  double reserve_fraction = 0.02;     // of device_bytes kept free (CUDA context, NCCL, fragmentation)
  double host_reserve_fraction = 0.1; // of host_bytes kept for the OS, checkpoint pages and the data
};

struct Plan {
  bool fits = false;
  TrainSetup setup;                   // the chosen one (the request's when nothing fits)
  TrainMemory memory;
  double device_budget = 0, host_budget = 0;
  std::string reason;                 // one line: why it does not fit, and what would
  json to_json() const;
};

// Chooses, in this order of preference, the first setup that fits both budgets: the user's micro-batch with no
// checkpointing and no offload; the smallest offload fraction (steps of 0.05) that fits; then activation
// checkpointing (1 layer per segment) with the smallest offload; then smaller micro-batches likewise. Whatever
// the request fixed is not changed. When nothing fits, `reason` says what the request needs and what would fit.
Plan make_plan(const ModelConfig& student, const std::optional<ModelConfig>& teacher, const PlanRequest& request);

// "141GiB", "141 GB", "80G", "1.5TiB", "123456789" (bytes) -> bytes. Throws mp::Error on anything else.
double parse_memory_size(const std::string& text);
std::string format_gib(double bytes);  // "151.2 GiB"

// The machine: free memory of the CUDA device (0 when there is none) and the host's available RAM.
double cuda_free_bytes(int device_index);
double host_available_bytes();

}  // namespace mp::distill
