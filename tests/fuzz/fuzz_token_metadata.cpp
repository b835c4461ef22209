// Fuzz target: a token file's NAME.json metadata (tokenizer identity, vocab_size, eos_id, counts). On
// acceptance eos_id is below vocab_size (the model indexes its embedding with it) and writing the metadata and
// reading it back gives the same values.
#include "fuzz_common.h"
#include "minipuzzle/token_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::json j = mp::parse_json_lenient(mp::fuzz::as_text(data, size), "fuzz tokens.json");
    mp::TokenFileMetadata m = mp::TokenFileMetadata::from_json(j, "fuzz tokens.json");
    FUZZ_REQUIRE(m.vocab_size > 0 && (!m.eos_id || *m.eos_id < m.vocab_size));
    mp::TokenFileMetadata again = mp::TokenFileMetadata::from_json(m.to_json(), "fuzz tokens.json (written back)");
    FUZZ_REQUIRE(again.vocab_size == m.vocab_size && again.eos_id == m.eos_id);
    FUZZ_REQUIRE(again.num_tokens == m.num_tokens && again.num_documents == m.num_documents);
  });
}
