// The C++ tokenizer against `tokenizers` (tests/reference/train_tokenizers.py): byte-level BPE tokenizers
// trained on tinyshakespeare and wikitext-2 (vocabularies 512 and 8192, GPT-2 and Llama-3 styles, special
// and added tokens) must give exactly the ids `tokenizers` gives for both whole corpora, and for edge cases.
#include <fstream>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/json.h"
#include "minipuzzle/tokenizer.h"

namespace fs = mp::fs;
using mp::test::Path;

static std::string read_file(const Path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

static std::vector<uint32_t> read_ids(const Path& p) {
  std::string bytes = read_file(p);
  REQUIRE(bytes.size() % 4 == 0);
  std::vector<uint32_t> ids(bytes.size() / 4);
  std::memcpy(ids.data(), bytes.data(), bytes.size());
  return ids;
}

static const Path kRefDir = Path(MINIPUZZLE_FIXTURES) / "tokenizers";
// wikitext2_8192_llama3 has an NFC normalizer, which needs ICU in the build.
static std::vector<const char*> configs() {
  std::vector<const char*> c = {"shakespeare_512_gpt2", "shakespeare_8192_llama3", "wikitext2_512_gpt2_prefix",
                                "shakespeare_8192_o200k"};
  if (MINIPUZZLE_TEST_HAVE_ICU) c.push_back("wikitext2_8192_llama3");
  else WARN("built without ICU: the NFC tokenizer wikitext2_8192_llama3 is not tested");
  return c;
}

static std::string corpus(const std::string& name) {
  Path data(MINIPUZZLE_SHARED_DATA);
  if (name == "tinyshakespeare") return read_file(data / "tinyshakespeare.txt");
  return read_file(data / "wikitext-2-valid.txt") + read_file(data / "wikitext-2-test.txt");
}

// Equality with a readable first difference instead of a dump of a million ids.
static void require_same_ids(const std::vector<uint32_t>& got, const std::vector<uint32_t>& want,
                             const mp::Tokenizer& tok, const std::string& what) {
  size_t n = std::min(got.size(), want.size()), first = n;
  for (size_t i = 0; i < n; ++i)
    if (got[i] != want[i]) {
      first = i;
      break;
    }
  if (first == n && got.size() == want.size()) {
    SUCCEED(what << ": " << got.size() << " ids identical");
    return;
  }
  std::ostringstream msg;
  msg << what << ": " << got.size() << " ids vs " << want.size() << " from tokenizers; first difference at " << first
      << ":\n";
  size_t from = first > 5 ? first - 5 : 0;
  for (size_t i = from; i < std::min(first + 5, n); ++i)
    msg << "  [" << i << "] got " << got[i] << " '" << tok.id_to_token(got[i]) << "' want " << want[i] << " '"
        << tok.id_to_token(want[i]) << "'\n";
  FAIL(msg.str());
}

// decode(encode(x)) == x, reporting the first differing byte rather than two megabytes of text.
static void require_round_trip(const std::string& got, const std::string& want, const std::string& what) {
  if (got == want) return;
  size_t first = 0;
  while (first < std::min(got.size(), want.size()) && got[first] == want[first]) ++first;
  FAIL(what << ": decode(encode(x)) differs from x at byte " << first << " of " << want.size() << " (got "
            << got.size() << " bytes): got " << mp::json(got.substr(first, 40)).dump() << ", want "
            << mp::json(want.substr(first, 40)).dump());
}

TEST_CASE("encoder matches tokenizers on whole corpora, with special tokens", "[tokenizer][reference]") {
  for (const char* config : configs()) {
    mp::Tokenizer tok = mp::Tokenizer::from_file((kRefDir / config / "tokenizer.json").string());
    bool prefix_space = std::string(config).find("prefix") != std::string::npos;
    for (const char* name : {"tinyshakespeare", "wikitext2"}) {
      std::string text = corpus(name);
      std::vector<uint32_t> ids = tok.encode(text);
      require_same_ids(ids, read_ids(kRefDir / config / (std::string(name) + ".ids")), tok,
                       std::string(config) + " on " + name);
      // add_prefix_space (and rstrip on an added token, in the same configuration) change the text by design.
      if (!prefix_space) require_round_trip(tok.decode(ids), text, std::string(config) + " on " + name);

      std::string special_text = read_file(kRefDir / config / (std::string(name) + ".special.txt"));
      std::vector<uint32_t> special_ids = tok.encode(special_text);
      require_same_ids(special_ids, read_ids(kRefDir / config / (std::string(name) + ".special.ids")), tok,
                       std::string(config) + " on " + name + " with special tokens");
      if (!prefix_space)
        require_round_trip(tok.decode(special_ids), special_text, std::string(config) + " on " + name + " with specials");
    }
  }
}

TEST_CASE("encoder matches tokenizers on edge cases, with and without the post-processor", "[tokenizer][reference]") {
  for (const char* config : configs()) {
    mp::Tokenizer tok = mp::Tokenizer::from_file((kRefDir / config / "tokenizer.json").string());
    mp::json ref = mp::json::parse(read_file(kRefDir / config / "cases.json"));
    for (auto& [name, id] : ref.at("specials").items()) CHECK(tok.token_id(name) == id.get<uint32_t>());
    CHECK(tok.eos_id() == ref.at("specials").at("<eos>").get<uint32_t>());
    CHECK(tok.vocab_size() >= ref.at("vocab_size_with_added").get<uint32_t>());
    for (const mp::json& c : ref.at("cases")) {
      std::string text = c.at("text").get<std::string>();
      INFO(config << ": " << mp::json(text).dump().substr(0, 80));
      std::vector<uint32_t> ids = tok.encode(text);
      CHECK(ids == c.at("ids").get<std::vector<uint32_t>>());
      CHECK(tok.encode(text, true) == c.at("ids_with_special").get<std::vector<uint32_t>>());
      CHECK(tok.decode(ids) == c.at("decoded").get<std::string>());
    }
  }
}

TEST_CASE("other pipeline pieces match tokenizers: Split behaviours, invert, Digits, normalizers", "[tokenizer][reference]") {
  std::vector<const char*> variants = {"variant_removed", "variant_merged_previous_digits", "variant_merged_next",
                                       "variant_contiguous_invert_digits"};
  if (MINIPUZZLE_TEST_HAVE_ICU) variants.push_back("variant_normalizers");  // NFKC and Lowercase need ICU
  for (const char* variant : variants) {
    mp::Tokenizer tok = mp::Tokenizer::from_file((kRefDir / variant / "tokenizer.json").string());
    mp::json ref = mp::json::parse(read_file(kRefDir / variant / "cases.json"));
    for (const mp::json& c : ref.at("cases")) {
      std::string text = c.at("text").get<std::string>();
      INFO(variant << ": " << mp::json(text).dump().substr(0, 80));
      std::vector<uint32_t> ids = tok.encode(text);
      require_same_ids(ids, c.at("ids").get<std::vector<uint32_t>>(), tok, variant);
      CHECK(tok.encode(text, true) == c.at("ids_with_special").get<std::vector<uint32_t>>());
      CHECK(tok.decode(ids) == c.at("decoded").get<std::string>());
    }
  }
}

TEST_CASE("tokenizer hash and vocabulary lookups", "[tokenizer]") {
  Path path = kRefDir / "shakespeare_512_gpt2" / "tokenizer.json";
  mp::Tokenizer tok = mp::Tokenizer::from_file(path.string());
  CHECK(tok.kind() == "bpe");
  CHECK(tok.sha256() == mp::sha256_hex(read_file(path)));
  mp::json spec = mp::json::parse(read_file(path));
  for (auto& [token, id] : spec.at("model").at("vocab").items()) {
    REQUIRE(tok.token_id(token) == id.get<uint32_t>());
    REQUIRE(tok.id_to_token(id.get<uint32_t>()) == token);
  }
  // Loading from the directory finds tokenizer.json.
  CHECK(mp::Tokenizer::from_file(path.parent_path().string()).sha256() == tok.sha256());
}
