// Fuzz target: the safetensors header validator (8-byte length, JSON header, then data), i.e. everything
// SafetensorsFile::open() checks before any tensor byte is touched. On an accepted header the target checks
// what open()'s callers rely on: every tensor lies inside the data section, its byte span is exactly
// numel x dtype size (computed here in 128 bits, independently of the parser), and spans do not overlap.
#include <algorithm>
#include <vector>

#include "fuzz_common.h"
#include "minipuzzle/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    std::map<std::string, std::string> metadata;
    auto infos = mp::SafetensorsFile::parse_header(data, size, "fuzz.safetensors", &metadata);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
    const uint64_t data_size = size - 8 - header_len;
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& t : infos) {
      FUZZ_REQUIRE(t.begin <= t.end && t.end <= data_size);
      unsigned __int128 bytes = mp::dtype_size(t.dtype);
      for (int64_t d : t.shape) {
        FUZZ_REQUIRE(d >= 0);
        bytes *= static_cast<uint64_t>(d);
        if (bytes > (static_cast<unsigned __int128>(1) << 64)) bytes = static_cast<unsigned __int128>(1) << 64;
      }
      FUZZ_REQUIRE(bytes == t.nbytes());
      FUZZ_REQUIRE(static_cast<unsigned __int128>(t.numel()) * mp::dtype_size(t.dtype) == bytes);
      if (t.begin != t.end) spans.push_back({t.begin, t.end});
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) FUZZ_REQUIRE(spans[i].first >= spans[i - 1].second);
  });
}
