// minipuzzle score CKPT --calib FILE --samples N --seq-len L -o scores.json
#include <memory>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

struct ScoreArgs {
  std::string checkpoint, calib, output, tokenizer, device = "auto", reduction = "mean_l2", report, data_format = "auto";
  ScoreOptions options;
  uint64_t seed = 0;
  bool no_depth = false;
};

void run(const ScoreArgs& a) {
  check_output_dir(a.output, /*overwrite=*/true);
  auto ck = Checkpoint::open(a.checkpoint);
  auto tokenizer = tokenizer_for_text(a.tokenizer, a.checkpoint);
  TokenFile tokens = open_data_argument(a.calib, "--calib", a.data_format, tokenizer.get(), ck.config().vocab_size);
  MP_CHECK(tokens.vocab_size() <= uint64_t(ck.config().vocab_size), a.calib, ": token ids go up to ",
           tokens.vocab_size(), " but the model's vocabulary has ", ck.config().vocab_size, " entries");
  c10::Device device = parse_device(a.device);
  auto model = NemotronH::load(ck, device, default_dtype(device));
  ScoreOptions o = a.options;
  o.reduction = parse_reduction(a.reduction);
  o.depth = !a.no_depth;
  at::Tensor ids = sample_calibration(tokens, o.samples, o.seq_len, a.seed);
  Scores scores = compute_scores(model, ids, o);
  scores.calibration["source"] = a.calib;
  scores.calibration["seed"] = a.seed;
  write_scores(a.output, scores);
  if (!a.report.empty()) write_scores_report(scores, a.report);
  log_info("wrote " + a.output + (a.report.empty() ? "" : " and " + a.report + "/scores.{md,html}"));
}

void add(CLI::App& app) {
  auto args = std::make_shared<ScoreArgs>();
  CLI::App* c = app.add_subcommand("score", "Importance of layers, heads, neurons and channels from calibration data");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_option("--calib", args->calib, "token file (minipuzzle data), Megatron PREFIX, .npy, UTF-8 text or a blend")
      ->required();
  add_data_format_option(c, &args->data_format);
  c->add_option("-o,--output", args->output, "scores.json to write")->required();
  c->add_option("--samples", args->options.samples, "calibration sequences")->capture_default_str();
  c->add_option("--seq-len", args->options.seq_len, "tokens per sequence")->capture_default_str();
  c->add_option("--batch-size", args->options.batch_size, "sequences per forward")->capture_default_str();
  c->add_option("--reduction", args->reduction, "mean_l2 (NVIDIA's) | mean | l2 | variance")->capture_default_str();
  c->add_flag("--no-depth", args->no_depth, "skip the one-layer-removed depth criteria");
  c->add_option("--depth-samples", args->options.depth_samples, "samples used for depth criteria (0: all)");
  c->add_option("--block-k", args->options.block_k, "also score contiguous blocks of k layers");
  c->add_option("--iterative", args->options.iterative_steps, "iterative removal: layers to remove one by one");
  c->add_option("--iterative-criterion", args->options.iterative_criterion,
                "lm_loss_increase | kl | mse_hidden | mse_logits")->capture_default_str();
  c->add_flag("--taylor", args->options.taylor, "also first-order Taylor scores (gradient x activation)");
  c->add_option("--nested-head-dim", args->options.nested_head_dim,
                "also Minitron-SSM nested Mamba head scores over the top-k head_dim positions");
  c->add_option("--tokenizer", args->tokenizer, "tokenizer.json for text input (default: the checkpoint's, else bytes)");
  c->add_option("--seed", args->seed, "calibration sampling seed")->capture_default_str();
  c->add_option("--report", args->report, "directory for scores.md and scores.html");
  add_device_option(c, &args->device);
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(score, mp::cli::add);
