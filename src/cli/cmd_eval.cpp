// minipuzzle eval CKPT --data FILE [--seq-len L] [--logits-out FILE]: held-out perplexity.
// minipuzzle eval CKPT --tasks FILE.jsonl [...] [--num-fewshot K] [--limit N]: multiple-choice accuracy
// (acc, acc_norm) by log-likelihood (docs/TASKS.md). Both can be given; one JSON object goes to stdout.
#include <c10/core/GradMode.h>

#include <cstdio>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/evaluate.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/tasks.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

struct EvalArgs {
  std::string checkpoint, data, logits_out, tokenizer, device = "auto", data_format = "auto";
  int64_t seq_len = 512, batch = 4, max_tokens = 0;
  std::vector<std::string> tasks;
  std::string tasks_details;
  TaskOptions task_options;
};

void run(const EvalArgs& a) {
  if (a.data.empty() && a.tasks.empty())  // a bad command line: exit 2 like CLI11's own errors
    throw CLI::ValidationError("eval", "give --data (perplexity), --tasks (accuracy) or both");
  auto ck = Checkpoint::open(a.checkpoint);
  auto tokenizer = tokenizer_for_text(a.tokenizer, a.checkpoint);
  std::vector<TaskFile> task_files;
  for (const std::string& t : a.tasks) task_files.push_back(read_task_file(t));  // bad files fail before loading
  std::optional<TokenFile> tokens;
  if (!a.data.empty())
    tokens.emplace(open_data_argument(a.data, "--data", a.data_format, tokenizer.get(), ck.config().vocab_size));
  c10::Device device = parse_device(a.device);
  auto model = NemotronH::load(ck, device, default_dtype(device));
  json j{{"checkpoint", a.checkpoint}, {"device", device.str()}};
  if (tokens) {
    EvalResult r = evaluate_lm(model, tokens->data(), int64_t(tokens->num_tokens()), a.seq_len, a.batch, a.max_tokens);
    if (!a.logits_out.empty()) {
      const int64_t L = std::min<int64_t>(a.seq_len, tokens->num_tokens());
      at::Tensor ids = at::empty({1, L}, at::kLong);
      for (int64_t i = 0; i < L; ++i) ids[0][i] = int64_t(tokens->data()[i]);
      c10::AutoGradMode no_grad(false);
      at::Tensor logits = model.forward(ids.to(device)).cpu();
      std::string tmp = a.logits_out + ".tmp";
      save_safetensors(tmp, {{"input_ids", ids}, {"logits", logits}});
      fs::rename(tmp, a.logits_out);
    }
    j.update(json{{"data", a.data}, {"seq_len", a.seq_len}, {"sequences", r.sequences},
                  {"predicted_tokens", r.predicted_tokens}, {"loss", r.loss}, {"perplexity", r.perplexity}});
  }
  if (!task_files.empty()) {
    Tokenizer bytes = Tokenizer::byte_level();
    const Tokenizer& tok = tokenizer ? *tokenizer : bytes;
    EncodeFn encode = [&tok](std::string_view text) { return tok.encode(text); };
    const TaskOptions& o = a.task_options;
    json results = json::array(), details = json::object();
    for (const TaskFile& f : task_files) {
      TaskResult r = score_task(f, encode, model, o, tok.eos_id());
      results.push_back(r.to_json());
      details[f.name] = r.details(f);
    }
    j["tasks"] = results;
    if (!a.tasks_details.empty()) {
      std::string text;
      for (auto& [name, rows] : details.items())
        for (auto& row : rows) {
          row["task"] = name;
          text += row.dump() + "\n";
        }
      fs::write_file_atomic(a.tasks_details, text);
    }
  }
  std::printf("%s\n", j.dump(2).c_str());
}

void add(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* c = app.add_subcommand("eval", "Perplexity of a checkpoint over data, and accuracy on multiple-choice tasks");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_option("--data", args->data, "perplexity on: token file (minipuzzle data), Megatron PREFIX, .npy, UTF-8 "
                "text or a blend");
  c->add_option("--tasks", args->tasks, "accuracy on multiple-choice task files (JSONL, docs/TASKS.md); repeatable")
      ->check(CLI::ExistingFile);
  c->add_option("--num-fewshot", args->task_options.num_fewshot,
                "tasks: worked examples in the prefix (-1: every \"fewshot\" line of the file)")
      ->capture_default_str();
  c->add_option("--limit", args->task_options.limit, "tasks: score only the first N questions (0: all)");
  c->add_option("--task-batch-size", args->task_options.batch, "tasks: sequences per forward")->capture_default_str();
  c->add_option("--task-max-length", args->task_options.max_length,
                "tasks: longest input in tokens; longer ones lose their left end")
      ->capture_default_str();
  c->add_option("--tasks-details", args->tasks_details, "tasks: write every choice's log-likelihood as JSONL");
  add_data_format_option(c, &args->data_format);
  c->add_option("--seq-len", args->seq_len, "tokens per sequence")->capture_default_str();
  c->add_option("--batch-size", args->batch, "sequences per forward")->capture_default_str();
  c->add_option("--max-tokens", args->max_tokens, "read at most this many tokens (0: all)");
  c->add_option("--logits-out", args->logits_out, "write the first sequence's logits as safetensors");
  c->add_option("--tokenizer", args->tokenizer, "tokenizer.json for text input (default: the checkpoint's, else bytes)");
  add_device_option(c, &args->device);
  add_kernel_options(c);
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(eval, mp::cli::add);
