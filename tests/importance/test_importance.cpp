// Importance scores against an independent reference (transformers + hooks, tests/reference/
// importance_reference.py), and planted structure that each criterion must find.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <numeric>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"
#include "run_command.h"

using namespace mp;

namespace {

// Error relative to the largest reference value of the vector, and the same order wherever the reference
// separates two units by more than that tolerance.
void check_close_and_same_ranking(const std::vector<double>& got, const std::vector<double>& ref,
                                  const std::string& what, double tol = 1e-5) {
  INFO(what);
  REQUIRE(got.size() == ref.size());
  double scale = 0, err = 0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(got[i] - ref[i]));
  CHECK(err <= tol * std::max(scale, 1e-12));
  for (size_t i = 0; i < ref.size(); ++i)
    for (size_t j = 0; j < ref.size(); ++j)
      if (ref[i] > ref[j] + 2 * tol * scale) CHECK(got[i] > got[j]);
}

std::vector<double> to_vec(const json& j) { return j.get<std::vector<double>>(); }

Scores score_model(const NemotronH& model, const at::Tensor& ids, int64_t batch = 4) {
  ScoreOptions o;
  o.batch_size = batch;
  o.depth = true;
  return compute_scores(model, ids, o);
}

int64_t argmin(const std::vector<double>& v) { return std::min_element(v.begin(), v.end()) - v.begin(); }

}  // namespace

TEST_CASE("scores equal the transformers-hook reference", "[importance]") {
  for (std::string name : {"hybrid_g1", "hybrid_g2_tied"}) {
    std::string dir = test::reference_model(name);
    auto ck = Checkpoint::open(dir);
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    at::Tensor ids = SafetensorsFile::open(dir + "/importance_ids.safetensors")->tensor("ids").clone();
    json ref = read_json_file(dir + "/importance_reference.json");
    Scores s = score_model(model, ids);
    check_close_and_same_ranking(s.hidden, to_vec(ref["hidden"]), name + " hidden");
    for (auto& r : ref["layers"]) {
      const LayerScores& l = s.layers.at(r["index"].get<int64_t>());
      std::string where = name + " layer " + std::to_string(l.index);
      if (r.contains("mlp_neurons")) check_close_and_same_ranking(l.mlp_neurons, to_vec(r["mlp_neurons"]), where + " mlp");
      if (r.contains("attn_heads")) {
        check_close_and_same_ranking(l.attn_heads, to_vec(r["attn_heads"]), where + " attn heads");
        check_close_and_same_ranking(l.attn_heads_out, to_vec(r["attn_heads_out"]), where + " attn heads_out");
      }
      if (r.contains("mamba_heads")) {
        check_close_and_same_ranking(l.mamba.heads, to_vec(r["mamba_heads"]), where + " mamba heads");
        check_close_and_same_ranking(l.mamba.head_dim, to_vec(r["mamba_head_dim"]), where + " mamba head_dim");
        check_close_and_same_ranking(l.mamba.heads_out, to_vec(r["mamba_heads_out"]), where + " mamba heads_out");
        check_close_and_same_ranking(l.mamba.heads_flap, to_vec(r["mamba_heads_flap"]), where + " mamba FLAP");
      }
    }
    // Depth criteria are compared as vectors over layers.
    for (std::string crit : {"lm_loss_increase", "kl", "mse_hidden", "mse_logits", "block_influence"}) {
      std::vector<double> got, want;
      for (auto& r : ref["layers"]) {
        want.push_back(r[crit].get<double>());
        got.push_back(s.layers[r["index"].get<int64_t>()].depth.by_criterion.at(crit));
      }
      check_close_and_same_ranking(got, want, name + " depth " + crit, 1e-4);
    }
  }
}

TEST_CASE("Taylor scores equal the transformers autograd reference", "[importance]") {
  for (std::string name : {"hybrid_g1", "hybrid_g2_tied"}) {
    std::string dir = test::reference_model(name);
    auto model = NemotronH::load(Checkpoint::open(dir), at::kCPU, at::kFloat);
    at::Tensor ids = SafetensorsFile::open(dir + "/importance_ids.safetensors")->tensor("ids").clone();
    json ref = read_json_file(dir + "/importance_reference.json");
    ScoreOptions o;
    o.batch_size = 4;
    o.depth = false;
    o.taylor = true;
    Scores s = compute_scores(model, ids, o);
    int checked = 0;
    for (auto& r : ref["layers"]) {
      const LayerScores& l = s.layers.at(r["index"].get<int64_t>());
      const std::string where = name + " layer " + std::to_string(l.index) + " taylor ";
      for (std::string unit : {"mlp_neurons", "attn_heads", "mamba_heads"}) {
        if (!r.contains("taylor_" + unit)) continue;
        INFO(where << unit);
        REQUIRE(l.taylor.count(unit) == 1);
        // Gradients through the whole model in fp32, summed in another order: 1e-4 of the largest score.
        check_close_and_same_ranking(l.taylor.at(unit), to_vec(r["taylor_" + unit]), where + unit, 1e-4);
        ++checked;
      }
    }
    CHECK(static_cast<size_t>(checked) == s.layers.size());  // every layer has a Taylor score (no MoE layers in these models)
  }
}

TEST_CASE("Mamba heads are ranked within their group", "[importance]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g2_tied"));
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  at::Tensor ids = at::randint(0, ck.config().vocab_size, {4, 24}, at::kLong);
  ScoreOptions o;
  o.depth = false;
  Scores s = compute_scores(model, ids, o);
  const int64_t per_group = ck.config().mamba_num_heads / ck.config().n_groups;
  for (auto& l : s.layers) {
    if (l.type != LayerType::Mamba) continue;
    REQUIRE(l.mamba.head_rank_in_group.size() == size_t(ck.config().n_groups));
    for (int64_t g = 0; g < ck.config().n_groups; ++g) {
      auto& r = l.mamba.head_rank_in_group[g];
      REQUIRE(r.size() == size_t(per_group));
      for (size_t k = 0; k < r.size(); ++k) {
        CHECK(r[k] / per_group == g);  // only heads of this group
        if (k) CHECK(l.mamba.heads[r[k - 1]] >= l.mamba.heads[r[k]]);
      }
    }
  }
}

TEST_CASE("planted structure is found", "[importance]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g2_tied"));
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  const ModelConfig& c = ck.config();  // pattern M-*M-M
  auto& p = model.parameters();
  {
    c10::AutoGradMode no_grad(false);
    // A dead MLP neuron (layer 1): its up_proj row and bias are zero, so relu^2 gives 0.
    p.at("backbone.layers.1.mixer.up_proj.weight")[17].zero_();
    p.at("backbone.layers.1.mixer.up_proj.bias")[17].fill_(-1.0);
    // An attention head (layer 2) whose o_proj columns are zero.
    p.at("backbone.layers.2.mixer.o_proj.weight").narrow(1, 2 * c.head_dim, c.head_dim).zero_();
    // A Mamba head (layer 3, head 5 = group 1) whose out_proj columns are zero.
    p.at("backbone.layers.3.mixer.out_proj.weight").narrow(1, 5 * c.mamba_head_dim, c.mamba_head_dim).zero_();
    // Layer 5 (Mamba) made an identity: its output projection is zero.
    p.at("backbone.layers.5.mixer.out_proj.weight").zero_();
    p.at("backbone.layers.5.mixer.out_proj.bias").zero_();
  }
  at::Tensor ids = at::randint(0, c.vocab_size, {6, 32}, at::kLong);
  Scores s = score_model(model, ids);
  CHECK(argmin(s.layers[1].mlp_neurons) == 17);
  CHECK(s.layers[1].mlp_neurons[17] == 0.0);
  CHECK(argmin(s.layers[2].attn_heads_out) == 2);
  CHECK(argmin(s.layers[3].mamba.heads_out) == 5);
  CHECK(argmin(s.layers[3].mamba.heads_flap) == 5);
  // ... and last within its group (heads 4..7 share group 1's B and C).
  std::vector<double> group1(s.layers[3].mamba.heads_out.begin() + 4, s.layers[3].mamba.heads_out.begin() + 8);
  CHECK(argmin(group1) == 1);
  for (std::string crit : {"lm_loss_increase", "kl", "mse_hidden", "mse_logits"}) {
    INFO(crit);
    CHECK(std::abs(s.layers[5].depth.by_criterion.at(crit)) < 1e-9);
    // Every other layer changes the output (a random model may even do better without one: sign free).
    for (int64_t i = 0; i < 5; ++i) CHECK(std::abs(s.layers[i].depth.by_criterion.at(crit)) > 1e-6);
  }
}

TEST_CASE("streaming statistics do not depend on the batch split", "[importance]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  at::Tensor ids = at::randint(0, ck.config().vocab_size, {6, 20}, at::kLong);
  ScoreOptions o;
  o.depth = false;
  o.batch_size = 1;
  Scores one = compute_scores(model, ids, o);
  o.batch_size = 6;
  Scores all = compute_scores(model, ids, o);
  check_close_and_same_ranking(one.hidden, all.hidden, "hidden", 1e-6);
  check_close_and_same_ranking(one.layers[2].mlp_neurons, all.layers[2].mlp_neurons, "mlp", 1e-6);
}

TEST_CASE("reductions follow their definitions on a hand-made tensor", "[importance]") {
  // Two samples, two tokens, one channel: a = [[1, -3], [2, 2]].
  at::Tensor a = at::tensor({1.0, -3.0, 2.0, 2.0}).view({2, 2, 1});
  auto value = [&](Reduction r) {
    ChannelStatistic s(r, 1);
    s.add(a);
    return s.result().item<double>();
  };
  CHECK(value(Reduction::MeanL2) == Approx(std::sqrt(2.0 * 2.0 + 2.0 * 2.0)));  // means 2 and 2
  CHECK(value(Reduction::Mean) == Approx(2.0));
  CHECK(value(Reduction::L2) == Approx(std::sqrt(1 + 9 + 4 + 4.0)));
  CHECK(value(Reduction::Variance) == Approx((1 + 9 + 4 + 4) / 4.0 - 0.5 * 0.5));  // mean 0.5
}

TEST_CASE("scores.json round trip and a scores file from another model is refused", "[importance]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  at::Tensor ids = at::randint(0, ck.config().vocab_size, {2, 16}, at::kLong);
  ScoreOptions o;
  o.block_k = 2;
  o.iterative_steps = 2;
  Scores s = compute_scores(model, ids, o);
  std::string path = test::temp_dir("scores_rt") + "/scores.json";
  write_scores(path, s);
  Scores back = read_scores(path);
  CHECK(back.to_json() == s.to_json());
  CHECK(back.blocks.size() == size_t(ck.config().num_layers() - 1));
  CHECK(back.removal_order.size() == 2);
  CHECK_NOTHROW(back.check_matches(ck.config(), path));
  auto other = Checkpoint::open(test::reference_model("hybrid_g2_tied"));
  CHECK_THROWS_WITH(back.check_matches(other.config(), path), MP_CONTAINS("computed on another model"));
}
