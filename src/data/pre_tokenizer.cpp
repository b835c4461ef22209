// Pre-tokenizers of byte-level BPE tokenizers: ByteLevel (optional prefix space, GPT-2 regex), Split (a
// regex or a literal, five delimiter behaviours, invert), Digits and Sequence, following `tokenizers`.
// Regexes need valid UTF-8; bytes that are not become one-byte pieces of their own (`tokenizers` never sees
// such input: Python strings are always valid).
#include "minipuzzle/error.h"
#include "src/data/tokenizer_impl.h"

namespace mp::detail {

namespace {

const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& spec) {
  std::string b = spec.value("behavior", std::string("Isolated"));
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  fail("tokenizer.json: Split behavior ", json(b).dump(),
       " is unknown (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

struct Range {
  size_t begin, end;
  bool is_match;
};

// Applies a delimiter behaviour to ranges that cover a piece (as `tokenizers`' NormalizedString::split).
void apply_behavior(std::string_view piece, std::vector<Range>& ranges, Behavior behavior,
                    const std::function<void(std::string_view)>& emit) {
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case Behavior::Removed:
      for (auto& r : ranges)
        if (!r.is_match) out.emplace_back(r.begin, r.end);
      break;
    case Behavior::Isolated:
      for (auto& r : ranges) out.emplace_back(r.begin, r.end);
      break;
    case Behavior::Contiguous: {
      bool previous_match = false;
      for (auto& r : ranges) {
        if (r.is_match && previous_match && !out.empty())
          out.back().second = r.end;
        else
          out.emplace_back(r.begin, r.end);
        previous_match = r.is_match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool previous_match = false;
      for (auto& r : ranges) {
        if (r.is_match && !previous_match && !out.empty())
          out.back().second = r.end;
        else
          out.emplace_back(r.begin, r.end);
        previous_match = r.is_match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool previous_match = false;
      for (size_t k = ranges.size(); k-- > 0;) {
        const Range& r = ranges[k];
        if (r.is_match && !previous_match && !out.empty())
          out.back().first = r.begin;
        else
          out.emplace_back(r.begin, r.end);
        previous_match = r.is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  for (auto& [b, e] : out)
    if (e > b) emit(piece.substr(b, e - b));
}

// Finds the pattern in valid UTF-8 text, returns ranges covering it (matches flipped when inverted).
using Finder = std::function<void(std::string_view, const std::function<void(size_t, size_t)>&)>;

void split_by(std::string_view piece, const Finder& find, Behavior behavior, bool invert,
              const std::function<void(std::string_view)>& emit) {
  std::vector<Range> ranges;
  auto split_valid = [&](size_t run_begin, size_t run_end) {
    std::string_view run = piece.substr(run_begin, run_end - run_begin);
    ranges.clear();
    size_t prev = 0;
    find(run, [&](size_t b, size_t e) {
      if (prev != b) ranges.push_back({prev, b, invert});
      ranges.push_back({b, e, !invert});
      prev = e;
    });
    if (prev != run.size()) ranges.push_back({prev, run.size(), invert});
    apply_behavior(run, ranges, behavior, emit);
  };
  for_each_utf8_run(piece, split_valid, [&](size_t pos) { emit(piece.substr(pos, 1)); });
}

class SplitStep : public PreTokenizerStep {
 public:
  SplitStep(const json& spec) : behavior_(parse_behavior(spec)), invert_(spec.value("invert", false)) {
    const json& pattern = spec.at("pattern");
    if (pattern.contains("Regex")) {
      regex_ = std::make_unique<Regex>(pattern.at("Regex").get<std::string>());
    } else if (pattern.contains("String")) {
      literal_ = pattern.at("String").get<std::string>();
    } else {
      fail("tokenizer.json: Split pattern must be {\"Regex\": ...} or {\"String\": ...}, found ", pattern.dump());
    }
  }
  void split(std::string_view piece, const std::function<void(std::string_view)>& emit) const override {
    if (regex_) {
      split_by(piece, [&](std::string_view s, auto& on) { regex_->for_each_match(s, on); }, behavior_, invert_, emit);
    } else {
      split_by(piece, [&](std::string_view s, auto& on) { find_literal(s, on); }, behavior_, invert_, emit);
    }
  }

 private:
  void find_literal(std::string_view s, const std::function<void(size_t, size_t)>& on) const {
    if (literal_.empty()) return;
    for (size_t pos = s.find(literal_); pos != std::string_view::npos; pos = s.find(literal_, pos + literal_.size()))
      on(pos, pos + literal_.size());
  }
  Behavior behavior_;
  bool invert_;
  std::unique_ptr<Regex> regex_;
  std::string literal_;
};

class ByteLevelStep : public PreTokenizerStep {
 public:
  ByteLevelStep(const json& spec)
      : add_prefix_space_(spec.value("add_prefix_space", true)), use_regex_(spec.value("use_regex", true)) {
    if (use_regex_) regex_ = std::make_unique<Regex>(kGpt2Pattern);
  }
  void split(std::string_view piece, const std::function<void(std::string_view)>& emit) const override {
    std::string prefixed;
    if (add_prefix_space_ && piece.front() != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed += ' ';
      prefixed += piece;
      piece = prefixed;
    }
    if (!use_regex_) {
      emit(piece);
      return;
    }
    split_by(piece, [&](std::string_view s, auto& on) { regex_->for_each_match(s, on); }, Behavior::Isolated, false,
             emit);
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> regex_;
};

class DigitsStep : public PreTokenizerStep {
 public:
  DigitsStep(const json& spec)
      : individual_(spec.value("individual_digits", false)), regex_(individual_ ? "\\p{N}" : "\\p{N}+") {}
  void split(std::string_view piece, const std::function<void(std::string_view)>& emit) const override {
    split_by(piece, [&](std::string_view s, auto& on) { regex_.for_each_match(s, on); },
             individual_ ? Behavior::Isolated : Behavior::Contiguous, false, emit);
  }

 private:
  bool individual_;
  Regex regex_;
};

void add_steps(const json& spec, PreTokenizer& out) {
  MP_CHECK(spec.is_object() && spec.contains("type"), "tokenizer.json: a pre_tokenizer must be an object with a type, found ",
           spec.dump().substr(0, 200));
  std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const json& s : spec.at("pretokenizers")) add_steps(s, out);
  } else if (type == "ByteLevel") {
    out.steps.push_back(std::make_unique<ByteLevelStep>(spec));
    out.has_byte_level = true;
  } else if (type == "Split") {
    out.steps.push_back(std::make_unique<SplitStep>(spec));
  } else if (type == "Digits") {
    out.steps.push_back(std::make_unique<DigitsStep>(spec));
  } else {
    fail("tokenizer.json: pre_tokenizer type ", json(type).dump(),
         " is not supported (supported: ByteLevel, Split, Digits, Sequence; minipuzzle reads byte-level BPE "
         "tokenizers such as GPT-2, Llama-3 and Nemotron)");
  }
}

void run_from(const PreTokenizer& p, size_t step, std::string_view piece, const PieceSink& sink) {
  if (piece.empty()) return;
  if (step == p.steps.size()) {
    sink(piece);
    return;
  }
  p.steps[step]->split(piece, [&](std::string_view sub) { run_from(p, step + 1, sub, sink); });
}

}  // namespace

void PreTokenizer::run(std::string_view text, const PieceSink& sink) const { run_from(*this, 0, text, sink); }

PreTokenizer make_pre_tokenizer(const json& spec) {
  PreTokenizer p;
  if (!spec.is_null()) add_steps(spec, p);
  return p;
}

}  // namespace mp::detail
