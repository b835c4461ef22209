// minipuzzle score CKPT --calib FILE --samples N --seq-len L -o scores.json
#include <cctype>
#include <cmath>
#include <map>
#include <memory>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/layer_stream.h"
#include "minipuzzle/model.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

struct ScoreArgs {
  std::string checkpoint, calib, output, tokenizer, device = "auto", reduction = "mean_l2", report, max_gpu_memory,
      data_format = "auto";
  ScoreOptions options;
  uint64_t seed = 0;
  bool no_depth = false;
};

// "16GiB", "16G" (binary), "16GB" (decimal), "512MiB", "1.5TiB", or a plain byte count.
int64_t parse_memory_size(const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  for (auto& ch : unit) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  const std::map<std::string, double> units{{"", 1},           {"b", 1},           {"k", 1024.0},      {"kib", 1024.0},
                                            {"kb", 1e3},       {"m", 1048576.0},   {"mib", 1048576.0}, {"mb", 1e6},
                                            {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
                                            {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12}};
  auto it = units.find(unit);
  MP_CHECK(used > 0 && it != units.end() && value > 0 && std::isfinite(value),
           "score: --max-gpu-memory expects a size such as 16GiB, 24G, 80GB or 512MiB, found \"", text, "\"");
  return int64_t(value * it->second);
}

std::string gib(int64_t bytes) {
  char buf[32];
  if (bytes >= (int64_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", double(bytes) / double(1ll << 30));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1ll << 20));
  return buf;
}

void run(const ScoreArgs& a) {
  check_output_dir(a.output, /*overwrite=*/true);
  auto ck = Checkpoint::open(a.checkpoint);
  auto tokenizer = tokenizer_for_text(a.tokenizer, a.checkpoint);
  TokenFile tokens = open_data_argument(a.calib, "--calib", a.data_format, tokenizer.get(), ck.config().vocab_size);
  MP_CHECK(tokens.vocab_size() <= uint64_t(ck.config().vocab_size), a.calib, ": token ids go up to ",
           tokens.vocab_size(), " but the model's vocabulary has ", ck.config().vocab_size, " entries");
  c10::Device device = parse_device(a.device);
  const at::ScalarType dtype = default_dtype(device);
  ScoreOptions o = a.options;
  o.reduction = parse_reduction(a.reduction);
  o.depth = !a.no_depth;
  at::Tensor ids = sample_calibration(tokens, o.samples, o.seq_len, a.seed);
  const ModelConfig& config = ck.config();
  const int64_t element = int64_t(c10::elementSize(dtype));
  int64_t weights = LayerStreamer::non_layer_bytes(config, dtype);
  for (int64_t i = 0; i < config.num_layers(); ++i) weights += LayerStreamer::layer_bytes(config, i, dtype);
  int64_t budget = a.max_gpu_memory.empty() ? 0 : parse_memory_size(a.max_gpu_memory);
  if (budget == 0 && !o.taylor) {
    // Automatic: stream when the weights and scoring's activations do not fit the device's free memory.
    const int64_t free = LayerStreamer::device_free_bytes(device);
    const int64_t need = weights + score_activation_bytes(config, o, element, /*streaming=*/false);
    if (free >= 0 && need > free) {
      budget = free - (free / 20);  // 5% left for the CUDA context's own allocations and fragmentation
      log_info("score: the weights (" + gib(weights) + ") and scoring (" + gib(need - weights) +
               ") do not fit the device's free " + gib(free) + "; streaming layers within " + gib(budget) +
               " (--max-gpu-memory to choose)");
    }
  }
  Scores scores;
  if (budget > 0) {
    // On the CPU nothing caps the allocator: the budget bounds the weights' copies alone (what the tests exercise).
    int64_t activations = 0;
    if (device.is_cuda()) {
      // The whole batch per forward when it fits beside the least weights streaming takes, else fewer samples.
      const int64_t least = LayerStreamer::min_weight_bytes(config, dtype);
      const int64_t per_forward = score_stream_batch_size(config, o, element, budget - least);
      if (per_forward == 0) {
        ScoreOptions one = o;
        one.stream_batch_size = 1;
        const int64_t need = least + score_activation_bytes(config, one, element, /*streaming=*/true);
        fail("score: --max-gpu-memory ", gib(budget), " is too small: the smallest budget that works is ", need,
             " bytes (", gib(need), "): the embeddings, final norm, lm_head and two layers in flight (", gib(least),
             ") and one sample of ", o.seq_len, " tokens through a layer (", gib(need - least),
             "); use a smaller --seq-len or a larger budget");
      }
      if (per_forward < o.batch_size)
        log_info("score: " + gib(budget) + " fits " + std::to_string(per_forward) + " of the " +
                 std::to_string(o.batch_size) + " samples of a batch per forward: streamed forwards take " +
                 std::to_string(per_forward) + " at a time");
      o.stream_batch_size = per_forward;
      activations = score_activation_bytes(config, o, element, /*streaming=*/true);
    }
    LayerStreamer::limit_device_memory(device, budget);
    auto streamer = LayerStreamer::open(ck, device, dtype, budget - activations);
    log_info("score: layer streaming within " + gib(budget) + ": " + std::to_string(streamer->stats().resident_layers) +
             " of " + std::to_string(config.num_layers()) + " layers resident, the others copied per use" +
             (device.is_cuda() && !streamer->stats().pinned ? " (host memory could not be page-locked: slow copies)" : ""));
    scores = compute_scores(*streamer, ids, o);
    const auto& st = streamer->stats();
    log_info("score: " + std::to_string(st.loads) + " layer copies (" + gib(st.bytes_loaded) + "), " +
             std::to_string(st.prefetch_hits) + " of them started a layer ahead, overlapping compute");
  } else {
    auto model = NemotronH::load(ck, device, dtype);
    scores = compute_scores(model, ids, o);
  }
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
  c->add_flag("--expert-loss", args->options.expert_loss,
              "MoE: also each routed expert's LM-loss increase when removed (a forward per expert per MoE layer)");
  c->add_option("--nested-head-dim", args->options.nested_head_dim,
                "also Minitron-SSM nested Mamba head scores over the top-k head_dim positions");
  c->add_option("--tokenizer", args->tokenizer, "tokenizer.json for text input (default: the checkpoint's, else bytes)");
  c->add_option("--seed", args->seed, "calibration sampling seed")->capture_default_str();
  c->add_option("--report", args->report, "directory for scores.md and scores.html");
  c->add_option("--max-gpu-memory", args->max_gpu_memory,
                "run within this much device memory (e.g. 16GiB, 24G, 80GB): layer weights stay in host memory "
                "and are copied to the device layer by layer, the next copy overlapping the current compute "
                "(same scores; host RAM about the model's size). Automatic when the model does not fit the "
                "device's free memory");
  c->footer(
      "Memory: logits, log-softmax, KL and losses are computed a chunk of tokens at a time (no [batch, seq, vocab]\n"
      "float32 tensor), so scoring needs the weights plus a few GiB (12B, 4 x 4096 tokens: under 8 GiB).\n"
      "Depth criteria reuse the unchanged prefix: removing layer i runs only layers i+1.. from layer i's input,\n"
      "about half the work of one full pass per layer.");
  add_device_option(c, &args->device);
  add_kernel_options(c);
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(score, mp::cli::add);
