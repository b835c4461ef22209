// Fuzz target: the search stage's JSON inputs. The first byte picks the reader, the rest is the JSON text:
// 'r' - a search request (configs/search/*.json); other even bytes - a hardware profile (configs/hardware/*.json
// or a user's file); odd - a scores.json (read_scores' reader, then the proxy's view of it). On
// acceptance a profile's sizes are finite and positive, every score is finite (the ranking divides by and sorts
// them), and a request holds only known keys with values of their kind.
#include <cmath>

#include "fuzz_common.h"
#include "minipuzzle/search.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool request = data[0] == 'r';
  const bool hardware = !request && (data[0] % 2) == 0;
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data + 1, size - 1), "fuzz search input");
    if (request) {
      auto r = mp::search::SearchRequest::from_json(j, "fuzz search request");
      FUZZ_REQUIRE(r.values.is_object());
      // Written back, it reads back the same.
      auto again = mp::search::SearchRequest::from_json(r.values, "fuzz search request (written back)");
      FUZZ_REQUIRE(again.values == r.values);
    } else if (hardware) {
      auto h = mp::search::HardwareProfile::from_json(j, "fuzz hardware.json");
      FUZZ_REQUIRE(std::isfinite(h.memory_bytes) && h.memory_bytes > 0);
      FUZZ_REQUIRE(std::isfinite(h.bandwidth_bytes_per_s) && h.bandwidth_bytes_per_s > 0);
      FUZZ_REQUIRE(h.peak_flops(mp::search::DType::BF16) > 0);
      (void)mp::search::HardwareProfile::from_json(h.to_json(), "fuzz hardware.json (written back)");
    } else {
      auto s = mp::search::ImportanceScores::from_scores(mp::Scores::from_json(j, "fuzz scores.json"), "fuzz scores.json");
      for (const auto* v : {&s.layer, &s.hidden, &s.ffn, &s.mamba_heads, &s.mamba_head_dim, &s.attention_heads, &s.experts,
                              &s.expert_ffn, &s.shared_ffn})
        for (double x : *v) FUZZ_REQUIRE(std::isfinite(x));
    }
  });
}
