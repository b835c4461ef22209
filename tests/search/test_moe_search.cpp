// The search over MoE parents (issue 25): expert count, expert FFN width and shared-expert width as axes; memory
// counts every expert, the active-parameter bounds the top-k ones; candidates become pruned checkpoints with
// exactly the predicted parameter count; ModelOpt's Nemotron 3 Nano 31.6B/A3.6B -> 22.3B/A3.0B student is a
// reachable candidate of configs/search/nemotron-3-nano-30b-to-22b.json.
//
// References: parameter counts derived by hand from the tensor shapes (comments give the sums), the tensors of
// the checkpoint `prune` writes (summed element counts), ModelOpt's published counts (22.28B / 3.00B,
// examples/megatron_bridge/tutorials/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 in NVIDIA/Model-Optimizer), and a
// brute-force enumeration of the space.
#include <cstdlib>
#include <set>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/pruning.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/search.h"
#include "../pruning/prune_test_util.h"
#include "run_command.h"

using namespace mp;
using namespace mp::search;

namespace {

// Parameters stored in a checkpoint: every tensor's elements (a tied lm_head, which transformers 5 writes anyway, is
// the embedding table and counts once).
int64_t stored_params(const std::string& dir) {
  auto ck = Checkpoint::open(dir);
  int64_t n = 0;
  for (const std::string& tensor : ck.tensor_names())
    if (!(ck.config().tie_word_embeddings && tensor == "lm_head.weight")) n += ck.info(tensor).numel();
  return n;
}

struct Quiet {
  Quiet() { setenv("MINIPUZZLE_PROGRESS", "off", 1); }
} quiet;

ModelConfig published(const std::string& name) {
  return load_config(test::source_dir() + "/configs/models/" + name + ".json");
}

// Every point of the space as its shape, by nested loops over the ranges (no pruning of runs, no heaps).
int64_t brute_force_count(const ModelConfig& parent, const SearchOptions& o, const HardwareProfile& hw) {
  int64_t n = 0;
  const Shape base = Shape::of(parent);
  for (int64_t e_drop : o.space.drop_moe.values())
    for (int64_t h : o.space.hidden.values())
      for (int64_t e : o.space.experts.values())
        for (int64_t f : o.space.expert_ffn.values())
          for (int64_t s : o.space.shared_ffn.values()) {
            Shape x = base;
            x.n_moe -= e_drop;
            x.hidden = h, x.experts = e, x.expert_ffn = f, x.shared_ffn = s;
            const ParamCounts p = count_params(x);
            const double memory = estimate_memory(x, o.setup).total();
            if (memory <= o.budget.usable_bytes() &&
                (o.space.max_active_params <= 0 || double(p.active()) <= o.space.max_active_params))
              ++n;
          }
  (void)hw;
  return n;
}

}  // namespace

TEST_CASE("MoE candidate: total and active parameters derived by hand", "[search][moe]") {
  // ModelOpt's chosen Nemotron 3 Nano student: hidden 2304, 104 experts of 1856, shared expert 3072, Mamba 64 x 64,
  // 32 attention heads, all 52 layers.
  ModelConfig parent = published("nemotron-3-nano-30b-a3b");
  Shape s = Shape::of(parent);
  s.hidden = 2304, s.experts = 104, s.shared_ffn = 3072;
  // By hand (H = 2304, V = 131072, d_inner = 64 x 64 = 4096, conv channels 4096 + 2 x 8 x 128 = 6144):
  //   embeddings + lm_head          2 x 131072 x 2304                                   =    603,979,776
  //   norms                         2304 (final) + 52 x 2304                             =        122,112
  //   Mamba layer  in_proj 2304 x (2 x 4096 + 2048 + 64) = 23,740,416; conv 6144 x 4 + 6144 = 30,720;
  //                A_log, D, dt_bias 192; gated norm 4096; out_proj 4096 x 2304 = 9,437,184   = 33,212,608
  //   attention    2 x 32 x 128 x 2304 + 2 x 2 x 128 x 2304                             =     20,054,016
  //   MoE fixed    router 104 x 2304 + 104 = 239,720; shared 2 x 3072 x 2304 = 14,155,776  =     14,395,496
  //   one expert   2 x 1856 x 2304                                                       =      8,552,448
  //   total  = 603,979,776 + 122,112 + 23 x 33,212,608 + 6 x 20,054,016 + 23 x 14,395,496 + 23 x 104 x 8,552,448
  //          = 22,276,867,992
  //   active = the same with 6 experts per MoE layer instead of 104                    =  2,999,650,200
  const ParamCounts p = count_params(s);
  CHECK(mamba_layer_params(s) == 33212608);
  CHECK(attention_layer_params(s) == 20054016);
  CHECK(moe_expert_params(s) == 8552448);
  CHECK(moe_layer_params(s) - 104 * moe_expert_params(s) == 14395496);
  CHECK(p.total() == 22276867992LL);
  CHECK(p.active() == 2999650200LL);
  // ModelOpt's log: "params 22.28B", "active_params 3.00B".
  CHECK(std::abs(double(p.total()) / 1e9 - 22.28) < 0.005);
  CHECK(std::abs(double(p.active()) / 1e9 - 3.00) < 0.005);
  // bf16 weights 2 bytes per parameter: 42,489.7 MB (MiB) in ModelOpt's memory line.
  CHECK(2.0 * double(p.total()) / (1024.0 * 1024.0) == Approx(42489.7).margin(0.05));

  // Prefill activations of a 2048-token chunk (bf16): the residual stream and normed input 2048 x 2688 x (4 + 2),
  // plus the largest layer, here the MoE layer's 6 routed slots per token, 2048 x 6 x (2 x 2688 + 2 x 1856) x 2
  // bytes, and the fp32 sum of the routed outputs 2048 x 2688 x 4 (a Mamba layer needs 134.2 MB, this 245.4 MB).
  InferenceSetup chunk;
  chunk.context = 2048;
  chunk.prefill_chunk = 2048;
  const double T = 2048, H = 2688;
  CHECK(prefill_activation_bytes(Shape::of(parent), 2048, 1, search::DType::BF16) ==
        T * H * 6 + T * 6 * (2 * H + 2 * 1856) * 2 + T * H * 4);
  CHECK(estimate_memory(parent, chunk).activations == T * H * 6 + T * 6 * (2 * H + 2 * 1856) * 2 + T * H * 4);

  // The tiny grouped hybrid (moe_grouped_latent: 4 groups of 3 experts, top-3, latent 24, biases) kept at 8
  // experts of 8 channels, shared 12: per MoE layer router 8 x 40 + 8 = 328; shared 2 x 40 x 12 + 12 + 40 = 1,012;
  // latent projections 2 x 40 x 24 + 24 + 40 = 1,984; one expert 2 x 24 x 8 = 384.
  ModelConfig tiny = load_config(test::reference_model("moe_grouped_latent"));
  Shape t = Shape::of(tiny);
  t.experts = 8, t.expert_ffn = 8, t.shared_ffn = 12;
  CHECK(moe_expert_params(t) == 384);
  CHECK(moe_layer_params(t) == 328 + 1012 + 1984 + 8 * 384);
  CHECK(moe_layer_active_params(t) == 328 + 1012 + 1984 + 3 * 384);
  CHECK(count_params(t).total() - count_params(t).active() == 2 * (8 - 3) * 384);  // two MoE layers
}

TEST_CASE("MoE default space: expert counts keep every routing group valid", "[search][moe]") {
  ModelConfig tiny = load_config(test::reference_model("moe_grouped_latent"));  // 12 experts, n_group 4, top-3
  SearchSpace s = default_space(tiny);
  // Steps of 8 rounded to a multiple of 4 groups: 12 and 8 (4 would leave 1 per group, and top-3 > 2 groups x 1).
  CHECK(s.experts.values() == std::vector<int64_t>{8, 12});
  for (int64_t e : s.experts.values()) CHECK(expert_count_problem(tiny, e).empty());
  CHECK_FALSE(expert_count_problem(tiny, 10).empty());  // not a multiple of n_group
  CHECK_FALSE(expert_count_problem(tiny, 4).empty());   // 1 per group
  CHECK(s.drop_moe.max == 1);                           // 2 MoE layers: at least one stays
  // No MLP layers in the Nano: the FFN axis is one point; experts 128 -> 80 in steps of 8, widths by 256.
  SearchSpace nano = default_space(published("nemotron-3-nano-30b-a3b"));
  CHECK(nano.ffn.values().size() == 1);
  CHECK(nano.experts.min == 80);
  CHECK(nano.experts.step == 8);
  CHECK(nano.experts.contains(104));
}

TEST_CASE("MoE search: enumeration, active-parameter bound and report columns", "[search][moe]") {
  ModelConfig parent = load_config(test::reference_model("moe_grouped_latent"));
  HardwareProfile hw = load_hardware("a10g");
  SearchOptions o;
  o.setup.context = 4096;
  o.budget = make_budget(hw, {}, std::nullopt);
  o.space = default_space(parent);
  o.space.drop_mamba = {0, 0, 1};
  o.space.drop_attention = {0, 0, 1};
  o.space.drop_mlp = {0, 0, 1};
  o.space.drop_moe = {0, 1, 1};
  o.space.drop_total = {0, 1, 1};
  o.space.hidden = {32, 40, 8};
  o.space.mamba_heads = {4, 4, 1};
  o.space.mamba_head_dim = {10, 10, 1};
  o.space.attention_heads = {4, 4, 1};
  o.space.experts = {8, 12, 4};
  o.space.expert_ffn = {8, 12, 4};
  o.space.shared_ffn = {12, 20, 8};
  const double parent_active = double(count_params(Shape::of(parent)).active());
  o.space.max_active_params = parent_active - 1;  // the parent itself is over it
  o.keep_feasible = 1000;
  SearchResult r = run_search(parent, hw, o);
  CHECK(r.enumerated == 2 * 2 * 2 * 2 * 2);
  CHECK(r.feasible == brute_force_count(parent, o, hw));
  CHECK(r.feasible < r.enumerated);
  CHECK_FALSE(r.parent.feasible);
  REQUIRE(!r.parent.reasons.empty());
  CHECK(r.parent.reasons.front().rfind("active parameters", 0) == 0);
  std::set<std::string> ids;
  for (auto& c : r.candidates) {
    if (!c.feasible) continue;
    ids.insert(c.id);
    CHECK(double(c.params.active()) <= o.space.max_active_params);
    CHECK(c.params.total() > c.params.active());  // every expert in memory, top-3 active
    CHECK(c.memory.weights == 2.0 * double(c.params.total()));
    ModelConfig cfg = candidate_config(parent, c);
    CHECK(cfg.n_routed_experts == c.shape.experts);
    CHECK(cfg.moe_intermediate_size == c.shape.expert_ffn);
    CHECK(cfg.moe_shared_expert_intermediate_size == c.shape.shared_ffn);
    CHECK(count_parameters(cfg) == c.params.total());  // the tensor list of that config
  }
  CHECK(static_cast<int64_t>(ids.size()) == r.feasible);  // ids tell MoE shapes apart
  // The report shows total and active parameters and the expert axes.
  const std::string dir = test::binary_dir() + "/test-tmp/moe_search_report";
  write_search_report(dir, parent, hw, o, r);
  const std::string md = fs::read_file(dir + "/report.md");
  CHECK(md.find("total / active") != std::string::npos);
  CHECK(md.find("experts x FFN") != std::string::npos);
  CHECK(md.find("B active: 3 of 12 experts per token") != std::string::npos);
  json j = read_json_file(dir + "/report.json");
  CHECK(j.at("parent").at("params").at("active").get<int64_t>() == static_cast<int64_t>(parent_active));
  CHECK(j.at("space").at("experts").at("min").get<int64_t>() == 8);
}

TEST_CASE("MoE search: a pruned candidate has exactly the predicted parameter count", "[search][moe][prune]") {
  for (const std::string name : {"moe_g1", "moe_grouped_latent"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& parent = ck.config();
    HardwareProfile hw = load_hardware("a10g");
    SearchOptions o;
    o.setup.context = 4096;
    o.budget = make_budget(hw, {}, std::nullopt);
    o.space = default_space(parent);
    o.space.drop_mamba = {0, 0, 1};
    o.space.drop_attention = {0, 0, 1};
    o.space.drop_mlp = {0, 0, 1};
    o.space.drop_moe = {0, 1, 1};
    o.space.drop_total = {0, 1, 1};
    o.space.hidden = {parent.hidden_size - 8, parent.hidden_size, 8};
    o.space.mamba_heads = {parent.mamba_num_heads, parent.mamba_num_heads, 1};
    o.space.mamba_head_dim = {parent.mamba_head_dim, parent.mamba_head_dim, 1};
    o.space.attention_heads = {parent.num_attention_heads, parent.num_attention_heads, 1};
    o.space.ffn = {parent.intermediate_size - 8, parent.intermediate_size, 8};
    const int64_t G = parent.n_group;
    o.space.experts = {parent.n_routed_experts - G * (G == 1 ? 4 : 1), parent.n_routed_experts, G * (G == 1 ? 4 : 1)};
    o.space.expert_ffn = {parent.moe_intermediate_size / 2, parent.moe_intermediate_size, parent.moe_intermediate_size / 2};
    o.space.shared_ffn = {parent.moe_shared_expert_intermediate_size - 8, parent.moe_shared_expert_intermediate_size, 8};
    o.keep_feasible = 1000;
    SearchResult r = run_search(parent, hw, o);
    // The smallest candidate (every axis at its minimum, one MoE layer dropped) and the stage-1 best.
    const Candidate* smallest = nullptr;
    const Candidate* best = nullptr;
    for (auto& c : r.candidates) {
      if (!c.feasible) continue;
      if (c.rank == 1) best = &c;
      if (!smallest || c.params.total() < smallest->params.total()) smallest = &c;
    }
    REQUIRE(smallest);
    REQUIRE(best);
    CHECK(smallest->shape.n_moe == Shape::of(parent).n_moe - 1);
    CHECK(smallest->shape.experts < parent.n_routed_experts);
    Scores scores = test::make_random_scores(parent, 5);
    // The CLI: `prune --experts --expert-ffn --shared-ffn` (with the candidate's other widths and dropped layers)
    // for the smallest candidate, `prune --target REPORT.json#id` for the best.
    {
      const std::string dir = test::temp_dir("moe_search_cli_" + name);
      write_scores(dir + "/scores.json", scores);
      write_search_report(dir + "/report", parent, hw, o, r);
      std::string drops;
      for (int64_t i : smallest->dropped_layers) drops += (drops.empty() ? "" : ",") + std::to_string(i);
      const std::string base = test::minipuzzle_binary() + " prune " + test::reference_model(name) + " --scores " + dir +
                               "/scores.json --overwrite ";
      auto flags = test::run_command(
          base + "--experts " + std::to_string(smallest->shape.experts) + " --expert-ffn " +
          std::to_string(smallest->shape.expert_ffn) + " --shared-ffn " + std::to_string(smallest->shape.shared_ffn) +
          " --hidden " + std::to_string(smallest->shape.hidden) + " --ffn " + std::to_string(smallest->shape.ffn) +
          (drops.empty() ? "" : " --drop-layers " + drops) + " -o " + dir + "/flags 2>&1");
      INFO(flags.output);
      REQUIRE(flags.exit_code == 0);
      CHECK(stored_params(dir + "/flags") == smallest->params.total());
      auto target = test::run_command(base + "--target " + dir + "/report/report.json#" + best->id + " -o " + dir +
                                      "/target 2>&1");
      INFO(target.output);
      REQUIRE(target.exit_code == 0);
      CHECK(stored_params(dir + "/target") == best->params.total());
    }
    for (const Candidate* c : {smallest, best}) {
      INFO(name << " candidate " << c->id);
      ModelConfig student = candidate_config(parent, *c);
      PrunePlan plan = make_plan(parent, target_from_config(student, c->dropped_layers), &scores);
      const std::string out = test::binary_dir() + "/test-tmp/moe_search_pruned_" + name + "_" + std::to_string(c->rank);
      PruneOptions po;
      po.overwrite = true;
      prune_checkpoint(ck, plan, out, po);
      auto pruned = Checkpoint::open(out);
      const int64_t stored = stored_params(out);
      CHECK(stored == c->params.total());
      CHECK(pruned.config().n_routed_experts == c->shape.experts);
      CHECK(pruned.config().moe_intermediate_size == c->shape.expert_ffn);
      CHECK(pruned.config().moe_shared_expert_intermediate_size == c->shape.shared_ffn);
      CHECK(pruned.config().pattern() == c->pattern);
      // Active: the total less the routed experts a token does not use, from the pruned config alone.
      const ModelConfig& pc = pruned.config();
      const int64_t expert = 2 * (pc.moe_latent_size > 0 ? pc.moe_latent_size : pc.hidden_size) * pc.moe_intermediate_size;
      CHECK(stored - pc.count(LayerType::Moe) * (pc.n_routed_experts - pc.num_experts_per_tok) * expert ==
            c->params.active());
    }
  }
}

TEST_CASE("configs/search: Nemotron 3 Nano 30B-A3B -> ModelOpt's 22.3B/A3.0B is a reachable candidate",
          "[search][moe][nano3]") {
  PreparedSearch p = prepare_search(SearchRequest::load("nemotron-3-nano-30b-to-22b"));
  SearchResult r = run_search(p.parent, p.hardware, p.options);
  CHECK(r.parent.params.total() == 31577940288LL);
  CHECK(r.feasible > 0);
  REQUIRE(r.references.size() == 1);
  const ReferenceResult& ref = r.references[0];
  INFO(ref.note);
  CHECK(ref.reachable);
  REQUIRE(ref.candidate);
  CHECK(ref.candidate->feasible);
  CHECK(ref.candidate->params.total() == 22276867992LL);
  CHECK(ref.candidate->params.active() == 2999650200LL);
  // Where it ranks in stage 1 under the config's fill proxy (ModelOpt's order before scoring its top 10): 16 of
  // 2993 when written; among the first 1% of the feasible candidates.
  CHECK(ref.candidate->rank > 0);
  CHECK(ref.candidate->rank <= r.feasible / 100);
  WARN("ModelOpt's 22.3B/A3.0B student: stage-1 rank " << ref.candidate->rank << " of " << r.feasible
                                                        << " feasible (" << r.enumerated << " enumerated)");
  // The chosen candidate is a pruned form of the parent with the expert axes applied.
  for (auto& c : r.candidates)
    if (c.rank == 1) {
      WARN("stage-1 best: " << c.id << " " << double(c.params.total()) / 1e9 << "B / A" << double(c.params.active()) / 1e9);
      CHECK(double(c.params.active()) <= 3.0e9);
    }
}
