// Normalizers. Byte-level BPE tokenizers (GPT-2, Llama-3, Nemotron) usually have none; some carry NFC.
// Unicode normal forms and lowercasing need Unicode tables, taken from ICU when the build found it
// (MINIPUZZLE_WITH_ICU); without ICU such a tokenizer is refused at load time with a clear message rather
// than encoded differently from `tokenizers`.
#include "minipuzzle/error.h"
#include "src/data/tokenizer_impl.h"

#ifdef MINIPUZZLE_WITH_ICU
#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/normalizer2.h>
#endif

namespace mp::detail {

bool normalizers_available() {
#ifdef MINIPUZZLE_WITH_ICU
  return true;
#else
  return false;
#endif
}

namespace {

#ifdef MINIPUZZLE_WITH_ICU
class UnicodeNormalForm : public Normalizer {
 public:
  explicit UnicodeNormalForm(const std::string& form) : form_(form) {
    UErrorCode status = U_ZERO_ERROR;
    if (form == "NFC") norm_ = icu::Normalizer2::getNFCInstance(status);
    else if (form == "NFD") norm_ = icu::Normalizer2::getNFDInstance(status);
    else if (form == "NFKC") norm_ = icu::Normalizer2::getNFKCInstance(status);
    else norm_ = icu::Normalizer2::getNFKDInstance(status);
    MP_CHECK(U_SUCCESS(status) && norm_, "ICU could not provide the ", form, " normalizer: ", u_errorName(status));
  }
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    icu::StringByteSink<std::string> sink(&out);
    UErrorCode status = U_ZERO_ERROR;
    norm_->normalizeUTF8(0, icu::StringPiece(text.data(), int32_t(text.size())), sink, nullptr, status);
    MP_CHECK(U_SUCCESS(status), form_, " normalization failed: ", u_errorName(status));
    text.swap(out);
  }

 private:
  std::string form_;
  const icu::Normalizer2* norm_ = nullptr;
};

class Lowercase : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    icu::StringByteSink<std::string> sink(&out);
    UErrorCode status = U_ZERO_ERROR;
    icu::CaseMap::utf8ToLower("", 0, icu::StringPiece(text.data(), int32_t(text.size())), sink, nullptr, status);
    MP_CHECK(U_SUCCESS(status), "lowercasing failed: ", u_errorName(status));
    text.swap(out);
  }
};
#endif

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class Replace : public Normalizer {
 public:
  explicit Replace(const json& spec) : content_(spec.at("content").get<std::string>()) {
    const json& pattern = spec.at("pattern");
    if (pattern.contains("Regex")) regex_ = std::make_unique<Regex>(pattern.at("Regex").get<std::string>());
    else literal_ = pattern.at("String").get<std::string>();
  }
  void normalize(std::string& text) const override {
    std::string out;
    size_t prev = 0;
    auto on = [&](size_t b, size_t e) {
      out.append(text, prev, b - prev);
      out += content_;
      prev = e;
    };
    if (regex_) {
      regex_->for_each_match(text, on);
    } else if (!literal_.empty()) {
      for (size_t p = text.find(literal_); p != std::string::npos; p = text.find(literal_, p + literal_.size()))
        on(p, p + literal_.size());
    }
    out.append(text, prev, std::string::npos);
    text.swap(out);
  }

 private:
  std::string content_, literal_;
  std::unique_ptr<Regex> regex_;
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t b = 0, e = text.size();
    if (left_) {
      while (b < e) {
        size_t len = utf8_valid_length(text, b);
        if (!len || !unicode_is_whitespace(utf8_decode(text, b, len))) break;
        b += len;
      }
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
        size_t len = utf8_valid_length(text, s);
        if (len != e - s || !unicode_is_whitespace(utf8_decode(text, s, len))) break;
        e = s;
      }
    }
    text = text.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class Sequence : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& text) const override {
    for (auto& p : parts) p->normalize(text);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  MP_CHECK(spec.is_object() && spec.contains("type"), "tokenizer.json: normalizer must be null or an object with a type");
  std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    auto seq = std::make_unique<Sequence>();
    for (const json& part : spec.at("normalizers"))
      if (auto n = make_normalizer(part)) seq->parts.push_back(std::move(n));
    return seq;
  }
  if (type == "Prepend") return std::make_unique<Prepend>(spec.at("prepend").get<std::string>());
  if (type == "Replace") return std::make_unique<Replace>(spec);
  if (type == "Strip") return std::make_unique<Strip>(spec.value("strip_left", true), spec.value("strip_right", true));
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD" || type == "Lowercase") {
#ifdef MINIPUZZLE_WITH_ICU
    if (type == "Lowercase") return std::make_unique<Lowercase>();
    return std::make_unique<UnicodeNormalForm>(type);
#else
    fail("tokenizer.json: the ", type, " normalizer needs Unicode tables, and this build of minipuzzle has no ICU; "
         "install libicu-dev and rebuild (CMake finds it with pkg-config icu-uc)");
#endif
  }
  fail("tokenizer.json: normalizer type ", json(type).dump(),
       " is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, Sequence)");
}

}  // namespace mp::detail
