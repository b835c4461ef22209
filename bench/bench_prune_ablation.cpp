// Ablation: group-aware Mamba head pruning vs a naive global top-k that ignores SSM groups, at the same size.
//
// A small hybrid model (byte vocabulary, 4 SSM groups of 4 heads per Mamba layer) is trained briefly on
// tinyshakespeare with the model's autograd and a plain AdamW loop, scored with `compute_scores` (Mamba heads from
// the x activations, NVIDIA's criterion), then pruned from 16 to 8 heads per Mamba layer three ways:
//  - group_aware: the pruner's plan, 2 best heads of every group (B and C stay with their heads);
//  - naive_global_topk: the 8 best heads of the layer regardless of group, sliced the same way (z, x, dt,
//    conv, A_log, D, dt_bias, norm, out_proj). The checkpoint has the same shape and loads, but with unequal
//    counts per group the kept heads are re-packed 2 per group by position, so some now read another group's B
//    and C (and are normalised with another group's heads): what a pruner that ignores groups silently produces;
//  - group_aware_random: 2 random heads per group (is the ranking worth anything).
// Held-out LM loss (nats/byte, last 10% of the text) is printed as JSON for the parent and each variant.
//
// usage: bench_prune_ablation [--steps N] [--data tinyshakespeare.txt] [--save DIR] [--seed S]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"

using namespace mp;

namespace {

ModelConfig ablation_config() {
  json j{{"hybrid_override_pattern", "M-M*M-M-"},
         {"vocab_size", 256},
         {"hidden_size", 96},
         {"intermediate_size", 192},
         {"num_attention_heads", 4},
         {"num_key_value_heads", 2},
         {"head_dim", 24},
         {"mamba_num_heads", 16},
         {"mamba_head_dim", 8},
         {"n_groups", 4},
         {"ssm_state_size", 16},
         {"conv_kernel", 4},
         {"chunk_size", 32},
         {"tie_word_embeddings", false},
         {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}};
  return ModelConfig::from_json(j, "ablation config");
}

at::Tensor read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  at::Tensor t = at::empty({static_cast<int64_t>(s.size())}, at::kByte);
  std::memcpy(t.data_ptr(), s.data(), s.size());
  return t.to(at::kLong);
}

at::Tensor sample_windows(const at::Tensor& data, int64_t n, int64_t len, at::Generator& gen) {
  at::Tensor starts = at::randint(0, data.size(0) - len - 1, {n}, gen, at::kLong);
  at::Tensor offsets = at::arange(len + 1, at::kLong);
  return data.index({starts.unsqueeze(1) + offsets.unsqueeze(0)});  // [n, len+1]
}

double lm_loss(const NemotronH& model, const at::Tensor& windows) {
  c10::AutoGradMode no_grad(false);
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < windows.size(0); i += 16) {
    at::Tensor w = windows.narrow(0, i, std::min<int64_t>(16, windows.size(0) - i));
    at::Tensor logits = model.forward(w.narrow(1, 0, w.size(1) - 1));
    at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), w.narrow(1, 1, w.size(1) - 1).reshape(-1),
                                             {}, at::Reduction::Sum);
    total += loss.item<double>();
    count += logits.size(0) * logits.size(1);
  }
  return total / count;
}

// Plain AdamW (decoupled weight decay), enough to get a model whose heads differ in importance.
struct AdamW {
  std::vector<at::Tensor> params, m, v;
  double lr, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.01;
  int64_t t = 0;
  AdamW(std::vector<at::Tensor> p, double lr_) : params(std::move(p)), lr(lr_) {
    for (auto& x : params) {
      m.push_back(at::zeros_like(x));
      v.push_back(at::zeros_like(x));
    }
  }
  void step(double lr_now) {
    c10::AutoGradMode no_grad(false);
    ++t;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor g = params[i].grad();
      if (!g.defined()) continue;
      m[i].mul_(b1).add_(g, 1 - b1);
      v[i].mul_(b2).addcmul_(g, g, 1 - b2);
      if (params[i].dim() >= 2) params[i].mul_(1 - lr_now * wd);
      params[i].addcdiv_(m[i] / c1, (v[i] / c2).sqrt_().add_(eps), -lr_now);
      params[i].mutable_grad().zero_();
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 200;
  uint64_t seed = 0;
  const char* shared = std::getenv("MINIPUZZLE_SHARED_DATA");
  std::string data_path = std::string(shared ? shared : "/work/shared/data") + "/tinyshakespeare.txt";
  std::string save_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--steps") steps = std::stoll(argv[i + 1]);
    else if (a == "--data") data_path = argv[i + 1];
    else if (a == "--save") save_dir = argv[i + 1];
    else if (a == "--seed") seed = std::stoull(argv[i + 1]);
  }
  at::set_num_threads(2);
  at::manual_seed(static_cast<int64_t>(seed));
  at::Tensor data = read_bytes(data_path);
  const int64_t split = data.size(0) * 9 / 10;
  at::Tensor train = data.narrow(0, 0, split), held_out = data.narrow(0, split, data.size(0) - split);
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);

  // 1. Train.
  const ModelConfig config = ablation_config();
  NemotronH model = NemotronH::random_init(config, seed, at::kCPU, at::kFloat);
  model.set_requires_grad(true);
  std::vector<at::Tensor> params;
  for (auto& [_, p] : model.parameters()) params.push_back(p);
  AdamW opt(params, 3e-3);
  auto t0 = std::chrono::steady_clock::now();
  double last_loss = 0;
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor w = sample_windows(train, 16, 64, gen);
    at::Tensor logits = model.forward(w.narrow(1, 0, 64));
    at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, 256}), w.narrow(1, 1, 64).reshape(-1));
    loss.backward();
    const double warm = std::min(1.0, (s + 1) / 30.0), decay = 0.5 * (1 + std::cos(M_PI * s / steps));
    opt.step(3e-3 * warm * (0.1 + 0.9 * decay));
    last_loss = loss.item<double>();
    if (s % 25 == 0) std::fprintf(stderr, "step %lld loss %.3f\n", static_cast<long long>(s), last_loss);
  }
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  model.set_requires_grad(false);
  if (!save_dir.empty()) model.save(save_dir, DType::F32, {}, /*overwrite=*/true);

  // 2. Score (Mamba heads from x, ranked within groups by the pruner) on training text.
  at::Generator calib_gen = at::detail::createCPUGenerator(seed + 2);
  at::Tensor calib = sample_windows(train, 32, 128, calib_gen).narrow(1, 0, 128);
  ScoreOptions so;
  so.samples = 32;
  so.seq_len = 128;
  so.depth = false;
  Scores scores = compute_scores(model, calib, so);

  // 3. Prune 16 -> 8 heads per Mamba layer, three ways, same shape.
  PruneTarget target;
  target.mamba_num_heads = 8;
  target.origin = "ablation";
  PrunePlan aware = make_plan(config, target, &scores);
  PrunePlan naive = aware, random_plan = aware;
  const int64_t per_group = config.mamba_num_heads / config.n_groups;
  int64_t moved = 0, total_kept = 0;
  json per_layer = json::array();
  std::mt19937_64 rng(seed + 3);
  for (size_t i = 0; i < aware.layers.size(); ++i) {
    if (aware.layers[i].type != LayerType::Mamba) continue;
    const auto& s = scores.layers[aware.layers[i].source].mamba.heads;
    std::vector<int64_t> order(s.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    std::vector<int64_t> top(order.begin(), order.begin() + 8);
    std::sort(top.begin(), top.end());
    naive.layers[i].mamba_heads = top;
    std::vector<int64_t> per_group_count(config.n_groups, 0);
    for (size_t k = 0; k < top.size(); ++k) {
      per_group_count[top[k] / per_group]++;
      const int64_t new_group = static_cast<int64_t>(k) / (8 / config.n_groups);
      moved += (top[k] / per_group != new_group);
      ++total_kept;
    }
    std::vector<int64_t> rnd;
    for (int64_t g = 0; g < config.n_groups; ++g) {
      std::vector<int64_t> members(per_group);
      std::iota(members.begin(), members.end(), g * per_group);
      std::shuffle(members.begin(), members.end(), rng);
      members.resize(2);
      std::sort(members.begin(), members.end());
      rnd.insert(rnd.end(), members.begin(), members.end());
    }
    random_plan.layers[i].mamba_heads = rnd;
    per_layer.push_back({{"layer", aware.layers[i].source},
                         {"group_aware_heads", aware.layers[i].mamba_heads},
                         {"naive_heads", top},
                         {"naive_kept_per_group", per_group_count}});
  }

  at::Generator eval_gen = at::detail::createCPUGenerator(seed + 4);
  at::Tensor eval = sample_windows(held_out, 64, 128, eval_gen);
  json loss{{"parent", lm_loss(model, eval)},
            {"group_aware", lm_loss(prune_in_memory(model, aware), eval)},
            {"naive_global_topk", lm_loss(prune_in_memory(model, naive), eval)},
            {"group_aware_random", lm_loss(prune_in_memory(model, random_plan), eval)}};
  json out{{"bench", "prune_ablation"},
           {"model", {{"pattern", config.pattern()}, {"hidden", config.hidden_size}, {"mamba_heads", 16},
                      {"n_groups", 4}, {"parameters", count_parameters(config)}}},
           {"pruned", {{"mamba_heads", 8}, {"parameters", count_parameters(aware.target)}}},
           {"train", {{"steps", steps}, {"batch", 16}, {"seq_len", 64}, {"seconds", train_seconds},
                      {"final_batch_loss", last_loss}}},
           {"eval", {{"windows", 64}, {"seq_len", 128}, {"text", "last 10% of tinyshakespeare"}}},
           {"lm_loss_nats_per_byte", loss},
           {"naive_heads_reading_another_groups_BC", moved},
           {"naive_heads_kept", total_kept},
           {"layers", per_layer}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
