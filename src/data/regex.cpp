// PCRE2 regexes for pre-tokenizer patterns. `tokenizers` compiles its patterns with Oniguruma; PCRE2 in UTF
// + UCP mode agrees on \p{L}, \p{N}, (?i:) and lookahead, and differs only on \s (Oniguruma's \s is the
// Unicode White_Space property, which PCRE2's lacks U+0085 from), so \s/\S are rewritten to that class.
#include "minipuzzle/error.h"
#include "src/data/tokenizer_impl.h"

#ifdef MINIPUZZLE_WITH_PCRE2
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif

namespace mp::detail {

static const char* kWhiteSpaceClass =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";

std::string onig_to_pcre2(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : "[" + std::string(kWhiteSpaceClass) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceClass) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

#ifdef MINIPUZZLE_WITH_PCRE2
namespace {
// Per-thread JIT stack and match context: PCRE2's are not shareable between concurrent matches.
struct ThreadMatchState {
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchState() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    if (stack) pcre2_jit_stack_free(stack);
    if (context) pcre2_match_context_free(context);
  }
};
ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}
struct MatchData {
  pcre2_match_data* data;
  explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {
    MP_CHECK(data != nullptr, "out of memory creating a PCRE2 match block");
  }
  ~MatchData() { pcre2_match_data_free(data); }
};
}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  std::string translated = onig_to_pcre2(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail("pre-tokenizer regex ", json(pattern).dump(), " does not compile with PCRE2 at offset ", offset, ": ",
         reinterpret_cast<const char*>(message), " (tokenizers uses Oniguruma syntax; PCRE2 accepts most of it)");
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_match(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const {
  auto* code = static_cast<pcre2_code*>(code_);
  MatchData md(code);
  ThreadMatchState& state = thread_match_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0, n = text.size();
  while (start <= n) {
    int rc = jit_ ? pcre2_jit_match(code, subject, n, start, 0, md.data, state.context)
                  : pcre2_match(code, subject, n, start, PCRE2_NO_UTF_CHECK, md.data, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail("pre-tokenizer regex ", json(pattern_).dump(), " failed on a ", n, "-byte piece: ",
           reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
    size_t b = ov[0], e = ov[1];
    on_match(b, e);
    if (e > b) {
      start = e;
    } else {  // empty match: step over one character so the search moves on
      if (e >= n) return;
      size_t len = utf8_valid_length(text, e);
      start = e + (len ? len : 1);
    }
  }
}

#else  // no PCRE2 in this build

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  fail("pre-tokenizer regex ", json(pattern).dump(), " cannot be used: this build of minipuzzle has no PCRE2; ",
       "install libpcre2-dev and rebuild (only the byte-level tokenizer works without it)");
}
Regex::~Regex() = default;
void Regex::for_each_match(std::string_view, const std::function<void(size_t, size_t)>&) const {}

#endif

bool unicode_is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
#ifndef MINIPUZZLE_WITH_PCRE2
  return false;  // unreachable in practice: tokenizer.json tokenizers cannot load without PCRE2
#endif
  static const Regex alnum("^[\\p{L}\\p{M}\\p{N}\\p{Pc}\\x{200C}\\x{200D}]");
  std::string s;
  utf8_append(s, c);
  bool found = false;
  alnum.for_each_match(s, [&](size_t, size_t) { found = true; });
  return found;
}

}  // namespace mp::detail
