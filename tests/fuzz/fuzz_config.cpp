// Fuzz target: config.json -> ModelConfig (both layer-list forms, lenient numbers). On an accepted config the
// target derives what the rest of the tool derives from it - every tensor shape, the parameter count (UBSan
// reports any signed overflow there) - and checks that writing the config and reading it back gives the same
// architecture (what `prune` and `search` do when they emit a student's config.json).
#include "fuzz_common.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data, size), "fuzz config.json");
    mp::ModelConfig c = mp::ModelConfig::from_json(j, "fuzz config.json");
    FUZZ_REQUIRE(c.num_layers() > 0);
    int64_t params = mp::count_parameters(c);
    FUZZ_REQUIRE(params > 0);
    for (const auto& spec : mp::expected_tensors(c))
      for (int64_t d : spec.shape) FUZZ_REQUIRE(d > 0);
    (void)c.mamba_in_proj_dim();
    (void)c.mamba_conv_dim();
    mp::ModelConfig again = mp::ModelConfig::from_json(c.to_json(), "fuzz config.json (written back)");
    FUZZ_REQUIRE(again.pattern() == c.pattern());
    FUZZ_REQUIRE(again.hidden_size == c.hidden_size && again.vocab_size == c.vocab_size);
    FUZZ_REQUIRE(again.intermediate_size == c.intermediate_size && again.head_dim == c.head_dim);
    FUZZ_REQUIRE(again.mamba_num_heads == c.mamba_num_heads && again.n_groups == c.n_groups);
    FUZZ_REQUIRE(mp::count_parameters(again) == params);
  });
}
