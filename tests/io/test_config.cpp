// config.json reading: both layer-list forms, lenient floats, and clear errors for wrong configs.
#include "catch.h"
#include "minipuzzle/config.h"
#include "minipuzzle/error.h"

using namespace mp;

static json base_config() {
  return json::parse(R"({"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
    "hybrid_override_pattern": "M*-", "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "mamba_num_heads": 4, "mamba_head_dim": 8, "n_groups": 2, "ssm_state_size": 16})");
}

static std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("both layer-list forms give the same layers", "[io][config]") {
  json a = base_config();
  json b = base_config();
  b.erase("hybrid_override_pattern");
  b["layers_block_type"] = {"linear_attention", "full_attention", "mlp"};
  CHECK(ModelConfig::from_json(a).pattern() == "M*-");
  CHECK(ModelConfig::from_json(b).pattern() == "M*-");
  CHECK(ModelConfig::from_json(a).mamba_in_proj_dim() == 2 * 32 + 2 * 2 * 16 + 4);
}

TEST_CASE("Python's Infinity and transformers' __float__ are read", "[io][config]") {
  json j = parse_json_lenient(R"({"a": Infinity, "b": -Infinity, "c": {"__float__": "Infinity"}, "s": "Infinity"})", "t");
  CHECK(std::isinf(j["a"].get<double>()));
  CHECK(j["b"].get<double>() < 0);
  CHECK(std::isinf(j["c"].get<double>()));
  CHECK(j["s"].get<std::string>() == "Infinity");
  // And the writer spells infinity the way transformers reads it back.
  ModelConfig c = ModelConfig::from_json(base_config());
  CHECK(c.to_json()["time_step_limit"][1]["__float__"] == "Infinity");
}

TEST_CASE("wrong configs are refused with the field named", "[io][config]") {
  json j = base_config();
  j.erase("hidden_size");
  CHECK_THAT(error_of(j), MP_CONTAINS("missing field \"hidden_size\""));

  j = base_config();
  j["num_hidden_layers"] = 5;
  CHECK_THAT(error_of(j), MP_CONTAINS("num_hidden_layers is 5 but the layer pattern has 3"));

  j = base_config();
  j["num_key_value_heads"] = 3;
  CHECK_THAT(error_of(j), MP_CONTAINS("must divide num_attention_heads"));

  j = base_config();
  j["n_groups"] = 3;
  CHECK_THAT(error_of(j), MP_CONTAINS("n_groups (3) must divide mamba_num_heads"));

  j = base_config();
  j["hybrid_override_pattern"] = "M*X";
  CHECK_THAT(error_of(j), MP_CONTAINS("expected M, *, - or E"));

  CHECK_THAT(error_of(json::array()), MP_CONTAINS("expected a JSON object"));
}

TEST_CASE("MoE configs: both layer-list forms, transformers' defaults, round trip, and refusals", "[io][config][moe]") {
  json a = base_config();
  a["hybrid_override_pattern"] = "ME*E";
  a["n_routed_experts"] = 8;
  a["num_experts_per_tok"] = 2;
  a["moe_intermediate_size"] = 16;
  a["moe_shared_expert_intermediate_size"] = 24;
  json b = a;
  b.erase("hybrid_override_pattern");
  b["layers_block_type"] = {"mamba", "moe", "attention", "moe"};  // NVIDIA's older spellings are accepted too
  ModelConfig ca = ModelConfig::from_json(a), cb = ModelConfig::from_json(b);
  CHECK(ca.pattern() == "ME*E");
  CHECK(cb.pattern() == "ME*E");
  // Unset routing options take transformers' NemotronHConfig defaults.
  CHECK(ca.n_group == 1);
  CHECK(ca.topk_group == 1);
  CHECK(ca.norm_topk_prob);
  CHECK(ca.routed_scaling_factor == 1.0);
  CHECK(ca.moe_latent_size == 0);
  CHECK(ca.moe_expert_dim() == 32);
  ModelConfig back = ModelConfig::from_json(ca.to_json());
  CHECK(back.n_routed_experts == 8);
  CHECK(back.to_json()["layers_block_type"][1] == "moe");
  // transformers' alias of n_routed_experts
  json alias = a;
  alias.erase("n_routed_experts");
  alias["num_local_experts"] = 8;
  CHECK(ModelConfig::from_json(alias).n_routed_experts == 8);
  auto refused = [&](const char* key, json value, const char* words) {
    json j = a;
    if (value.is_null()) j.erase(key);
    else j[key] = value;
    INFO(key << " = " << value.dump());
    CHECK_THAT(error_of(j), MP_CONTAINS(words));
  };
  refused("moe_intermediate_size", nullptr, "moe_intermediate_size");
  refused("n_group", 3, "n_group (3) must divide n_routed_experts (8)");
  refused("n_group", 8, "at least 2 experts");
  refused("topk_group", 2, "topk_group (2) must be 1..n_group (1)");
  refused("num_experts_per_tok", 9, "num_experts_per_tok (9)");
}
