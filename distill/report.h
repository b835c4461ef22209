// Internal to mp_distill: OUT/loss.svg, OUT/report.html and OUT/report.md from the trainer's history.
#pragma once
#include <cstdint>

#include "distill/trainer_state.h"
#include "minipuzzle/distill.h"

namespace mp::distill {

void write_training_report(const DistillOptions& options, const TrainerState& state, int64_t total_steps,
                           int64_t tokens_per_step, int exit_code);

}  // namespace mp::distill
