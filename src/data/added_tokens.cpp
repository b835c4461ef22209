// Added and special tokens are found before anything else touches the text, as in `tokenizers`: a
// leftmost-longest match over all token strings (a byte trie; the search resumes after each match), then
// the token's single_word / lstrip / rstrip options decide whether it counts and how much whitespace it eats.
#include "minipuzzle/error.h"
#include "src/data/tokenizer_impl.h"

namespace mp::detail {

namespace {
// The character ending at `pos` (its start in *start), or nothing when the bytes there are not valid UTF-8.
std::optional<char32_t> char_before(std::string_view s, size_t pos, size_t* start) {
  if (pos == 0) return std::nullopt;
  size_t b = pos - 1;
  while (b > 0 && pos - b < 4 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  size_t len = utf8_valid_length(s, b);
  if (len != pos - b) return std::nullopt;
  *start = b;
  return utf8_decode(s, b, len);
}
std::optional<char32_t> char_at(std::string_view s, size_t pos, size_t* len_out) {
  if (pos >= s.size()) return std::nullopt;
  size_t len = utf8_valid_length(s, pos);
  if (len == 0) return std::nullopt;
  *len_out = len;
  return utf8_decode(s, pos, len);
}
bool ends_with_word(std::string_view s, size_t pos) {
  size_t start;
  auto c = char_before(s, pos, &start);
  return c && unicode_is_word_char(*c);
}
bool starts_with_word(std::string_view s, size_t pos) {
  size_t len;
  auto c = char_at(s, pos, &len);
  return c && unicode_is_word_char(*c);
}
// Start of the whitespace run that ends at `pos`.
size_t whitespace_start_before(std::string_view s, size_t pos) {
  size_t start;
  while (auto c = char_before(s, pos, &start)) {
    if (!unicode_is_whitespace(*c)) break;
    pos = start;
  }
  return pos;
}
// End of the whitespace run that starts at `pos`.
size_t whitespace_end_after(std::string_view s, size_t pos) {
  size_t len;
  while (auto c = char_at(s, pos, &len)) {
    if (!unicode_is_whitespace(*c)) break;
    pos += len;
  }
  return pos;
}
}  // namespace

void AddedTokenMatcher::build(const std::vector<const AddedToken*>& tokens) {
  tokens_.clear();
  nodes_.assign(1, Node());
  first_byte_.fill(false);
  for (const AddedToken* t : tokens) {
    if (t->pattern.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : t->pattern) {
      auto it = nodes_[node].next.find(c);
      if (it == nodes_[node].next.end()) {
        int32_t fresh = int32_t(nodes_.size());
        nodes_[node].next[c] = fresh;
        nodes_.emplace_back();
        node = fresh;
      } else {
        node = it->second;
      }
    }
    if (nodes_[node].token < 0) {  // the same pattern twice: the first wins
      nodes_[node].token = int32_t(tokens_.size());
      tokens_.push_back(t);
    }
    first_byte_[static_cast<unsigned char>(t->pattern[0])] = true;
  }
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Piece>& out) const {
  out.clear();
  size_t start_offset = 0, pos = 0, n = text.size();
  while (pos < n) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest token starting at pos.
    int32_t node = 0, found = -1;
    size_t found_end = 0;
    for (size_t k = pos; k < n; ++k) {
      auto it = nodes_[node].next.find(static_cast<unsigned char>(text[k]));
      if (it == nodes_[node].next.end()) break;
      node = it->second;
      if (nodes_[node].token >= 0) found = nodes_[node].token, found_end = k + 1;
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken* token = tokens_[found];
    size_t start = pos, stop = found_end;
    pos = found_end;  // the search resumes after the match, whatever the options below decide
    if (token->single_word) {
      bool start_space = start == 0 || !ends_with_word(text, start);
      bool stop_space = stop == n || !starts_with_word(text, stop);
      if (!start_space || !stop_space) continue;
    }
    if (token->lstrip) start = std::max(whitespace_start_before(text, start), start_offset);
    if (token->rstrip) stop = whitespace_end_after(text, stop);
    if (start_offset < start) out.push_back({nullptr, start_offset, start});
    out.push_back({token, start, stop});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back({nullptr, start_offset, n});
}

}  // namespace mp::detail
