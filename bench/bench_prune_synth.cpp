// Writes a synthetic Nemotron-H checkpoint in bf16 (the first layers of Nemotron-H-8B's shape: hidden 4096,
// vocab 131072, FFN 21504, 128 Mamba heads x 64 in 8 groups, 32/8 attention heads) plus a random scores.json and
// a target.json, for scripts/bench_prune.sh, which times `minipuzzle prune` on it against `cp -r`.
// The weights are a 64 MiB block of random bf16 values repeated (the pruner's speed does not depend on them).
//
// usage: bench_prune_synth --out DIR [--layers N] [--hidden H] [--vocab V]
//   default (24 layers): about 8.6 GB; the CI smoke run uses --layers 4 --hidden 256 --vocab 4096.
// Prints JSON: {"parent": DIR/parent, "bytes": ..., "scores": ..., "target": ..., "seconds": ...}.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include "minipuzzle/fs.h"
#include <random>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"

using namespace mp;

namespace {

std::vector<double> random_vector(std::mt19937_64& rng, int64_t n) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out;
  int64_t layers = 24, hidden = 4096, vocab = 131072;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--out") out = argv[i + 1];
    else if (a == "--layers") layers = std::stoll(argv[i + 1]);
    else if (a == "--hidden") hidden = std::stoll(argv[i + 1]);
    else if (a == "--vocab") vocab = std::stoll(argv[i + 1]);
  }
  if (out.empty()) {
    std::fprintf(stderr, "usage: bench_prune_synth --out DIR [--layers N] [--hidden H] [--vocab V]\n");
    return 2;
  }
  const std::string pattern8b = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-";
  const bool small = hidden < 4096;
  json cfg{{"architectures", {"NemotronHForCausalLM"}},
           {"model_type", "nemotron_h"},
           {"hybrid_override_pattern", pattern8b.substr(0, static_cast<size_t>(layers))},
           {"vocab_size", vocab},
           {"hidden_size", hidden},
           {"intermediate_size", small ? 4 * hidden : 21504},
           {"num_attention_heads", small ? 8 : 32},
           {"num_key_value_heads", small ? 2 : 8},
           {"head_dim", small ? 32 : 128},
           {"mamba_num_heads", small ? 16 : 128},
           {"mamba_head_dim", small ? 32 : 64},
           {"n_groups", small ? 4 : 8},
           {"ssm_state_size", small ? 32 : 128},
           {"conv_kernel", 4},
           {"chunk_size", 128},
           {"tie_word_embeddings", false},
           {"use_bias", false},
           {"use_conv_bias", true},
           {"mlp_bias", false},
           {"torch_dtype", "bfloat16"}};
  ModelConfig config = ModelConfig::from_json(cfg, "synthetic config");
  mp::fs::create_directories(out);
  const std::string parent = out + "/parent";
  auto t0 = std::chrono::steady_clock::now();

  at::manual_seed(0);
  at::Tensor block = at::randn({32ll << 20}, at::kFloat).mul_(0.02).to(at::kBFloat16);  // 64 MiB
  auto produce = [&](const TensorSpec& spec) {
    int64_t n = 1;
    for (auto d : spec.shape) n *= d;
    at::Tensor t = at::empty({n}, at::kBFloat16);
    for (int64_t i = 0; i < n; i += block.numel()) {
      int64_t k = std::min<int64_t>(block.numel(), n - i);
      t.narrow(0, i, k).copy_(block.narrow(0, 0, k));
    }
    return t.view(spec.shape);
  };
  CheckpointWriteOptions options;
  options.dtype = DType::BF16;
  write_checkpoint(parent, config, expected_tensors(config), produce, options, /*overwrite=*/true);

  std::mt19937_64 rng(1);
  Scores scores;
  scores.fingerprint = shape_fingerprint(config);
  scores.pattern = config.pattern();
  scores.hidden = random_vector(rng, config.hidden_size);
  for (int64_t i = 0; i < config.num_layers(); ++i) {
    LayerScores l;
    l.index = i;
    l.type = config.layers[i];
    l.depth.by_criterion["lm_loss_increase"] = random_vector(rng, 1)[0];
    if (l.type == LayerType::Mlp) l.mlp_neurons = random_vector(rng, config.intermediate_size);
    if (l.type == LayerType::Attention) {
      l.attn_heads = random_vector(rng, config.num_attention_heads);
      l.attn_kv_groups = random_vector(rng, config.num_key_value_heads);
    }
    if (l.type == LayerType::Mamba) {
      l.mamba.heads = random_vector(rng, config.mamba_num_heads);
      l.mamba.head_dim = random_vector(rng, config.mamba_head_dim);
    }
    scores.layers.push_back(l);
  }
  write_scores(out + "/scores.json", scores);
  // A Minitron-like step: ~12% of hidden, ~25% of FFN, 1/4 of the Mamba heads, two layers.
  json target{{"hidden_size", config.hidden_size * 7 / 8},
              {"intermediate_size", config.intermediate_size * 3 / 4 / 64 * 64},
              {"mamba_num_heads", config.mamba_num_heads * 3 / 4},
              {"drop_count", 2}};
  write_json_file(out + "/target.json", target);

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  json report{{"parent", parent},
              {"bytes", Checkpoint::open(parent).total_bytes()},
              {"parameters", count_parameters(config)},
              {"pattern", config.pattern()},
              {"scores", out + "/scores.json"},
              {"target", out + "/target.json"},
              {"seconds", seconds}};
  std::printf("%s\n", report.dump().c_str());
  return 0;
}
