// Tokenizers: Hugging Face `tokenizer.json` byte-level BPE (GPT-2 / Llama-3 / Nemotron family) and a plain
// byte-level tokenizer (ids 0..255 are the bytes, special tokens follow) for small demo models.
//
// The BPE encoder reproduces the `tokenizers` library: added/special tokens are split out first (leftmost-
// longest, honouring lstrip/rstrip/single_word/normalized), then the normalizer (when the build has ICU for
// NFC/NFD/NFKC/NFKD/Lowercase; otherwise loading such a tokenizer fails with a clear error), the
// pre-tokenizer (ByteLevel with its GPT-2 regex, Split with a regex through PCRE2, Digits, Sequence), the
// byte-to-unicode mapping, and merges by rank (ignore_merges, unk/fuse_unk, byte_fallback, subword
// prefix/suffix). Unlike `tokenizers`, input may be any bytes: invalid UTF-8 bytes become pre-tokens of
// their own, so decode(encode(x)) == x for every x.
//
// Thread safety: a Tokenizer is immutable after loading; encode() may run on many threads at once (each
// thread keeps its own cache of encoded words).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mp {

namespace detail {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // tokenizer.json from a file, or from a directory holding one; "byte" gives byte_level().
  static Tokenizer from_file(const std::string& path);
  // tokenizer.json text; `what` names the source in errors (also the fuzz target's entry point).
  static Tokenizer from_json_text(const std::string& text, const std::string& what);
  // 256 byte ids, then the special tokens in order (ids 256, 257, ...). Default specials: <eos>, <pad>.
  static Tokenizer byte_level(const std::vector<std::string>& special_tokens = {"<eos>", "<pad>"});

  // Token ids of `text`. add_special_tokens applies the post-processor (e.g. a BOS token from a
  // TemplateProcessing), as `tokenizers`' encode(text, add_special_tokens=True) does; the default does not.
  std::vector<uint32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  void encode_append(std::string_view text, std::vector<uint32_t>& out, bool add_special_tokens = false) const;
  // The bytes the ids stand for (special/added tokens as their text). Throws on ids >= vocab_size().
  std::string decode(const uint32_t* ids, size_t count) const;
  std::string decode(const std::vector<uint32_t>& ids) const { return decode(ids.data(), ids.size()); }

  // One more than the largest id (model vocabulary and added tokens): the embedding's row count.
  uint32_t vocab_size() const;
  // The id of a token given by its vocabulary string (e.g. "<eos>", or "Ġthe" for BPE); nullopt if absent.
  std::optional<uint32_t> token_id(std::string_view token) const;
  // The vocabulary string of an id (byte-level: "<0x41>"-style names for bytes); throws when out of range.
  std::string id_to_token(uint32_t id) const;
  // The end-of-document token: the first special token among <eos>, </s>, <|endoftext|>, <|end_of_text|>,
  // <|eot_id|>, <|im_end|>, <|end|>, [EOS]; nullopt if none.
  std::optional<uint32_t> eos_id() const;
  // "bpe" or "byte_level".
  const std::string& kind() const;
  // sha256 of the tokenizer.json bytes (byte_level: of a canonical description of its specials).
  const std::string& sha256() const;

 private:
  Tokenizer() = default;  // only the factories make tokenizers (hold an std::optional<Tokenizer> if needed)
  std::shared_ptr<const detail::TokenizerImpl> impl_;
};

// Hex sha256 of bytes (used for tokenizer hashes in token-file metadata).
std::string sha256_hex(std::string_view bytes);

}  // namespace mp
