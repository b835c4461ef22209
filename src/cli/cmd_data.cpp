// minipuzzle data FILES... --tokenizer tokenizer.json|byte -o NAME [--jsonl-field text] [--valid-fraction F]
//                          [--documents paragraph|file] [--threads N] [--append-eos]
// Text and JSONL in, token files out (format: include/minipuzzle/token_file.h).
// minipuzzle data --next-line-task TOKEN_FILE -o TASK.jsonl [--questions N] [--fewshot K] [--seed S]
// A "which line comes next?" multiple-choice task from a token file's documents (docs/TASKS.md).
#include <cstdio>
#include <memory>

#include "minipuzzle/data_input.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"
#include "src/cli/command.h"

namespace mp::cli {
namespace {

struct TaskArgs {
  std::string from;
  NextLineTaskOptions options;
};

void run_task(const TaskArgs& t, const DataPrepOptions& o) {
  TokenFile file = TokenFile::open(t.from);
  std::unique_ptr<Tokenizer> tokenizer;
  if (file.metadata().tokenizer_kind != "byte_level")
    tokenizer = tokenizer_for_data(file.metadata().tokenizer_path, {});
  fs::write_file_atomic(o.output, make_next_line_task(file, tokenizer.get(), t.options));
  log_info("wrote " + o.output + ": " + std::to_string(t.options.questions) + " questions and " +
           std::to_string(t.options.fewshot) + " few-shot examples from " + t.from);
}

void run(const DataPrepOptions& options) {
  if (options.inputs.empty())  // a bad command line: exit 2 like CLI11's own errors
    throw CLI::ValidationError("data", "give the text or JSONL files to tokenize (or --next-line-task TOKEN_FILE)");
  DataPrepResult r = prepare_token_files(options);
  if (r.interrupted) {
    log_warning("minipuzzle data: interrupted; no output was written");
    set_exit_code(kExitInterrupted);
    return;
  }
  for (size_t i = 0; i < r.paths.size(); ++i) {
    const TokenFileMetadata& m = r.metadata[i];
    log_info("wrote " + r.paths[i] + ".{tokens,index,json}: " + std::to_string(m.num_tokens) + " tokens in " +
             std::to_string(m.num_documents) + " documents (" + m.split + ")");
  }
  double mb = double(r.input_bytes) / 1e6;
  char line[160];
  std::snprintf(line, sizeof line, "tokenized %.2f MB in %.2f s (%.1f MB/s, %d threads)", mb, r.seconds,
                r.seconds > 0 ? mb / r.seconds : 0.0, r.threads);
  log_info(line);
}

void add(CLI::App& app) {
  auto o = std::make_shared<DataPrepOptions>();
  CLI::App* c = app.add_subcommand(
      "data", "Tokenize text and JSONL files into token files (NAME.tokens / NAME.index / NAME.json)");
  auto t = std::make_shared<TaskArgs>();
  CLI::Option* files = c->add_option("files", o->inputs, "text files, and .jsonl/.ndjson files (one JSON object per line)")
                           ->check(CLI::ExistingFile);
  c->add_option("--tokenizer", o->tokenizer, "tokenizer.json (or its directory), or \"byte\" for bytes + <eos>/<pad>")
      ->capture_default_str();
  c->add_option("-o,--output", o->output, "output NAME (NAME.train/NAME.valid with --valid-fraction)")->required();
  c->add_option("--jsonl-field", o->jsonl_field, "the JSONL field holding the text")->capture_default_str();
  c->add_option("--documents", o->text_documents,
                "how text files split into documents: paragraph (blank lines separate) or file (one per file)")
      ->check(CLI::IsMember({"paragraph", "file"}))
      ->capture_default_str();
  c->add_option("--valid-fraction", o->valid_fraction, "fraction of documents held out (deterministic by index)")
      ->check(CLI::Range(0.0, 0.999999));
  c->add_option("--threads", o->threads, "encoding threads (0: all cores)")->capture_default_str();
  c->add_flag("--append-eos", o->append_eos, "end every document with the tokenizer's end-of-document token");
  c->add_option("--next-line-task", t->from,
                "instead: write a \"which line comes next?\" task (JSONL, docs/TASKS.md) from this token file's "
                "documents to -o")
      ->excludes(files);
  c->add_option("--questions", t->options.questions, "--next-line-task: questions")->capture_default_str();
  c->add_option("--fewshot", t->options.fewshot, "--next-line-task: few-shot examples")->capture_default_str();
  c->add_option("--seed", t->options.seed, "--next-line-task: seed of the draws")->capture_default_str();
  c->callback([o, t] { t->from.empty() ? run(*o) : run_task(*t, *o); });
}

MP_REGISTER_COMMAND(data, add);

}  // namespace
}  // namespace mp::cli
