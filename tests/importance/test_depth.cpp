// Depth criteria (issue 19): the chunked, prefix-reusing implementation against the one it replaced (kept as
// importance::score_depth_reference: one full forward per skip pattern, full-vocabulary float32 logits), and the
// memory the scoring holds, counted by a CPU allocator.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include "bench/cpu_memory.h"
#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/layer_stream.h"
#include "minipuzzle/model.h"
#include "pruning/depth.h"

using namespace mp;

namespace {

// |got - want| within `tol` of the largest |want| of the vector (fp32 sums taken in another order).
void check_close(const std::vector<double>& got, const std::vector<double>& want, const std::string& what,
                 double tol = 1e-5) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  double scale = 1e-12;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("entry " << i << ": " << got[i] << " vs " << want[i]);
    CHECK(std::abs(got[i] - want[i]) <= tol * scale);
  }
}

const std::vector<std::string> kCriteria{"lm_loss_increase", "kl", "mse_hidden", "mse_logits", "block_influence"};

void check_same_depth_scores(const Scores& got, const Scores& want, const std::string& name) {
  for (const std::string& crit : kCriteria) {
    std::vector<double> g, w;
    for (size_t i = 0; i < want.layers.size(); ++i) {
      g.push_back(got.layers[i].depth.by_criterion.at(crit));
      w.push_back(want.layers[i].depth.by_criterion.at(crit));
    }
    check_close(g, w, name + " layer " + crit);
  }
  REQUIRE(got.blocks.size() == want.blocks.size());
  for (std::string crit : {"lm_loss_increase", "kl", "mse_hidden", "mse_logits"}) {
    std::vector<double> g, w;
    for (size_t b = 0; b < want.blocks.size(); ++b) {
      CHECK(got.blocks[b].start == want.blocks[b].start);
      g.push_back(got.blocks[b].by_criterion.at(crit));
      w.push_back(want.blocks[b].by_criterion.at(crit));
    }
    check_close(g, w, name + " block " + crit);
  }
  CHECK(got.removal_order == want.removal_order);
  check_close(got.removal_scores, want.removal_scores, name + " iterative removal");
}

Scores empty_scores(const NemotronH& model) {
  Scores s;
  for (int64_t i = 0; i < model.config().num_layers(); ++i) {
    LayerScores l;
    l.index = i;
    l.type = model.config().layers[i];
    s.layers.push_back(l);
  }
  return s;
}

}  // namespace

TEST_CASE("depth criteria equal the full-pass implementation they replace", "[importance][depth]") {
  c10::AutoGradMode no_grad(false);
  for (std::string name : {"hybrid_g1", "hybrid_g2_tied"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    at::Tensor ids = at::randint(0, ck.config().vocab_size, {5, 24}, at::kLong);
    ScoreOptions o;
    o.width = false;
    o.batch_size = 2;  // batches of 2, 2 and 1
    o.block_k = 2;
    o.iterative_steps = 2;
    o.iterative_criterion = "kl";
    // 7 tokens per chunk: chunks that straddle sequences and a short last chunk.
    o.logits_chunk_bytes = 7 * ck.config().vocab_size * int64_t(sizeof(float));
    Scores got = compute_scores(model, ids, o);
    Scores want = empty_scores(model);
    importance::score_depth_reference(model, ids, o, want);
    check_same_depth_scores(got, want, name);
  }
}

namespace {
// A small hybrid with a large vocabulary, so that one [tokens, vocab] float32 tensor outweighs everything else.
NemotronH wide_vocab_model() {
  json j = {{"hybrid_override_pattern", "M-*-"}, {"vocab_size", 16384}, {"hidden_size", 32},
            {"intermediate_size", 64}, {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"head_dim", 16},
            {"mamba_num_heads", 4}, {"mamba_head_dim", 16}, {"n_groups", 1}, {"ssm_state_size", 16},
            {"conv_kernel", 4}, {"chunk_size", 16}, {"layer_norm_epsilon", 1e-5}};
  return NemotronH::random_init(ModelConfig::from_json(j, "wide-vocabulary test model"), 3, at::kCPU, at::kFloat);
}
}  // namespace

TEST_CASE("scoring holds no [tokens, vocab] float32 logits", "[importance][depth][memory]") {
  NemotronH model = wide_vocab_model();
  at::Tensor ids = at::randint(0, model.config().vocab_size, {4, 128}, at::kLong);
  const int64_t logits_bytes = ids.numel() * model.config().vocab_size * int64_t(sizeof(float));  // 32 MiB
  ScoreOptions o;
  o.batch_size = 4;
  o.logits_chunk_bytes = 256 << 10;  // 4 tokens of logits per chunk
  auto peak_extra = [&](auto&& run) {
    bench::CountingCpuAllocator counter;
    const int64_t before = counter.live_bytes();
    run();
    return counter.peak_bytes() - before;
  };
  SECTION("depth criteria") {
    c10::AutoGradMode no_grad(false);
    o.width = false;
    o.block_k = 2;
    const int64_t chunked = peak_extra([&] { compute_scores(model, ids, o); });
    const int64_t full = peak_extra([&] {
      Scores s = empty_scores(model);
      importance::score_depth_reference(model, ids, o, s);
    });
    INFO("peak extra bytes: chunked " << chunked << ", full-vocabulary reference " << full << ", one logits tensor "
                                      << logits_bytes);
    CHECK(full > 2 * logits_bytes);  // the measure sees what it is meant to see
    CHECK(chunked < logits_bytes / 4);
  }
  SECTION("Taylor scores") {
    o.depth = false;
    o.taylor = true;
    const int64_t chunked = peak_extra([&] { compute_scores(model, ids, o); });
    INFO("peak extra bytes with Taylor: " << chunked << ", one logits tensor " << logits_bytes);
    CHECK(chunked < logits_bytes / 2);
  }
}

// Layer streaming (issue 19): the streamed path runs on the CPU too, where "copying to the device" makes fresh
// tensors, so the budget, the two slots and the prefetch order are exercised without a GPU.
namespace {
void check_same_scores(const Scores& got, const Scores& want, const std::string& what) {
  INFO(what);
  check_close(got.hidden, want.hidden, what + " hidden", 1e-6);
  for (size_t i = 0; i < want.layers.size(); ++i) {
    const LayerScores& g = got.layers[i];
    const LayerScores& w = want.layers[i];
    const std::string where = what + " layer " + std::to_string(i);
    check_close(g.mlp_neurons, w.mlp_neurons, where + " mlp", 1e-6);
    check_close(g.attn_heads, w.attn_heads, where + " attn", 1e-6);
    check_close(g.attn_heads_out, w.attn_heads_out, where + " attn out", 1e-6);
    check_close(g.mamba.heads, w.mamba.heads, where + " mamba", 1e-6);
    check_close(g.mamba.heads_out, w.mamba.heads_out, where + " mamba out", 1e-6);
    check_close(g.mamba.heads_flap, w.mamba.heads_flap, where + " mamba FLAP", 1e-6);
    for (auto& [crit, v] : w.depth.by_criterion) check_close({g.depth.by_criterion.at(crit)}, {v}, where + " " + crit, 1e-6);
  }
  REQUIRE(got.blocks.size() == want.blocks.size());
  for (size_t b = 0; b < want.blocks.size(); ++b)
    for (auto& [crit, v] : want.blocks[b].by_criterion)
      check_close({got.blocks[b].by_criterion.at(crit)}, {v}, what + " block " + crit, 1e-6);
  CHECK(got.removal_order == want.removal_order);
  check_close(got.removal_scores, want.removal_scores, what + " removal", 1e-6);
}
}  // namespace

TEST_CASE("streamed layers give the resident path's scores", "[importance][stream]") {
  c10::AutoGradMode no_grad(false);
  for (std::string name : {"hybrid_g1", "hybrid_g2_tied"}) {
    auto ck = Checkpoint::open(test::reference_model(name));
    const ModelConfig& c = ck.config();
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    at::Tensor ids = at::randint(0, c.vocab_size, {5, 24}, at::kLong);
    ScoreOptions o;
    o.batch_size = 2;
    o.block_k = 2;
    o.iterative_steps = 2;
    o.nested_head_dim = c.mamba_head_dim / 2;
    Scores want = compute_scores(model, ids, o);
    int64_t widest = 0, last = LayerStreamer::layer_bytes(c, c.num_layers() - 1, at::kFloat);
    for (int64_t i = 0; i < c.num_layers(); ++i) widest = std::max(widest, LayerStreamer::layer_bytes(c, i, at::kFloat));
    const int64_t fixed = LayerStreamer::non_layer_bytes(c, at::kFloat) + 2 * widest;
    // No layer resident (every use is a copy), then the last layer resident as well.
    for (int64_t budget : {fixed, fixed + last}) {
      auto streamer = LayerStreamer::from_model(model, at::kCPU, at::kFloat, budget);
      CHECK(streamer->stats().resident_layers == (budget == fixed ? 0 : 1));
      Scores got = compute_scores(*streamer, ids, o);
      check_same_scores(got, want, name + (budget == fixed ? " all streamed" : " last layer resident"));
      const auto& st = streamer->stats();
      // Width: each layer copied once for all 3 batches; depth: the sweeps run layer j once per earlier layer.
      CHECK(st.loads >= c.num_layers());
      CHECK(st.prefetch_hits > st.loads / 2);  // most copies were started one layer ahead
    }
  }
}

TEST_CASE("layer streaming refuses a budget below two layers and the non-layer tensors", "[importance][stream]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  const int64_t need = LayerStreamer::non_layer_bytes(ck.config(), at::kFloat);
  CHECK_THROWS_WITH(LayerStreamer::open(ck, at::kCPU, at::kFloat, need), MP_CONTAINS("two layers in flight"));
  auto ok = LayerStreamer::open(ck, at::kCPU, at::kFloat, int64_t(1) << 30);  // everything fits: all resident
  CHECK(ok->stats().resident_layers == ck.config().num_layers());
}

