// minipuzzle teacher-logits TEACHER --data D -o DIR --top-k K [--seq-len L --device D --batch-size B ...]
// Runs the teacher once over the data and stores per token its top-k ids and logits plus the full row's
// log-sum-exp (docs/TEACHER_LOGITS.md); `distill --teacher-logits DIR` then trains from them. Resumable: a rerun
// skips finished shards. Exit codes: 0 done, 1 error, 130 interrupted (finished shards kept; rerun to resume).
#include <cstdio>

#include "minipuzzle/interrupt.h"
#include "minipuzzle/teacher_logits.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

void add(CLI::App& app) {
  auto o = std::make_shared<TeacherLogitsOptions>();
  auto temperature = std::make_shared<double>(1.0);
  CLI::App* c = app.add_subcommand(
      "teacher-logits",
      "Run the teacher once over the data and store per token its top-k ids and logits plus the full row's "
      "log-sum-exp, compressed and sharded (docs/TEACHER_LOGITS.md), for distill --teacher-logits. Resumable.");
  c->add_option("teacher", o->teacher, "teacher checkpoint directory")->required();
  c->add_option("--data", o->data, "the training data distill will read (any data argument: token file, Megatron "
                "PREFIX, .npy, text, blend)")->required();
  c->add_option("--data-format", o->data_format, "auto | tokens | megatron | npy | text | u16 | u32 | u64 | i32 | i64")
      ->capture_default_str();
  c->add_option("--tokenizer", o->tokenizer, "tokenizer.json for text data (default: the teacher's, else bytes)");
  c->add_option("-o,--out", o->out_dir, "output directory (manifest.json, shard-NNNNN.bin)")->required();
  c->add_option("--top-k", o->top_k, "logits kept per token")->capture_default_str();
  c->add_option("--seq-len", o->seq_len, "tokens per window; must equal distill's --seq-len")->capture_default_str();
  c->add_option("--batch-size", o->batch_size, "windows per teacher forward")->capture_default_str();
  c->add_option("--device", o->device, "cpu | cuda")->capture_default_str();
  add_kernel_options(c);
  c->add_option("--temperature", *temperature, "distillation temperature: the row's log-sum-exp is stored at it "
                "(and at 1)")->capture_default_str();
  c->add_option("--logit-encoding", o->logit_encoding,
                "bf16 (gap below the row max as bfloat16) | q8 (one byte, square-root companded) | f32 (lossless)")
      ->capture_default_str();
  c->add_option("--windows-per-shard", o->windows_per_shard, "windows per shard file (0: about 256 MiB)")
      ->capture_default_str();
  c->add_option("--max-windows", o->max_windows, "store only the first N windows (0: all)")->capture_default_str();
  c->add_option("--threads", o->threads, "CPU threads (0: default)")->capture_default_str();
  c->callback([o, temperature] {
    o->temperatures = {1.0, *temperature};
    const TeacherLogitsResult r = write_teacher_logits(*o);
    if (r.interrupted) {
      set_exit_code(kExitInterrupted);
      return;
    }
    std::printf("{\"dir\": \"%s\", \"windows\": %lld, \"tokens\": %lld, \"shards\": %lld, \"shards_written\": %lld, "
                "\"shards_skipped\": %lld, \"bytes\": %lld, \"row_bytes\": %.0f, \"bytes_per_token\": %.4f, "
                "\"seconds\": %.2f, \"tokens_per_s\": %.1f}\n",
                o->out_dir.c_str(), (long long)r.windows, (long long)r.tokens, (long long)r.shards,
                (long long)r.shards_written, (long long)r.shards_skipped, (long long)r.bytes, r.row_bytes,
                r.bytes_per_token, r.seconds, r.tokens_per_s);
  });
}

static const bool registered = register_command("teacher-logits", add);

}  // namespace
}  // namespace mp::cli
