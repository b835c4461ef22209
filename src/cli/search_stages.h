// Stages 2 and 3 of `minipuzzle search`, as the callbacks SearchOptions takes (the search library itself is
// tensor-free arithmetic):
//   stage 2 (--zero-shot-top M): each of the best M stage-1 candidates is pruned in memory from the parent
//     checkpoint (group-aware, ranked by scores.json; no checkpoint written) and its next-token loss measured on
//     calibration tokens, as Minitron-SSM ranked its 100+ candidates by zero-shot validation loss and MiniPuzzle
//     its ~400 by next-token accuracy;
//   stage 3 (--distill-top K): each of the best K of stage 2 is pruned to REPORT_DIR/stage3/<id>/student,
//     distilled from the parent for a short token budget (mp::distill::run_distillation, forward KL on logits),
//     and ranked by its validation loss; the distilled students stay in REPORT_DIR/stage3/<id>/distill/final.
#pragma once
#include <cstdint>
#include <string>

#include "minipuzzle/search.h"

namespace mp::cli {

struct SearchStageOptions {
  std::string checkpoint;  // the parent (a Hugging Face checkpoint directory)
  std::string scores;      // scores.json of the parent (which units and layers the pruner keeps)
  std::string calib;       // token file or text: stage 2's tokens, and stage 3's validation tokens by default
  std::string tokenizer;   // for text calibration input (default: the checkpoint's tokenizer.json, else bytes)
  std::string data_format = "auto";  // of --calib, --distill-data and --distill-valid (minipuzzle/data_input.h)
  std::string device = "auto";
  int64_t calib_tokens = 262144, seq_len = 2048, batch = 4;
  int threads = 0;
  // Stage 3.
  std::string distill_data, distill_valid, report_dir;
  int64_t distill_tokens = 1 << 20, distill_micro_batch = 4, distill_eval_tokens = 65536;
  double distill_lr = 1e-4;
  uint64_t seed = 1234;
};

// Installs SearchOptions::zero_shot_loss (stage2_top > 0) and distill_loss (distill_top > 0); validates the inputs
// (checkpoint, scores fit the parent, data files) before the search runs.
void attach_search_stages(search::SearchOptions& options, const ModelConfig& parent, const SearchStageOptions& stages,
                          int64_t stage2_top, int64_t distill_top);

}  // namespace mp::cli
