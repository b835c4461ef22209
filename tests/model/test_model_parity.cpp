// The C++ model against transformers' NemotronH: logits of seeded tiny random models (three configs covering
// all layer types, n_groups 1/2/4, GQA and MQA, tied/untied, biases, several SSD chunks) at lengths 1, 7, 300.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"

using namespace mp;

TEST_CASE("C++ NemotronH logits equal transformers' (fp32, CPU)", "[model][parity]") {
  for (const auto& name : test::reference_model_names()) {
    const std::string dir = test::reference_model(name);
    auto ck = Checkpoint::open(dir);
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
    for (int L : {1, 7, 300}) {
      at::Tensor ids = ref->tensor("input_ids_" + std::to_string(L));
      at::Tensor expect = ref->tensor("logits_" + std::to_string(L));
      at::Tensor got;
      {
        c10::AutoGradMode no_grad(false);
        got = model.forward(ids);
      }
      REQUIRE(got.sizes() == expect.sizes());
      double err = (got - expect).abs().max().item<double>();
      INFO(name << " L=" << L << " max abs error " << err);
      CHECK(err < 1e-4);
    }
  }
}

TEST_CASE("a skipped layer is the identity on the residual stream", "[model]") {
  auto ck = Checkpoint::open(test::reference_model("hybrid_g1"));
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  c10::AutoGradMode no_grad(false);
  at::Tensor ids = at::randint(0, ck.config().vocab_size, {1, 9}, at::kLong);
  ForwardOptions all_skipped;
  all_skipped.skip_layers.assign(ck.config().num_layers(), true);
  // With every layer skipped the model is norm_f(embedding) @ lm_head^T: computed here by hand.
  at::Tensor emb = ck.tensor("backbone.embeddings.weight").index_select(0, ids.view(-1)).view({1, 9, -1});
  at::Tensor w = ck.tensor("backbone.norm_f.weight");
  at::Tensor normed = emb * at::rsqrt(emb.pow(2).mean(-1, true) + ck.config().layer_norm_epsilon) * w;
  at::Tensor expect = at::matmul(normed, ck.tensor("lm_head.weight").t());
  CHECK((model.forward(ids, all_skipped) - expect).abs().max().item<double>() < 1e-4);
}

TEST_CASE("the per-layer API (embed, forward_layer, final_norm, logits) composes to forward bit for bit", "[model]") {
  for (const auto& name : test::reference_model_names()) {
    auto ck = Checkpoint::open(test::reference_model(name));
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    const int64_t n = ck.config().num_layers();
    c10::AutoGradMode no_grad(false);
    at::Tensor ids = at::randint(0, ck.config().vocab_size, {2, 37}, at::kLong);
    std::vector<ForwardOptions> variants(2);  // plain; layer 1 skipped
    variants[1].skip_layers.assign(n, false);
    variants[1].skip_layers[1] = true;
    for (const ForwardOptions& options : variants) {
      at::Tensor h = model.embed(ids);
      for (int64_t i = 0; i < n; ++i) h = model.forward_layer(i, h, options);
      at::Tensor hidden = model.final_norm(h);
      INFO(name << (options.skip_layers.empty() ? "" : ", layer 1 skipped"));
      CHECK(at::equal(hidden, model.forward_hidden(ids, options)));
      CHECK(at::equal(model.logits(hidden), model.forward(ids, options)));
    }
    // layer_parameters: exactly the tensors named backbone.layers.<i>.*; with the embeddings, norm_f and lm_head
    // they are every parameter.
    size_t covered = 3;
    for (int64_t i = 0; i < n; ++i) {
      const std::string prefix = "backbone.layers." + std::to_string(i) + ".";
      size_t expected = 0;
      for (auto& [k, _] : model.parameters()) expected += k.rfind(prefix, 0) == 0;
      auto params = model.layer_parameters(i);
      CHECK(params.size() == expected);
      covered += params.size();
    }
    CHECK(covered == model.parameters().size());
    CHECK_THROWS(model.forward_layer(n, model.embed(ids)));
  }
}

TEST_CASE("MoE hybrids: logits equal transformers' (fp32, CPU)", "[model][parity][moe]") {
  // Router with e_score_correction_bias, grouped top-k (4 groups, best 2), latent projections, shared experts.
  for (const auto& name : test::moe_reference_model_names()) {
    const std::string dir = test::reference_model(name);
    auto ck = Checkpoint::open(dir);
    REQUIRE(ck.config().count(LayerType::Moe) >= 2);
    auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
    auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
    for (int L : {1, 7, 300}) {
      at::Tensor ids = ref->tensor("input_ids_" + std::to_string(L));
      at::Tensor expect = ref->tensor("logits_" + std::to_string(L));
      c10::AutoGradMode no_grad(false);
      at::Tensor got = model.forward(ids);
      REQUIRE(got.sizes() == expect.sizes());
      double err = (got - expect).abs().max().item<double>();
      INFO(name << " L=" << L << " max abs error " << err);
      CHECK(err < 1e-4);
    }
  }
}

TEST_CASE("MoE routing: the correction bias selects but does not weight; groups restrict the choice", "[model][moe]") {
  // Hand-built router, checked against values derived by hand.
  ModelConfig c = Checkpoint::open(test::reference_model("moe_grouped_latent")).config();  // 12 experts, 4 groups
  at::Tensor w = at::zeros({12, 2});
  at::Tensor x = at::tensor({1.0f, 0.0f}).view({1, 2});
  // Logit of expert e = w[e][0]; scores rise with e except expert 0, which the bias makes the best choice.
  for (int e = 0; e < 12; ++e) w[e][0] = 0.1 * e;
  at::Tensor bias = at::zeros({12});
  bias[0] = 10.0;
  c.n_group = 1;
  c.topk_group = 1;
  c.num_experts_per_tok = 3;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 2.0;
  MoeRouting r = moe_route(c, w, bias, x);
  auto sorted = std::get<0>(r.indices.sort(-1));
  CHECK(at::equal(sorted, at::tensor({0, 10, 11}, at::kLong).view({1, 3})));
  // Weights are 2 x sigmoid(logit) of the chosen experts, the bias not included.
  at::Tensor expect_w = 2.0 * at::sigmoid(at::tensor({0.0f, 1.0f, 1.1f}));
  at::Tensor got_w = r.weights.gather(1, std::get<1>(r.indices.sort(-1)));
  CHECK(at::allclose(got_w.view({3}), expect_w));
  // Grouped: groups {0,1,2},{3,4,5},{6,7,8},{9,10,11} scored by their two best (bias included): group 0
  // (10.5+0.6) and group 3 win; with topk_group 1 only group 0's experts may be chosen.
  c.n_group = 4;
  c.topk_group = 1;
  r = moe_route(c, w, bias, x);
  CHECK(at::equal(std::get<0>(r.indices.sort(-1)), at::tensor({0, 1, 2}, at::kLong).view({1, 3})));
  // norm_topk_prob: weights sum to routed_scaling_factor.
  c.norm_topk_prob = true;
  r = moe_route(c, w, bias, x);
  CHECK(r.weights.sum().item<double>() == Approx(2.0).epsilon(1e-6));
  // A masked expert is never chosen, and groups rank without it.
  at::Tensor mask = at::ones({12});
  mask[0] = 0;
  r = moe_route(c, w, bias, x, mask);
  CHECK(at::equal(std::get<0>(r.indices.sort(-1)), at::tensor({9, 10, 11}, at::kLong).view({1, 3})));
}

TEST_CASE("MTP tensors are kept by load and save, and dropped only when asked", "[model][moe][mtp]") {
  auto ck = Checkpoint::open(test::reference_model("moe_mtp"));
  CHECK(ck.config().num_nextn_predict_layers == 1);
  auto names = ck.mtp_tensor_names();
  CHECK(names.size() == 2 * 8 + 14);
  auto model = NemotronH::load(ck, at::kCPU, at::kFloat);
  CHECK(model.mtp_tensors().size() == names.size());
  // The MTP layers do not change the main model's logits (transformers ignores them): moe_g1's reference holds.
  auto ref = SafetensorsFile::open(test::reference_model("moe_g1") + "/reference.safetensors");
  {
    c10::AutoGradMode no_grad(false);
    CHECK((model.forward(ref->tensor("input_ids_7")) - ref->tensor("logits_7")).abs().max().item<double>() < 1e-4);
  }
  const std::string out = test::binary_dir() + "/tmp_mtp_roundtrip";
  model.save(out, DType::F32, {}, /*overwrite=*/true);
  auto back = Checkpoint::open(out);
  CHECK(back.mtp_tensor_names() == names);
  CHECK(back.config().num_nextn_predict_layers == 1);
  for (const auto& n : names) CHECK(at::equal(back.tensor(n), ck.tensor(n)));
  CHECK(back.info("backbone.layers.1.mixer.gate.e_score_correction_bias").dtype == DType::F32);
  CHECK(back.info("mtp.layers.1.mixer.gate.e_score_correction_bias").dtype == DType::F32);
  model.drop_mtp();
  model.save(out, DType::BF16, {}, /*overwrite=*/true);
  auto dropped = Checkpoint::open(out);
  CHECK(dropped.mtp_tensor_names().empty());
  CHECK(dropped.config().num_nextn_predict_layers == 0);
  // bf16 save keeps the router's correction bias in float32, as transformers does.
  CHECK(dropped.info("backbone.layers.1.mixer.gate.e_score_correction_bias").dtype == DType::F32);
}
