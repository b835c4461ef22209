// Fuzz-style robustness: random bytes, invalid UTF-8, empty input and huge lines must neither crash nor
// hang, and every tokenizer without add_prefix_space or a normalizer must give back exactly the bytes it was
// given (NFC may legitimately rewrite random text; the corpus round trip in test_tokenizer_reference holds).
// Inputs come from a fixed seed; each tokenizer gets a time bound far above what the work needs.
#include <chrono>
#include <atomic>
#include <random>
#include <thread>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/tokenizer.h"

namespace fs = mp::fs;
using mp::test::Path;

static const Path kRefDir = Path(MINIPUZZLE_FIXTURES) / "tokenizers";

static bool changes_text(const std::string& name) { return name == "wikitext2_8192_llama3"; }  // has NFC

static std::vector<std::pair<std::string, mp::Tokenizer>> tokenizers_under_test() {
  std::vector<std::pair<std::string, mp::Tokenizer>> out;
  out.emplace_back("byte_level", mp::Tokenizer::byte_level());
  std::vector<const char*> configs = {"shakespeare_512_gpt2", "shakespeare_8192_llama3", "shakespeare_8192_o200k"};
  if (MINIPUZZLE_TEST_HAVE_ICU) configs.push_back("wikitext2_8192_llama3");
  for (const char* config : configs)
    out.emplace_back(config, mp::Tokenizer::from_file((kRefDir / config / "tokenizer.json").string()));
  return out;
}

static std::vector<std::string> hostile_inputs() {
  std::mt19937_64 rng(1234);
  std::vector<std::string> inputs = {"", std::string(1, '\0'), "\xff", "\xc3", "\xe2\x82", "\xed\xa0\x80 surrogate",
                                     "\xc0\xaf overlong", "\xf4\x90\x80\x80 above max", "ok \xff\xfe mixed \xc3\xa9",
                                     "<eos", "<eos><", "<|im_start|", std::string("a\0b", 3)};
  for (int k = 0; k < 300; ++k) {  // random bytes of random lengths
    std::string s(rng() % 200, '\0');
    for (char& c : s) c = char(rng() & 0xFF);
    inputs.push_back(s);
  }
  for (int k = 0; k < 100; ++k) {  // random mixes of UTF-8 fragments, specials and whitespace
    static const char* parts[] = {"a", "é", "日", "😀", " ", "\n", "\t", "<eos>", "<pad>", "'s", "1", "\xe6",
                                  "\x80", "  ", "thee", " thou", "\r\n", "\u00a0", "\u0301"};
    std::string s;
    for (int i = rng() % 100; i > 0; --i) s += parts[rng() % (sizeof parts / sizeof *parts)];
    inputs.push_back(s);
  }
  // Huge lines: one 2 MB word, 1 MB of spaces, 1 MB of digits, 2 MB of random bytes, 1 MB of one emoji.
  std::string word(2 << 20, 'x');
  for (size_t i = 0; i < word.size(); ++i) word[i] = char('a' + rng() % 26);
  inputs.push_back(word);
  inputs.push_back(std::string(1 << 20, ' '));
  inputs.push_back(std::string(1 << 20, '7'));
  std::string noise(2 << 20, '\0');
  for (char& c : noise) c = char(rng() & 0xFF);
  inputs.push_back(noise);
  std::string emoji;
  while (emoji.size() < (1 << 20)) emoji += "😀";
  inputs.push_back(emoji);
  return inputs;
}

TEST_CASE("hostile input neither crashes nor hangs, and round-trips", "[tokenizer][fuzz]") {
  std::vector<std::string> inputs = hostile_inputs();
  for (auto& [name, tok] : tokenizers_under_test()) {
    auto start = std::chrono::steady_clock::now();
    for (size_t k = 0; k < inputs.size(); ++k) {
      INFO(name << " input " << k << " (" << inputs[k].size() << " bytes)");
      std::vector<uint32_t> ids = tok.encode(inputs[k]);
      REQUIRE((ids.empty() || *std::max_element(ids.begin(), ids.end()) < tok.vocab_size()));
      std::string decoded = tok.decode(ids);
      if (!changes_text(name)) REQUIRE(decoded == inputs[k]);
      if (inputs[k].empty()) REQUIRE(ids.empty());
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(name << " took " << seconds << " s");
    CHECK(seconds < 60.0);  // a few seconds on 2 cores; a quadratic path would take far longer
  }
}

TEST_CASE("byte-level tokenizer: bytes are ids, specials follow", "[tokenizer]") {
  mp::Tokenizer tok = mp::Tokenizer::byte_level({"<eos>", "<pad>", "<mask>"});
  CHECK(tok.kind() == "byte_level");
  CHECK(tok.vocab_size() == 259);
  CHECK(tok.eos_id() == 256u);
  CHECK(tok.token_id("<pad>") == 257u);
  CHECK(tok.token_id("<0x41>") == 0x41u);
  CHECK(tok.token_id("missing") == std::nullopt);
  CHECK(tok.encode("A\xff<eos>b<mask>") == std::vector<uint32_t>{0x41, 0xff, 256, 'b', 258});
  CHECK(tok.decode({0x41, 256, 0xff}) == "A<eos>\xff");
  CHECK_THROWS_WITH(tok.decode({259}), Catch::Contains("outside the vocabulary"));
  // Different specials, different hash: token files record which tokenizer made them.
  CHECK(tok.sha256() != mp::Tokenizer::byte_level().sha256());
  CHECK(mp::Tokenizer::from_file("byte").sha256() == mp::Tokenizer::byte_level().sha256());
}

TEST_CASE("malformed tokenizer.json is refused with a clear error", "[tokenizer]") {
  auto refused = [](const std::string& text, const std::string& fragment) {
    INFO(text);
    CHECK_THROWS_WITH(mp::Tokenizer::from_json_text(text, "t.json"), Catch::Contains(fragment));
  };
  refused("{", "not valid JSON");
  refused("[]", "no \"model\"");
  refused(R"({"model": {"type": "Unigram", "vocab": []}})", "Unigram");
  const std::string bpe = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  refused("{" + bpe + R"(, "pre_tokenizer": {"type": "Metaspace"}})", "Metaspace");
  refused("{" + bpe + R"(, "pre_tokenizer": null})", "no ByteLevel");
  refused("{" + bpe + R"(, "normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "ByteLevel"}})",
          "BertNormalizer");
  refused(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}, "pre_tokenizer": {"type": "ByteLevel"}})",
          "not in the vocabulary");
  refused(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split",
          "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})", "does not compile");
  CHECK_THROWS_WITH(mp::Tokenizer::from_file("/nonexistent/tokenizer.json"), Catch::Contains("cannot read tokenizer"));
}

TEST_CASE("tokenizer is safe to share between threads", "[tokenizer]") {
  mp::Tokenizer tok = mp::Tokenizer::from_file((kRefDir / "shakespeare_8192_llama3" / "tokenizer.json").string());
  std::string text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n";
  std::vector<uint32_t> expected = tok.encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int k = 0; k < 200; ++k)
        if (tok.encode(text) != expected) ++mismatches;
    });
  for (auto& t : threads) t.join();
  CHECK(mismatches == 0);
}
