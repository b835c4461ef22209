// Fuzz target: `prune --target` JSON in all its forms (a partial shape, a full student config.json, a search
// candidate {"id", "config", "dropped_layers"}). On acceptance every width is positive and a full config is a
// valid architecture, and the target written back (PruneTarget::to_json) reads back the same.
#include "fuzz_common.h"
#include "minipuzzle/prune_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data, size), "fuzz target.json");
    mp::PruneTarget t = mp::PruneTarget::from_json(j, "fuzz target.json");
    for (const auto& w : {t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads,
                          t.mamba_num_heads, t.mamba_head_dim, t.n_groups})
      FUZZ_REQUIRE(!w || *w > 0);
    FUZZ_REQUIRE(t.drop_count >= 0);
    if (t.full_config) t.full_config->validate();
    const mp::json written = t.to_json();
    FUZZ_REQUIRE(mp::PruneTarget::from_json(written, "fuzz target.json (written back)").to_json() == written);
  });
}
