// Fuzz target: scores.json (what `minipuzzle score` writes and `prune` / `search` read, possibly from another
// machine). On acceptance, writing the scores and reading them back must succeed and keep every list's length.
#include "fuzz_common.h"
#include "minipuzzle/scores.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data, size), "fuzz scores.json");
    mp::Scores s = mp::Scores::from_json(j, "fuzz scores.json");
    mp::Scores again = mp::Scores::from_json(s.to_json(), "fuzz scores.json (written back)");
    FUZZ_REQUIRE(again.layers.size() == s.layers.size() && again.hidden.size() == s.hidden.size());
    FUZZ_REQUIRE(again.removal_order == s.removal_order && again.pattern == s.pattern);
  });
}
