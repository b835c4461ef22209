// Held-out language-model loss / perplexity of a model over a run of token ids.
#pragma once
#include <cstdint>

#include "minipuzzle/model.h"

namespace mp {

struct EvalResult {
  double loss = 0;        // mean next-token cross-entropy (nats)
  double perplexity = 0;  // exp(loss)
  int64_t predicted_tokens = 0;
  int64_t sequences = 0;
};

// Splits tokens[0, n) into non-overlapping windows of `seq_len` (the last partial window dropped unless it
// is the only one), runs them `batch` at a time, and averages the loss over every predicted token.
// max_tokens > 0 limits the tokens read.
EvalResult evaluate_lm(const NemotronH& model, const uint32_t* tokens, int64_t n, int64_t seq_len, int64_t batch,
                       int64_t max_tokens = 0);

}  // namespace mp
