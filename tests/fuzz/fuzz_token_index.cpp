// Fuzz target: a token file's NAME.index (magic, document count, offsets). Input: 8 bytes giving the token
// count of the matching NAME.tokens (little-endian), then the index bytes. On acceptance the offsets must start
// at 0, never decrease and end at the token count, so every document span is inside the token array.
#include <cstring>

#include "fuzz_common.h"
#include "minipuzzle/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t num_tokens = 0;
  for (int i = 7; i >= 0; --i) num_tokens = (num_tokens << 8) | data[i];
  return mp::fuzz::run_parser([&] {
    auto offsets = mp::parse_token_index(data + 8, size - 8, num_tokens, "fuzz.index");
    FUZZ_REQUIRE(!offsets.empty() && offsets.front() == 0 && offsets.back() == num_tokens);
    FUZZ_REQUIRE(16 + 8 * offsets.size() == size - 8);
    for (size_t i = 1; i < offsets.size(); ++i) FUZZ_REQUIRE(offsets[i] >= offsets[i - 1]);
  });
}
