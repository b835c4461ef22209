// Tokenizer: loads a Hugging Face tokenizer.json (byte-level BPE) or makes the byte-level demo tokenizer,
// and runs the encode pipeline in `tokenizers`' order: raw added tokens, normalizer, normalized added
// tokens, pre-tokenizer, BPE, post-processor.
#include "minipuzzle/tokenizer.h"

#include <fstream>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/json.h"
#include "src/data/tokenizer_impl.h"

namespace mp {

namespace detail {

PostProcessor PostProcessor::from_json(const json& spec, const std::string& what) {
  PostProcessor p;
  if (spec.is_null()) return p;
  std::string type = spec.value("type", std::string());
  auto id_of_pair = [&](const char* key) {
    const json& pair = spec.at(key);
    MP_CHECK(pair.is_array() && pair.size() == 2 && pair[1].is_number_unsigned() && pair[1].get<uint64_t>() < (1u << 31),
             what, ": post_processor.", key, " must be [token, id]");
    return pair[1].get<uint32_t>();
  };
  if (type == "ByteLevel") return p;  // only adjusts offsets
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    p.prefix = {id_of_pair("cls")};
    p.suffix = {id_of_pair("sep")};
    return p;
  }
  if (type == "TemplateProcessing") {
    const json& specials = spec.at("special_tokens");
    bool seen_sequence = false;
    for (const json& item : spec.at("single")) {
      if (item.contains("Sequence")) {
        MP_CHECK(!seen_sequence, what, ": post_processor template has two sequences in \"single\"");
        seen_sequence = true;
        continue;
      }
      MP_CHECK(item.contains("SpecialToken"), what, ": post_processor template item ", item.dump(),
               " is neither a Sequence nor a SpecialToken");
      std::string name = item.at("SpecialToken").at("id").get<std::string>();
      MP_CHECK(specials.contains(name), what, ": post_processor template uses ", json(name).dump(),
               ", which is missing from its special_tokens");
      for (const json& id : specials.at(name).at("ids")) {
        MP_CHECK(id.is_number_unsigned() && id.get<uint64_t>() < (1u << 31), what, ": post_processor special token ",
                 json(name).dump(), " has id ", id.dump(), ", expected a non-negative integer");
        (seen_sequence ? p.suffix : p.prefix).push_back(id.get<uint32_t>());
      }
    }
    return p;
  }
  if (type == "Sequence") {
    for (const json& part : spec.at("processors")) {
      PostProcessor inner = from_json(part, what);
      p.prefix.insert(p.prefix.begin(), inner.prefix.begin(), inner.prefix.end());
      p.suffix.insert(p.suffix.end(), inner.suffix.begin(), inner.suffix.end());
    }
    return p;
  }
  fail(what, ": post_processor type ", json(type).dump(),
       " is not supported (supported: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing, Sequence)");
}

static bool decoder_is_byte_level(const json& spec) {
  if (spec.is_null()) return true;
  std::string type = spec.value("type", std::string());
  if (type == "ByteLevel") return true;
  if (type == "Sequence")
    for (const json& d : spec.at("decoders"))
      if (decoder_is_byte_level(d)) return true;
  return false;
}

void TokenizerImpl::encode_segment(std::string_view text, std::vector<uint32_t>& out) const {
  std::string normalized;
  if (normalizer) {  // normalizers see valid UTF-8; other bytes pass through untouched
    std::string run;
    for_each_utf8_run(
        text,
        [&](size_t b, size_t e) {
          run.assign(text.substr(b, e - b));
          normalizer->normalize(run);
          normalized += run;
        },
        [&](size_t pos) { normalized += text[pos]; });
    text = normalized;
  }
  auto model_encode = [&](std::string_view piece) {
    pre_tokenizer.run(piece, [&](std::string_view word) { model.encode_word(word, out); });
  };
  if (normalized_matcher.empty()) {
    model_encode(text);
    return;
  }
  std::vector<AddedTokenMatcher::Piece> pieces;
  normalized_matcher.split(text, pieces);
  for (auto& p : pieces) {
    if (p.token) out.push_back(p.token->id);
    else model_encode(text.substr(p.begin, p.end - p.begin));
  }
}

void TokenizerImpl::encode(std::string_view text, std::vector<uint32_t>& out) const {
  if (kind == "byte_level") {
    std::vector<AddedTokenMatcher::Piece> pieces;
    raw_matcher.split(text, pieces);
    for (auto& p : pieces) {
      if (p.token) {
        out.push_back(p.token->id);
      } else {
        for (size_t i = p.begin; i < p.end; ++i) out.push_back(static_cast<unsigned char>(text[i]));
      }
    }
    return;
  }
  if (raw_matcher.empty()) {
    encode_segment(text, out);
    return;
  }
  std::vector<AddedTokenMatcher::Piece> pieces;
  raw_matcher.split(text, pieces);
  for (auto& p : pieces) {
    if (p.token) out.push_back(p.token->id);
    else encode_segment(text.substr(p.begin, p.end - p.begin), out);
  }
}

static std::optional<uint32_t> find_eos(const TokenizerImpl& t) {
  static const char* kNames[] = {"<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>",
                                 "<|im_end|>", "<|end|>", "[EOS]"};
  for (const char* name : kNames)
    for (const AddedToken& a : t.added)
      if (a.content == name) return a.id;
  return std::nullopt;
}

static void build_matchers(TokenizerImpl& t) {
  for (AddedToken& a : t.added) {
    a.pattern = a.content;
    if (a.normalized && t.normalizer && !a.content.empty()) t.normalizer->normalize(a.pattern);
  }
  std::vector<const AddedToken*> raw, normalized;
  for (const AddedToken& a : t.added) (a.normalized ? normalized : raw).push_back(&a);
  t.raw_matcher.build(raw);
  t.normalized_matcher.build(normalized);
  for (size_t i = 0; i < t.added.size(); ++i) t.added_by_id.emplace(t.added[i].id, i);
}

}  // namespace detail

using detail::TokenizerImpl;

Tokenizer Tokenizer::from_json_text(const std::string& text, const std::string& what) {
  check_json_nesting(text, what);  // copying/walking nested json recurses: refuse absurd depth up front
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(what, ": not valid JSON (", e.what(), ")");
  }
  MP_CHECK(j.is_object() && j.contains("model"), what, ": not a tokenizer.json (no \"model\" object)");
  auto impl = std::make_shared<TokenizerImpl>();
  impl->kind = "bpe";
  impl->sha256 = sha256_hex(text);
  try {
    impl->model = detail::BpeModel::from_json(j.at("model"), what);
    uint32_t max_id = impl->model.id_to_token.empty() ? 0 : uint32_t(impl->model.id_to_token.size() - 1);
    if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
      for (const json& a : j.at("added_tokens")) {
        detail::AddedToken t;
        MP_CHECK(a.contains("id") && a.at("id").is_number_unsigned() && a.at("id").get<uint64_t>() < (1u << 31) &&
                     a.contains("content") && a.at("content").is_string(),
                 what, ": added token ", a.dump().substr(0, 200), " needs a non-negative \"id\" and a \"content\" string");
        t.id = a.at("id").get<uint32_t>();
        t.content = a.at("content").get<std::string>();
        t.single_word = a.value("single_word", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.normalized = a.value("normalized", !a.value("special", false));
        t.special = a.value("special", false);
        max_id = std::max(max_id, t.id);
        impl->added.push_back(std::move(t));
      }
    }
    impl->vocab_size = max_id + 1;
    impl->normalizer = detail::make_normalizer(j.value("normalizer", json()));
    impl->pre_tokenizer = detail::make_pre_tokenizer(j.value("pre_tokenizer", json()));
    MP_CHECK(impl->pre_tokenizer.has_byte_level, what,
             ": the pre_tokenizer has no ByteLevel step, so this is not a byte-level BPE tokenizer (GPT-2 / "
             "Llama-3 / Nemotron family); SentencePiece-style (Metaspace) tokenizers are not supported");
    MP_CHECK(detail::decoder_is_byte_level(j.value("decoder", json())), what, ": the decoder ",
             j.value("decoder", json()).dump().substr(0, 200), " is not ByteLevel; only byte-level BPE is supported");
    impl->post = detail::PostProcessor::from_json(j.value("post_processor", json()), what);
    for (uint32_t id : impl->post.prefix) MP_CHECK(id <= max_id, what, ": post_processor uses id ", id, " beyond the vocabulary");
    for (uint32_t id : impl->post.suffix) MP_CHECK(id <= max_id, what, ": post_processor uses id ", id, " beyond the vocabulary");
  } catch (const json::exception& e) {
    fail(what, ": malformed tokenizer.json (", e.what(), ")");
  }
  detail::build_matchers(*impl);
  impl->eos = detail::find_eos(*impl);
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  if (path == "byte") return byte_level();
  std::string p = path;
  if (fs::is_directory(p)) p = fs::join(p, "tokenizer.json");
  std::ifstream in(p, std::ios::binary);
  MP_CHECK(in.good(), "cannot read tokenizer ", p,
           ": expected a tokenizer.json file (or a directory holding one), or \"byte\" for the byte-level tokenizer");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return from_json_text(buffer.str(), p);
}

Tokenizer Tokenizer::byte_level(const std::vector<std::string>& special_tokens) {
  auto impl = std::make_shared<TokenizerImpl>();
  impl->kind = "byte_level";
  std::string description = "minipuzzle byte_level tokenizer v1; specials:";
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    MP_CHECK(!special_tokens[i].empty(), "byte-level tokenizer: special token ", i, " is empty");
    detail::AddedToken t;
    t.id = uint32_t(256 + i);
    t.content = special_tokens[i];
    t.special = true;
    impl->added.push_back(t);
    description += " " + json(special_tokens[i]).dump();
  }
  impl->byte_specials = special_tokens;
  impl->vocab_size = uint32_t(256 + special_tokens.size());
  impl->sha256 = sha256_hex(description);
  detail::build_matchers(*impl);
  impl->eos = detail::find_eos(*impl);
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_append(text, out, add_special_tokens);
  return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out, bool add_special_tokens) const {
  if (add_special_tokens) out.insert(out.end(), impl_->post.prefix.begin(), impl_->post.prefix.end());
  impl_->encode(text, out);
  if (add_special_tokens) out.insert(out.end(), impl_->post.suffix.begin(), impl_->post.suffix.end());
}

std::string Tokenizer::decode(const uint32_t* ids, size_t count) const {
  const TokenizerImpl& t = *impl_;
  std::string out;
  const auto& map = detail::ByteLevelMap::get();
  for (size_t i = 0; i < count; ++i) {
    uint32_t id = ids[i];
    MP_CHECK(id < t.vocab_size, "decode: token id ", id, " at position ", i, " is outside the vocabulary (size ",
             t.vocab_size, ")");
    if (auto it = t.added_by_id.find(id); it != t.added_by_id.end()) {
      out += t.added[it->second].pattern;  // a normalized token reads as its normalized text, as in `tokenizers`
      continue;
    }
    if (t.kind == "byte_level") {
      out += char(id);
      continue;
    }
    MP_CHECK(id < t.model.id_to_token.size() && !t.model.id_to_token[id].empty(), "decode: token id ", id,
             " at position ", i, " has no vocabulary entry");
    const std::string& token = t.model.id_to_token[id];
    // Each char of a byte-level token stands for one byte; a token with other chars is kept as its text.
    std::string bytes;
    bool mapped = true;
    for (size_t k = 0; k < token.size() && mapped;) {
      size_t len = detail::utf8_valid_length(token, k);
      auto it = len ? map.char_to_byte.find(detail::utf8_decode(token, k, len)) : map.char_to_byte.end();
      if (it == map.char_to_byte.end()) mapped = false;
      else bytes += char(it->second), k += len;
    }
    out += mapped ? bytes : token;
  }
  return out;
}

uint32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<uint32_t> Tokenizer::token_id(std::string_view token) const {
  const TokenizerImpl& t = *impl_;
  for (const detail::AddedToken& a : t.added)
    if (a.content == token) return a.id;
  if (t.kind == "byte_level") {
    unsigned value;
    char tail;
    if (token.size() == 6 && std::sscanf(std::string(token).c_str(), "<0x%2X%c", &value, &tail) == 2 && tail == '>')
      return value;
    return std::nullopt;
  }
  auto it = t.model.vocab.find(std::string(token));
  if (it == t.model.vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(uint32_t id) const {
  const TokenizerImpl& t = *impl_;
  MP_CHECK(id < t.vocab_size, "token id ", id, " is outside the vocabulary (size ", t.vocab_size, ")");
  if (auto it = t.added_by_id.find(id); it != t.added_by_id.end()) return t.added[it->second].pattern;
  if (t.kind == "byte_level") {
    char name[16];
    std::snprintf(name, sizeof name, "<0x%02X>", id);
    return name;
  }
  return id < t.model.id_to_token.size() ? t.model.id_to_token[id] : std::string();
}

std::optional<uint32_t> Tokenizer::eos_id() const { return impl_->eos; }
const std::string& Tokenizer::kind() const { return impl_->kind; }
const std::string& Tokenizer::sha256() const { return impl_->sha256; }

}  // namespace mp
