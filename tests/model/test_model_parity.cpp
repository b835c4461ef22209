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
