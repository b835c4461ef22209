// Fuzz target: the lenient JSON reader every config/scores/target/recipe file goes through (bare
// Infinity/NaN, {"__float__": ...}). An accepted document must survive being written and read back (what
// write_json_file does when a tool rewrites a config), and numbers must read through json_to_double.
#include "fuzz_common.h"
#include "minipuzzle/json.h"

static void visit_numbers(const mp::json& v, int depth) {
  FUZZ_REQUIRE(depth < 100000);
  if (v.is_number()) (void)mp::json_to_double(v, "fuzz");
  if (v.is_array() || v.is_object())
    for (const auto& child : v) visit_numbers(child, depth + 1);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data, size), "fuzz.json");
    visit_numbers(j, 0);
    // Round trip: dump() with non-finite numbers boxed as write_json_file does, then parse again.
    std::string text = j.dump(-1, ' ', false, mp::json::error_handler_t::replace);
    (void)mp::parse_json_lenient(text, "fuzz.json (round trip)");
  });
}
