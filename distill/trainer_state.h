// Internal to mp_distill: the trainer's resumable state and its atomic checkpoint directory.
//
// OUT/checkpoint/ holds trainer.json (step, data cursor, loss and eval history, the settings a resume must match)
// and state.safetensors (parameters "param/NAME", optimizer moments and fp32 masters, RNG states "rng/*").
// It is written to OUT/checkpoint.tmp-PID; then the previous checkpoint is renamed to OUT/checkpoint.prev, the new
// one into place, and only then is the previous one removed: a crash at any point leaves a complete checkpoint
// (load_trainer_state falls back to checkpoint.prev when checkpoint is missing).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "minipuzzle/distill.h"
#include "minipuzzle/json.h"

namespace mp::distill {

struct TrainerState {
  int64_t step = 0;             // optimizer steps taken (skipped non-finite steps included)
  int64_t cursor = 0;           // packed windows consumed, over all ranks
  int64_t tokens = 0;           // training tokens consumed, over all ranks
  int64_t nonfinite_in_a_row = 0;
  int64_t skipped_steps = 0;
  std::vector<double> train_loss;  // one per step (NaN for skipped steps)
  std::vector<double> learning_rates;
  json evals = json::array();   // {"step", "tokens", "val_loss", "val_ppl", "val_kl"}
  json settings;                // what must not change across a resume (seq_len, batch, seed, ...)
};

void save_trainer_state(const std::string& out_dir, const TrainerState& state, const AdamW& optimizer);
// Returns false when OUT has no checkpoint. Restores parameters, optimizer state and RNG states in place.
bool load_trainer_state(const std::string& out_dir, TrainerState& state, AdamW& optimizer);
std::string checkpoint_dir(const std::string& out_dir);

// Sharded training (minipuzzle/fsdp.h): every rank calls both. The load reshards: a checkpoint written by another
// shard group size, or by the plain trainer, gives each rank its slice of the same flat units.
class ShardedStudent;
void save_sharded_trainer_state(const std::string& out_dir, const TrainerState& state, const ShardedStudent& student,
                                Communicator* comm);
bool load_sharded_trainer_state(const std::string& out_dir, TrainerState& state, ShardedStudent& student);

}  // namespace mp::distill
