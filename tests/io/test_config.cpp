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
