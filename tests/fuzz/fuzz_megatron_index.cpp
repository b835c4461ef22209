// Fuzz target: a Megatron indexed dataset's PREFIX.idx (magic, version, dtype code, counts, sequence lengths and
// pointers, document indices) and, in a second mode, a .npy header. Input: 1 byte choosing the parser, 8 bytes
// giving the size of the matching data file (little-endian), then the file's bytes. On acceptance every sequence
// must lie inside the data file and the documents must cover the sequences in order, so reading them is safe.
#include "fuzz_common.h"
#include "minipuzzle/data_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 9) return 0;
  const bool npy = data[0] & 1;
  uint64_t other_size = 0;
  for (int i = 8; i >= 1; --i) other_size = (other_size << 8) | data[i];
  const uint8_t* body = data + 9;
  const uint64_t n = size - 9;
  return mp::fuzz::run_parser([&] {
    if (npy) {
      // A .npy file is its own data: the size given is the whole file's (at least the bytes we have).
      const uint64_t file_size = n + (other_size & 0xFFFF);
      mp::NpyHeader h = mp::parse_npy_header(body, n, file_size, "fuzz.npy");
      FUZZ_REQUIRE(h.item_size == 1 || h.item_size == 2 || h.item_size == 4 || h.item_size == 8);
      FUZZ_REQUIRE(h.data_offset <= file_size && h.count * uint64_t(h.item_size) == file_size - h.data_offset);
      return;
    }
    mp::MegatronIndex ix = mp::parse_megatron_index(body, n, other_size, "fuzz.idx");
    FUZZ_REQUIRE(ix.item_size >= 1 && ix.item_size <= 8);
    FUZZ_REQUIRE(ix.sequence_lengths.size() == ix.sequence_pointers.size());
    for (size_t i = 0; i < ix.sequence_lengths.size(); ++i) {
      FUZZ_REQUIRE(ix.sequence_lengths[i] >= 0 && ix.sequence_pointers[i] >= 0);
      FUZZ_REQUIRE(uint64_t(ix.sequence_pointers[i]) + uint64_t(ix.sequence_lengths[i]) * ix.item_size <= other_size);
    }
    FUZZ_REQUIRE(!ix.document_indices.empty() && ix.document_indices.front() == 0);
    FUZZ_REQUIRE(uint64_t(ix.document_indices.back()) == ix.sequence_lengths.size());
    for (size_t i = 1; i < ix.document_indices.size(); ++i)
      FUZZ_REQUIRE(ix.document_indices[i] >= ix.document_indices[i - 1]);
  });
}
