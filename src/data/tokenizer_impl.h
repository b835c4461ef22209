// Internals of the tokenizer (src/data only): the pieces of the `tokenizers` pipeline, each in its own file.
//   added_tokens.cpp   split out added/special tokens (leftmost-longest, lstrip/rstrip/single_word)
//   normalizer.cpp     NFC/NFD/NFKC/NFKD/Lowercase (ICU), Prepend/Replace/Strip, Sequence
//   pre_tokenizer.cpp  ByteLevel (GPT-2 regex), Split (PCRE2), Digits, Sequence; invalid UTF-8 handling
//   bpe.cpp            byte-level symbols and merges by rank, with a per-thread word cache
//   post_processor.cpp TemplateProcessing / Roberta / Bert special tokens
//   tokenizer.cpp      tokenizer.json loading, encode/decode, the byte-level tokenizer
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "minipuzzle/json.h"

namespace mp::detail {

// ---- UTF-8 ----
// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 when the bytes there are not valid UTF-8
// (overlong forms, surrogates and code points above U+10FFFF are invalid, as in Rust's str).
size_t utf8_valid_length(std::string_view s, size_t i);
// Decodes the valid sequence at s[i] (caller checked utf8_valid_length > 0).
char32_t utf8_decode(std::string_view s, size_t i, size_t len);
void utf8_append(std::string& out, char32_t c);
// Calls on_valid(begin, end) for each maximal run of valid UTF-8 and on_invalid(pos) for each byte that is not.
void for_each_utf8_run(std::string_view s, const std::function<void(size_t, size_t)>& on_valid,
                       const std::function<void(size_t)>& on_invalid);
bool unicode_is_whitespace(char32_t c);  // Rust char::is_whitespace (Unicode White_Space)
bool unicode_is_word_char(char32_t c);  // Rust regex \w (letters, marks, numbers, connector punctuation)

// ---- GPT-2 byte <-> unicode mapping ----
struct ByteLevelMap {
  std::array<std::string, 256> byte_to_utf8;  // the UTF-8 of the char standing for each byte
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  static const ByteLevelMap& get();
};

// ---- Added tokens ----
struct AddedToken {
  uint32_t id = 0;
  std::string content;
  // What the text is searched for: the content, or for a normalized token the content after the normalizer
  // (as `tokenizers` does, so with a Prepend("^") normalizer "thee" is found as "^thee").
  std::string pattern;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest matching of a set of token strings (a byte trie), as `tokenizers`' aho-corasick set.
class AddedTokenMatcher {
 public:
  void build(const std::vector<const AddedToken*>& tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into pieces: (token or nullptr, begin, end), covering it in order.
  struct Piece {
    const AddedToken* token;
    size_t begin, end;
  };
  void split(std::string_view text, std::vector<Piece>& out) const;

 private:
  struct Node {
    std::unordered_map<uint8_t, int32_t> next;
    int32_t token = -1;  // index into tokens_ of a token ending here
  };
  std::vector<const AddedToken*> tokens_;
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
};

// ---- Normalizer ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;  // text is valid UTF-8 here
};
std::unique_ptr<Normalizer> make_normalizer(const json& spec);  // null spec -> nullptr
bool normalizers_available();  // false when built without ICU (NFC/NFD/NFKC/NFKD/Lowercase unsupported)

// ---- Pre-tokenizer ----
// A pre-tokenizer step turns one piece into sub-pieces, passed to `emit` in order (views valid during the call).
using PieceSink = std::function<void(std::string_view)>;
class PreTokenizerStep {
 public:
  virtual ~PreTokenizerStep() = default;
  virtual void split(std::string_view piece, const std::function<void(std::string_view)>& emit) const = 0;
};
struct PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizerStep>> steps;
  bool has_byte_level = false;
  // Runs every step in order; calls `sink` with each final pre-token.
  void run(std::string_view text, const PieceSink& sink) const;
};
PreTokenizer make_pre_tokenizer(const json& spec);

// A compiled PCRE2 regex (UTF + UCP, JIT): finds non-overlapping matches in valid UTF-8.
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls on_match(begin, end) for every match, left to right (empty matches advance one character).
  void for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
  std::string pattern_;
};
// Rewrites a `tokenizers` (Oniguruma) pattern for PCRE2: \s and \S become the explicit Unicode White_Space
// class that Oniguruma uses (PCRE2's \s lacks U+0085).
std::string onig_to_pcre2(const std::string& pattern);

// ---- BPE model ----
struct BpeModel {
  std::unordered_map<std::string, uint32_t> vocab;
  std::vector<std::string> id_to_token;  // "" for ids without a model token
  struct MergeResult {
    uint32_t rank, new_id;
  };
  std::unordered_map<uint64_t, MergeResult> merges;  // (left id << 32 | right id)
  std::optional<uint32_t> unk_id;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string continuing_subword_prefix, end_of_word_suffix;
  uint64_t instance = 0;  // distinguishes models in the per-thread caches

  // How the symbol for each byte is made (byte-level chars map one byte to one char), per position kind
  // (0 middle, 1 first, 2 last, 3 only), precomputed from the rules above.
  struct SymbolRule {
    enum Kind : uint8_t { Id, Fallback, Unk, Drop } kind = Drop;
    uint8_t count = 0;
    std::array<uint32_t, 4> ids{};
  };
  std::array<std::array<SymbolRule, 256>, 4> rules;

  static BpeModel from_json(const json& model, const std::string& what);
  void prepare_rules();
  // Appends the ids of one pre-token (raw bytes; mapped to byte-level chars internally).
  void encode_word(std::string_view word, std::vector<uint32_t>& out) const;
  void encode_word_uncached(std::string_view word, std::vector<uint32_t>& out) const;
};

// ---- Post-processor ----
struct PostProcessor {
  std::vector<uint32_t> prefix, suffix;  // ids around a single sequence
  static PostProcessor from_json(const json& spec, const std::string& what);
};

// ---- The whole tokenizer ----
struct TokenizerImpl {
  std::string kind;  // "bpe" or "byte_level"
  std::string sha256;
  uint32_t vocab_size = 0;
  // bpe
  std::vector<AddedToken> added;
  std::unordered_map<uint32_t, size_t> added_by_id;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  std::unique_ptr<Normalizer> normalizer;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  PostProcessor post;
  // byte_level
  std::vector<std::string> byte_specials;

  std::optional<uint32_t> eos;

  void encode(std::string_view text, std::vector<uint32_t>& out) const;
  void encode_segment(std::string_view text, std::vector<uint32_t>& out) const;  // no raw added tokens inside
};

}  // namespace mp::detail
