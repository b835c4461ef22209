// Stages 2 and 3 of `minipuzzle search` (see search_stages.h): zero-shot loss of candidates pruned in memory,
// and a short distillation of the best few.
#include "src/cli/search_stages.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <memory>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/evaluate.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"
#include "minipuzzle/token_file.h"
#include "src/cli/common.h"


namespace mp::cli {

namespace {

// What every candidate's evaluation shares: the parent loaded once, its scores, the calibration tokens.
struct StageContext {
  SearchStageOptions o;
  std::unique_ptr<Checkpoint> checkpoint;
  std::unique_ptr<NemotronH> parent;  // loaded on first use (stage 2)
  Scores scores;
  std::unique_ptr<TokenFile> calib;
  c10::Device device{c10::kCPU};

  const NemotronH& model() {
    if (!parent) parent = std::make_unique<NemotronH>(NemotronH::load(*checkpoint, device, default_dtype(device)));
    return *parent;
  }
  PrunePlan plan(const ModelConfig& student, const std::vector<int64_t>& dropped) const {
    return make_plan(checkpoint->config(), target_from_config(student, dropped), &scores);
  }
};

std::string candidate_dir_name(const ModelConfig& student, const std::vector<int64_t>& dropped) {
  return search::candidate_id(search::Shape::of(student), dropped);
}

}  // namespace

void attach_search_stages(search::SearchOptions& options, const ModelConfig& parent, const SearchStageOptions& s,
                          int64_t stage2_top, int64_t distill_top) {
  if (stage2_top <= 0 && distill_top <= 0) return;
  MP_CHECK(stage2_top > 0, "search: --distill-top ranks the best of stage 2; give --zero-shot-top M (M >= K) as well");
  MP_CHECK(distill_top <= stage2_top, "search: --distill-top ", distill_top, " is larger than --zero-shot-top ",
           stage2_top, "; stage 3 distils the best of stage 2");
  MP_CHECK(!s.checkpoint.empty() && fs::is_directory(s.checkpoint), "search: --zero-shot-top prunes the candidates "
           "from the parent's weights: SOURCE must be a checkpoint directory, found \"", s.checkpoint, "\"");
  MP_CHECK(!s.scores.empty(), "search: --zero-shot-top needs --scores (scores.json of ", s.checkpoint,
           "): the pruner keeps the most important units of each candidate");
  MP_CHECK(!s.calib.empty(), "search: --zero-shot-top needs --calib (a token file or text to measure the loss on)");
  MP_CHECK(s.seq_len > 1 && s.batch > 0 && s.calib_tokens >= 0, "search: need --seq-len > 1, --batch-size > 0 and "
           "--calib-tokens >= 0");
  if (s.threads > 0) at::set_num_threads(s.threads);

  auto ctx = std::make_shared<StageContext>();
  ctx->o = s;
  ctx->checkpoint = std::make_unique<Checkpoint>(Checkpoint::open(s.checkpoint));
  MP_CHECK(ctx->checkpoint->config().pattern() == parent.pattern(), "search: the checkpoint ", s.checkpoint,
           " is not the searched parent");
  ctx->scores = read_scores(s.scores);
  check_scores_fit(ctx->scores, ctx->checkpoint->config(), s.scores);
  ctx->device = parse_device(s.device);
  auto tokenizer = tokenizer_for_text(s.tokenizer, s.checkpoint);
  ctx->calib = std::make_unique<TokenFile>(
      open_data_argument(s.calib, "--calib", s.data_format, tokenizer.get(), parent.vocab_size));
  MP_CHECK(int64_t(ctx->calib->vocab_size()) <= parent.vocab_size, "search: --calib ", s.calib, " has vocab_size ",
           ctx->calib->vocab_size(), ", larger than the model's ", parent.vocab_size);
  MP_CHECK(int64_t(ctx->calib->num_tokens()) > 1, "search: --calib ", s.calib, " holds no tokens to predict");

  options.stage2_top = stage2_top;
  options.zero_shot_loss = [ctx](const ModelConfig& student, const std::vector<int64_t>& dropped) {
    c10::AutoGradMode no_grad(false);
    NemotronH pruned = prune_in_memory(ctx->model(), ctx->plan(student, dropped));
    const StageContext& c = *ctx;
    return evaluate_lm(pruned, c.calib->data(), int64_t(c.calib->num_tokens()), c.o.seq_len, c.o.batch,
                       c.o.calib_tokens)
        .loss;
  };
  if (distill_top <= 0) return;

  MP_CHECK(!s.distill_data.empty(), "search: --distill-top needs --distill-data (a token file to distil on)");
  MP_CHECK(!s.report_dir.empty(), "search: --distill-top writes its students under the report directory (-o)");
  const std::string valid = s.distill_valid.empty() ? s.calib : s.distill_valid;
  for (const std::string& f : {s.distill_data, valid})  // checked now rather than after stage 2
    (void)open_data_argument(f, f == valid ? "--distill-valid" : "--distill-data", s.data_format, tokenizer.get(),
                             parent.vocab_size);
  MP_CHECK(s.distill_tokens > 0 && s.distill_micro_batch > 0 && s.distill_lr > 0, "search: need --distill-tokens, ",
           "--distill-micro-batch and --distill-lr > 0");
  options.distill_top = distill_top;
  options.distill_loss = [ctx, valid](const ModelConfig& student, const std::vector<int64_t>& dropped) {
    const SearchStageOptions& o = ctx->o;
    const std::string dir = fs::join(fs::join(o.report_dir, "stage3"), candidate_dir_name(student, dropped));
    fs::remove_all(dir);  // a previous search's leftovers for this id
    fs::create_directories(dir);
    PruneOptions po;
    po.overwrite = true;
    prune_checkpoint(*ctx->checkpoint, ctx->plan(student, dropped), fs::join(dir, "student"), po);
    distill::DistillOptions d;
    d.teacher = o.checkpoint;
    d.student = fs::join(dir, "student");
    d.train_data = o.distill_data;
    d.valid_data = valid;
    d.data_format = o.data_format;
    d.tokenizer = o.tokenizer;
    d.out_dir = fs::join(dir, "distill");
    d.tokens = o.distill_tokens;
    d.seq_len = o.seq_len;
    d.micro_batch = o.distill_micro_batch;
    d.schedule.lr = o.distill_lr;
    d.schedule.min_lr = o.distill_lr / 10;
    d.eval_every = int64_t(1) << 40;  // at the start and the end only
    d.eval_tokens = o.distill_eval_tokens;
    d.save_every = 0;
    d.seed = o.seed;
    d.threads = o.threads;
    d.device = ctx->device.str();  // "cuda:N" as stage 2 ran, not GPU 0
    distill::DistillResult r = distill::run_distillation(d);
    MP_CHECK(r.exit_code == 0 && r.last_eval.contains("val_loss"), "search: the stage-3 distillation of ", dir,
             " did not finish (exit code ", r.exit_code, ")");
    return r.last_eval.at("val_loss").get<double>();
  };
}

}  // namespace mp::cli
