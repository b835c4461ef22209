// MoE importance against an independent reference (transformers' own router and experts, explicit per-token loops:
// tests/reference/moe_importance_reference.py): per-expert router-weighted output norms, routing frequency,
// removal loss, expert channels and shared-expert channels; and pruning picks the lowest-scored experts.
#include <ATen/ATen.h>

#include <algorithm>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"
#include "minipuzzle/safetensors.h"

using namespace mp;

namespace {

std::vector<double> to_vec(const json& j) { return j.get<std::vector<double>>(); }

double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double scale = 1e-12, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::abs(got[i] - ref[i]));
  }
  return err / scale;
}

}  // namespace

TEST_CASE("MoE scores equal the transformers reference", "[importance][moe]") {
  double worst = 0;
  for (std::string name : {"moe_g1", "moe_grouped_latent"}) {
    const std::string dir = test::reference_model(name);
    auto model = NemotronH::load(Checkpoint::open(dir), at::kCPU, at::kFloat);
    at::Tensor ids = SafetensorsFile::open(dir + "/moe_importance_ids.safetensors")->tensor("ids").clone();
    json ref = read_json_file(dir + "/moe_importance_reference.json");
    ScoreOptions o;
    o.batch_size = 4;
    o.depth = false;
    o.expert_loss = true;
    Scores s = compute_scores(model, ids, o);
    REQUIRE(ref["layers"].size() == static_cast<size_t>(model.config().count(LayerType::Moe)));
    for (auto& r : ref["layers"]) {
      const MoeScores& m = s.layers.at(r["index"].get<int64_t>()).moe;
      INFO(name << " layer " << r["index"]);
      for (auto [field, got, tol] : {std::tuple{"experts", &m.experts, 1e-5}, {"frequency", &m.frequency, 1e-12},
                                     {"expert_channels", &m.expert_channels, 1e-5}, {"shared", &m.shared, 1e-5},
                                     {"loss", &m.loss, 1e-3}}) {
        double err = rel_err(*got, to_vec(r[field]));
        INFO(field << " error relative to the largest reference value: " << err);
        CHECK(err <= tol);
        if (std::string(field) != "frequency") worst = std::max(worst, err);
      }
      // Scores are not degenerate: experts differ, and some removal hurts.
      CHECK(*std::max_element(m.experts.begin(), m.experts.end()) > 1.2 * *std::min_element(m.experts.begin(), m.experts.end()));
      CHECK(*std::max_element(m.loss.begin(), m.loss.end()) > 0);
    }
  }
  WARN("MoE importance vs transformers reference: worst relative error " << worst);
}

TEST_CASE("MoE scores survive scores.json and pruning drops the lowest-scored experts", "[importance][moe]") {
  const std::string dir = test::reference_model("moe_g1");
  auto ck = Checkpoint::open(dir);
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  at::Tensor ids = SafetensorsFile::open(dir + "/moe_importance_ids.safetensors")->tensor("ids").clone();
  ScoreOptions o;
  o.depth = false;
  Scores s = Scores::from_json(compute_scores(model, ids, o).to_json(), "round trip");
  PruneTarget t;
  t.n_routed_experts = 5;
  PrunePlan plan = make_plan(ck.config(), t, &s);
  for (auto& l : plan.layers) {
    if (l.type != LayerType::Moe) continue;
    std::vector<double> sc = s.layers[l.source].moe.experts;
    REQUIRE(sc.size() == 8);
    std::vector<int64_t> order(8);
    for (int64_t e = 0; e < 8; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sc[a] > sc[b]; });
    order.resize(5);
    std::sort(order.begin(), order.end());
    CHECK(l.moe_experts == order);
  }
}
