// Fully sharded data parallel distillation (issue 21): the ZeRO-3 / FSDP scheme on the c10d process groups of
// distill/ddp.cpp (NCCL on GPUs, Gloo on CPUs; torchrun's environment).
//
// The student's parameters are flattened per unit: one unit per layer ("layer.<i>": every backbone.layers.<i>.*
// tensor) and one root unit ("root": embedding, final norm, lm_head). Within a unit, tensors that take weight decay
// come first, then the others, each starting at a multiple of 16 elements; the unit is padded to a multiple of
// 16 x shard group size. Rank r of a shard group of S ranks owns elements [r L, (r + 1) L) of every unit
// (L = padded / S): its slice of the parameters, of the gradient, of the fp32 master weights and of both AdamW
// moments. The layout does not depend on S, so a checkpoint reshards by re-slicing.
//
//   zero3: a layer's full parameters exist only while it runs: all-gathered before its forward (the next layer's
//          gather is launched before the current layer computes, asynchronously), freed after; all-gathered again
//          when backward reaches the layer (a hook on the layer's output gradient, launching the previous layer's
//          gather too), freed once its gradients are complete; the gradients are then flattened and
//          reduce-scattered (asynchronously) and the rank adds its slice to its gradient shard. Every micro-batch
//          reduce-scatters (full gradients are never kept across micro-batches). The root unit stays gathered (its
//          gradients and optimizer state are sharded): the embedding and lm_head are used at both ends of the step.
//   zero2: parameters stay replicated; gradients and optimizer state are sharded as above; after the update every
//          unit is all-gathered.
//   hybrid (shard_group_size S < world size W): shards within groups of S consecutive ranks (a node), replicas
//          across the W / S groups; the gradient shards are all-reduced over the replicas after the reduce-scatter.
//
// Gradients are averaged over all W ranks; the global gradient norm sums the shards' squares over the shard group.
// World size 1 runs the same code with copies instead of collectives (tests compare it with the plain path).
// Composes with activation checkpointing (the checkpointed layer is regathered before its recomputation),
// optimizer offload (AdamW's offload applies to the shards) and the fused KD loss (lm_head is in the root unit).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "minipuzzle/distill.h"
#include "minipuzzle/json.h"
#include "minipuzzle/model.h"

namespace mp::distill {

enum class ShardMode { none, zero2, zero3 };
ShardMode shard_mode_from_name(const std::string& name);  // "none" | "zero2" | "zero3"
const char* shard_mode_name(ShardMode mode);

// The flat layout of a model's parameters (world-size independent).
struct FlatLayout {
  static constexpr int64_t kAlign = 16;  // elements
  struct Entry {
    std::vector<std::string> names;  // tied parameters: one tensor under several names
    std::vector<int64_t> shape;
    int64_t offset = 0, numel = 0;
    bool decay = false;
  };
  struct Unit {
    std::string name;    // "layer.<i>" or "root"
    int64_t layer = -1;  // -1 for the root
    std::vector<Entry> entries;
    int64_t numel = 0;        // aligned end of the last entry
    int64_t decay_numel = 0;  // aligned end of the last decayed entry
    // Elements each of `group` ranks owns (numel padded to a multiple of kAlign * group, divided by group).
    int64_t shard_length(int64_t group) const;
  };
  std::vector<Unit> units;  // layers in order, then the root
  static FlatLayout of(const ModelConfig& config, const std::map<std::string, at::Tensor>& params);
  json to_json() const;
};

class ShardedStudent {
 public:
  // Replaces `model`'s parameters by views of the flat units (zero3: the layers' storage freed outside use) and
  // builds AdamW over this rank's shards. comm: the job's world group (nullptr for one process). shard_group_size:
  // ranks per shard group (0: the world). offload_fraction: of this rank's optimizer state, held on the host.
  ShardedStudent(NemotronH& model, std::shared_ptr<Communicator> comm, ShardMode mode, int64_t shard_group_size,
                 AdamWOptions adamw, double offload_fraction);
  ~ShardedStudent();
  ShardedStudent(const ShardedStudent&) = delete;
  ShardedStudent& operator=(const ShardedStudent&) = delete;

  // The student's final hidden state with per-layer gathers (and the backward hooks when grad mode is on);
  // checkpoint_layers > 0: each layer runs checkpointed (recomputed in backward). Collective.
  at::Tensor forward_hidden(const at::Tensor& input_ids, int64_t checkpoint_layers,
                            const ForwardOptions& options = {}) const;
  // One optimizer step, as train_step (distill.h) for the plain student. Collective.
  StepResult train_step(Teacher* teacher, const std::vector<Batch>& micro_batches, double lr, double clip,
                        const LossOptions& options);

  AdamW& optimizer();
  const AdamW& optimizer() const;
  ShardMode mode() const;
  const FlatLayout& layout() const;
  int64_t shard_group_size() const;
  int64_t shard_rank() const;      // this rank's index within its shard group
  int64_t replica_index() const;   // which shard group (0 without hybrid sharding)

  // This rank's shard of every unit, for checkpoints: "KIND/UNIT" -> [L] CPU tensor, KIND "param" (model dtype),
  // "exp_avg", "exp_avg_sq" and, for low-precision parameters, "master" (float32).
  std::map<std::string, at::Tensor> shard_state() const;
  // Sets this rank's shard of every unit from full-unit slices: get(unit, kind, begin, length) returns the
  // elements [begin, begin + length) of the unit's flat tensor of that kind (zeros past numel are filled here).
  void load_shard_state(const std::function<at::Tensor(size_t unit, const std::string& kind, int64_t begin,
                                                       int64_t length)>& get,
                        int64_t optimizer_steps);
  // Every parameter at full size on the CPU, by name (collective: every rank must call it; all get the tensors).
  std::map<std::string, at::Tensor> full_parameters_cpu() const;
  // The last step's gradients (averaged over ranks, after clipping) at full size on the CPU, by name. Collective.
  std::map<std::string, at::Tensor> full_gradients_cpu() const;

  struct Impl;  // distill/fsdp.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mp::distill
