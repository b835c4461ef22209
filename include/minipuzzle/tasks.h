// Multiple-choice task accuracy by log-likelihood, the lm-evaluation-harness convention: each choice is scored
// by the sum of log p(choice's tokens | context), the prediction is the best choice (acc) or the best per UTF-8
// byte of the choice (acc_norm).
//
// Task files are JSONL, one question per line (docs/TASKS.md):
//   {"context": "Question: ...\nAnswer:", "choices": [" yes", " no"], "answer": 0}
// optional fields: "fewshot": true (the line is a worked example for the few-shot prefix, not scored), "id".
// A question's input is the few-shot prefix (the first K examples, each rendered as context + its right choice,
// joined and followed by "\n\n") + context; a choice is scored as its continuation. As in lm-eval, trailing
// spaces of the context move to the start of the continuation, the pair is encoded whole and the choice's tokens
// are those after the context's encoding, and an input longer than max_length + 1 tokens loses its left end.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "minipuzzle/json.h"

namespace mp {

class NemotronH;

struct TaskQuestion {
  std::string context;
  std::vector<std::string> choices;
  int64_t answer = 0;
};

struct TaskFile {
  std::string name;  // the file name without .jsonl
  std::string path;
  std::vector<TaskQuestion> questions;  // scored
  std::vector<TaskQuestion> fewshot;    // examples for the prefix, in file order
};

// Reads and checks a task file; errors name the file and the line.
TaskFile read_task_file(const std::string& path);

struct TaskOptions {
  int64_t num_fewshot = -1;   // examples in the prefix; -1: every "fewshot" line of the file
  int64_t limit = 0;          // score only the first `limit` questions (0: all)
  int64_t batch = 32;         // sequences per forward (short sequences: large batches amortise each forward)
  int64_t max_length = 2048;  // longest input; longer ones lose their left end
};

struct ChoiceScore {
  double loglik = 0;     // sum of the choice's token log-probabilities
  int64_t tokens = 0;
  bool greedy = false;   // every choice token is the argmax at its position
};

struct TaskResult {
  std::string name, path;
  int64_t questions = 0, num_fewshot = 0;
  double acc = 0, acc_norm = 0, acc_stderr = 0, acc_norm_stderr = 0;
  std::vector<std::vector<ChoiceScore>> scores;  // per question, per choice
  std::vector<int64_t> pred, pred_norm;          // per question
  json to_json() const;                          // the summary (no per-question scores)
  json details(const TaskFile& file) const;      // one object per question, with every choice's score
};

// Text -> token ids (the model's tokenizer).
using EncodeFn = std::function<std::vector<uint32_t>(std::string_view)>;
// [B, L] int64 ids (right-padded) -> [B, L, V] logits; position t predicts token t + 1.
using LogitsFn = std::function<at::Tensor(const at::Tensor& ids)>;

// Scores every question of `file`. `eos` stands in for an empty context (lm-eval uses the end-of-text token).
TaskResult score_task(const TaskFile& file, const EncodeFn& encode, const LogitsFn& logits, const TaskOptions& options,
                      std::optional<uint32_t> eos = std::nullopt);
// The same with a model (its device; no gradients).
TaskResult score_task(const TaskFile& file, const EncodeFn& encode, const NemotronH& model, const TaskOptions& options,
                      std::optional<uint32_t> eos = std::nullopt);

}  // namespace mp
