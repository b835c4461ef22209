// The one resolver of data arguments (format and rules in include/minipuzzle/data_input.h). Every kind of
// input ends as a TokenFile (32-bit ids + document offsets) whose ids are below the model's vocabulary, so the
// commands behind it never see a file kind.
#include "minipuzzle/data_input.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/json.h"
#include "minipuzzle/tokenizer.h"
#include "src/data/tokenizer_impl.h"

namespace mp {

namespace {

constexpr const char* kFormats[] = {"auto", "tokens", "megatron", "npy", "text", "u16", "u32", "u64", "i32", "i64"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A read-only mapping of a whole file (empty files map to nothing).
struct MappedFile {
  std::shared_ptr<const void> storage;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

MappedFile map_file(const std::string& path, const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd >= 0, what, ": cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(what, ": ", path, " is not a readable regular file");
  }
  MappedFile m;
  m.size = uint64_t(st.st_size);
  if (m.size > 0) {
    void* p = mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    MP_CHECK(p != MAP_FAILED, what, ": cannot map ", path, ": ", std::strerror(errno));
    const uint64_t n = m.size;
    m.storage = std::shared_ptr<const void>(p, [n](const void* q) { munmap(const_cast<void*>(q), n); });
    m.data = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  return m;
}

uint64_t load_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// One element type of an id array: how many bytes, signed or not, integer or IEEE float, byte order.
struct IdType {
  int size = 4;
  bool is_signed = false, is_float = false, big_endian = false;
  const char* name = "uint32";
};

// Appends n ids of type t from p (any alignment) to out, each checked to be a whole number in [0, vocab).
// `first` is the position of p[0] in the whole input, for messages.
void append_ids(const uint8_t* p, uint64_t n, const IdType& t, uint64_t vocab, uint64_t first,
                std::vector<uint32_t>& out, const std::string& what) {
  out.reserve(out.size() + n);
  for (uint64_t i = 0; i < n; ++i, p += t.size) {
    uint64_t bits = 0;
    if (t.big_endian) {
      for (int b = 0; b < t.size; ++b) bits = (bits << 8) | p[b];
    } else {
      bits = load_le(p, t.size);
    }
    double as_float = 0;
    bool ok;
    uint64_t id = 0;
    if (t.is_float) {
      if (t.size == 4) {
        uint32_t b32 = uint32_t(bits);
        float f;
        std::memcpy(&f, &b32, 4);
        as_float = f;
      } else {
        std::memcpy(&as_float, &bits, 8);
      }
      ok = std::isfinite(as_float) && as_float >= 0 && as_float < double(vocab) && std::floor(as_float) == as_float;
      id = ok ? uint64_t(as_float) : 0;
      if (!ok)
        fail(what, ": id ", first + i, " is ", as_float, ", not a whole number from 0 to ", vocab - 1,
             " (the model's vocabulary has ", vocab, " entries)");
    } else {
      const bool negative = t.is_signed && t.size < 8 ? (bits >> (8 * t.size - 1)) & 1 : t.is_signed && (bits >> 63);
      if (negative) fail(what, ": id ", first + i, " is negative (", t.name, "); ids are from 0 to ", vocab - 1);
      id = bits;
      if (id >= vocab)
        fail(what, ": id ", first + i, " is ", id, ", not below the model's vocabulary size ", vocab,
             " (a file of another tokenizer, or the wrong --data-format?)");
    }
    out.push_back(uint32_t(id));
  }
}

IdType megatron_type(int code) {
  switch (code) {
    case 1: return {1, false, false, false, "uint8"};
    case 2: return {1, true, false, false, "int8"};
    case 3: return {2, true, false, false, "int16"};
    case 4: return {4, true, false, false, "int32"};
    case 5: return {8, true, false, false, "int64"};
    case 6: return {8, false, true, false, "float64"};
    case 7: return {4, false, true, false, "float32"};
    case 8: return {2, false, false, false, "uint16"};
    default: return {0, false, false, false, "?"};
  }
}

IdType raw_type(const std::string& format) {
  if (format == "u16") return {2, false, false, false, "uint16"};
  if (format == "u32") return {4, false, false, false, "uint32"};
  if (format == "u64") return {8, false, false, false, "uint64"};
  if (format == "i32") return {4, true, false, false, "int32"};
  return {8, true, false, false, "int64"};  // i64
}

std::string refusal(const DataInputOptions& o, const std::string& path, const std::string& why) {
  return o.option + " " + path + ": " + why + "; accepted: " + data_formats_help();
}

TokenFileMetadata id_metadata(const std::string& kind, const std::string& path, const DataInputOptions& o) {
  TokenFileMetadata meta;
  meta.tokenizer_kind = kind;
  meta.vocab_size = uint32_t(o.vocab_size);
  meta.sources = {path};
  return meta;
}

void need_vocab(const DataInputOptions& o, const std::string& path, const char* kind) {
  MP_CHECK(o.vocab_size > 0 && o.vocab_size <= UINT32_MAX, o.option, " ", path, ": ", kind,
           " carry no vocabulary, so they are read only where the model's vocabulary size is known");
}

// ---- the kinds ----

TokenFile open_token_file(const std::string& path, const DataInputOptions& o) {
  TokenFile f = TokenFile::open(path);
  if (o.tokenizer != nullptr)
    MP_CHECK(f.metadata().tokenizer_sha256 == o.tokenizer->sha256(), path, " was tokenized with a different tokenizer (",
             f.metadata().tokenizer_kind, " ", f.metadata().tokenizer_path, ", sha256 ",
             f.metadata().tokenizer_sha256.substr(0, 12), "...) than the one given (", o.tokenizer->kind(), ", sha256 ",
             o.tokenizer->sha256().substr(0, 12), "...); re-run `minipuzzle data` with the model's tokenizer");
  MP_CHECK(o.vocab_size == 0 || f.vocab_size() <= o.vocab_size, o.option, " ", path, ": token ids go up to vocab_size ",
           f.vocab_size(), " but the model's vocabulary has ", o.vocab_size, " entries");
  return f;
}

TokenFile open_text(const std::string& path, const DataInputOptions& o) {
  std::string text = fs::read_file(path);
  const void* nul = std::memchr(text.data(), 0, text.size());
  if (nul != nullptr)
    fail(refusal(o, path, "not a token file, and not text: it holds a NUL byte at offset " +
                              std::to_string(static_cast<const char*>(nul) - text.data()) +
                              " (ids? name their width with --data-format)"));
  for (size_t i = 0; i < text.size();) {
    size_t n = detail::utf8_valid_length(text, i);
    if (n == 0)
      fail(refusal(o, path, "not a token file, and not UTF-8 text: invalid UTF-8 at byte offset " + std::to_string(i)));
    i += n;
  }
  Tokenizer fallback = Tokenizer::byte_level();
  const Tokenizer& tok = o.tokenizer ? *o.tokenizer : fallback;
  TokenFileMetadata meta;
  meta.tokenizer_kind = tok.kind();
  meta.tokenizer_sha256 = tok.sha256();
  meta.vocab_size = tok.vocab_size();
  meta.eos_id = tok.eos_id();
  meta.sources = {path};
  std::vector<uint32_t> ids = tok.encode(text);
  if (o.vocab_size > 0)
    for (size_t i = 0; i < ids.size(); ++i)
      MP_CHECK(ids[i] < o.vocab_size, o.option, " ", path, ": token ", i, " of the text is id ", ids[i],
               ", outside the model's vocabulary (", o.vocab_size, "); give the model's tokenizer with --tokenizer");
  const uint64_t n = ids.size();
  return TokenFile::from_ids(std::move(ids), {0, n}, meta, path);
}

TokenFile open_raw(const std::string& path, const DataInputOptions& o) {
  need_vocab(o, path, "raw id files");
  const IdType t = raw_type(o.format);
  MappedFile m = map_file(path, o.option);
  MP_CHECK(m.size % t.size == 0, o.option, " ", path, ": ", m.size, " bytes is not a whole number of ", t.name,
           " ids (--data-format ", o.format, ")");
  std::vector<uint32_t> ids;
  append_ids(m.data, m.size / t.size, t, o.vocab_size, 0, ids, o.option + " " + path);
  const uint64_t n = ids.size();
  return TokenFile::from_ids(std::move(ids), {0, n}, id_metadata("raw_" + o.format, path, o), path);
}

TokenFile open_npy(const std::string& path, const DataInputOptions& o) {
  need_vocab(o, path, ".npy id arrays");
  MappedFile m = map_file(path, o.option);
  const std::string what = o.option + " " + path;
  NpyHeader h = parse_npy_header(m.data, m.size, m.size, what);
  IdType t{h.item_size, h.kind == 'i', false, h.big_endian, h.kind == 'i' ? "signed integer" : "unsigned integer"};
  std::vector<uint32_t> ids;
  append_ids(m.data + h.data_offset, h.count, t, o.vocab_size, 0, ids, what);
  const uint64_t n = ids.size();
  return TokenFile::from_ids(std::move(ids), {0, n}, id_metadata("npy", path, o), path);
}

TokenFile open_megatron(const std::string& prefix, const DataInputOptions& o) {
  need_vocab(o, prefix, "Megatron indexed datasets");
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  MappedFile idx = map_file(idx_path, o.option);
  MappedFile bin = map_file(bin_path, o.option);
  MegatronIndex index = parse_megatron_index(idx.data, idx.size, bin.size, o.option + " " + idx_path);
  const IdType t = megatron_type(index.dtype_code);
  std::vector<uint32_t> ids;
  std::vector<uint64_t> offsets{0};
  const std::string what = o.option + " " + bin_path;
  for (size_t d = 0; d + 1 < index.document_indices.size(); ++d) {
    for (int64_t s = index.document_indices[d]; s < index.document_indices[d + 1]; ++s)
      append_ids(bin.data + index.sequence_pointers[s], uint64_t(index.sequence_lengths[s]), t, o.vocab_size,
                 uint64_t(index.sequence_pointers[s]) / t.size, ids, what);
    offsets.push_back(ids.size());
  }
  return TokenFile::from_ids(std::move(ids), std::move(offsets), id_metadata("megatron", prefix, o), prefix);
}

// The Megatron prefix `path` names (PREFIX, PREFIX.bin or PREFIX.idx), or "" when it names none.
std::string megatron_prefix(const std::string& path) {
  for (const std::string& base :
       {path, ends_with(path, ".bin") || ends_with(path, ".idx") ? path.substr(0, path.size() - 4) : std::string()})
    if (!base.empty() && fs::is_regular_file(base + ".idx") && fs::is_regular_file(base + ".bin")) return base;
  return "";
}

bool has_npy_magic(const std::string& path) {
  std::string head;
  if (fs::is_regular_file(path)) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f) {
      char buf[6];
      size_t n = std::fread(buf, 1, 6, f);
      std::fclose(f);
      head.assign(buf, n);
    }
  }
  return head == std::string("\x93NUMPY", 6);
}

TokenFile open_one(const std::string& path, const DataInputOptions& o) {
  const std::string& f = o.format;
  if (f == "tokens") return open_token_file(path, o);
  if (f == "megatron") {
    std::string prefix = megatron_prefix(path);
    MP_CHECK(!prefix.empty(), o.option, " ", path, ": --data-format megatron needs PREFIX.bin and PREFIX.idx");
    return open_megatron(prefix, o);
  }
  if (f == "npy") return open_npy(path, o);
  if (f == "text") return open_text(path, o);
  if (f != "auto") return open_raw(path, o);
  if (is_token_file(path)) return open_token_file(path, o);
  std::string prefix = megatron_prefix(path);
  if (!prefix.empty()) return open_megatron(prefix, o);
  MP_CHECK(fs::is_regular_file(path), refusal(o, path, "no such file"));
  if (ends_with(path, ".npy") || has_npy_magic(path)) return open_npy(path, o);
  return open_text(path, o);
}

// "W1 SRC1 W2 SRC2 ..." -> pairs, or empty when `spec` is not of that form.
std::vector<std::pair<double, std::string>> parse_blend(const std::string& spec) {
  std::istringstream in(spec);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  std::vector<std::pair<double, std::string>> out;
  if (words.size() < 2 || words.size() % 2 != 0) return {};
  for (size_t i = 0; i < words.size(); i += 2) {
    char* end = nullptr;
    errno = 0;
    double w = std::strtod(words[i].c_str(), &end);
    if (end == words[i].c_str() || *end != '\0' || errno != 0) return {};
    out.emplace_back(w, words[i + 1]);
  }
  return out;
}

TokenFile open_blend(const std::string& spec, const std::vector<std::pair<double, std::string>>& parts,
                     const DataInputOptions& o) {
  double total_weight = 0;
  for (const auto& [w, p] : parts) {
    MP_CHECK(std::isfinite(w) && w > 0, o.option, " \"", spec, "\": blend weight ", w, " of ", p,
             " must be a positive number");
    total_weight += w;
  }
  std::vector<TokenFile> files;
  std::vector<double> share;
  uint64_t total_tokens = 0;
  for (const auto& [w, p] : parts) {
    files.push_back(open_one(p, o));
    MP_CHECK(files.back().num_tokens() > 0, o.option, " ", p, ": a blended source holds no tokens");
    share.push_back(w / total_weight);
    total_tokens += files.back().num_tokens();
  }
  // Greedy: the next document comes from the source whose token count is furthest below its share.
  std::vector<uint32_t> ids;
  std::vector<uint64_t> offsets{0};
  std::vector<uint64_t> taken(files.size(), 0), next_doc(files.size(), 0);
  while (ids.size() < total_tokens) {
    size_t best = 0;
    double best_gap = -1e300;
    for (size_t i = 0; i < files.size(); ++i) {
      double gap = share[i] * double(ids.size() + 1) - double(taken[i]);
      if (gap > best_gap) best_gap = gap, best = i;
    }
    TokenFile& f = files[best];
    uint64_t& d = next_doc[best];
    if (d == f.num_documents()) d = 0;
    TokenSpan doc = f.document(d++);
    ids.insert(ids.end(), doc.begin(), doc.end());
    offsets.push_back(ids.size());
    taken[best] += doc.size;  // an empty document adds nothing; the source's next one follows
  }
  TokenFileMetadata meta = files[0].metadata();
  meta.vocab_size = 0;
  meta.sources.clear();
  for (const TokenFile& f : files) {
    meta.vocab_size = std::max(meta.vocab_size, f.vocab_size());
    meta.sources.push_back(f.path());
  }
  meta.tokenizer_kind = "blend";
  return TokenFile::from_ids(std::move(ids), std::move(offsets), meta, spec);
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_for_data(const std::string& explicit_path,
                                              const std::vector<std::string>& directories) {
  std::string path = explicit_path;
  for (size_t i = 0; path.empty() && i < directories.size(); ++i)
    if (!directories[i].empty() && fs::is_regular_file(fs::join(directories[i], "tokenizer.json")))
      path = fs::join(directories[i], "tokenizer.json");
  if (path.empty() || path == "byte") return nullptr;
  return std::make_unique<Tokenizer>(Tokenizer::from_file(path));
}

std::string parent_directory(const std::string& path) {
  if (path.empty()) return "";
  std::string p = fs::parent(path);
  return p.empty() ? "." : p;
}

std::string data_formats_help() {
  return "token files from `minipuzzle data` (NAME.tokens + NAME.index + NAME.json), Megatron indexed datasets "
         "(PREFIX.bin + PREFIX.idx), NumPy .npy 1-D integer arrays, UTF-8 text, raw ids with --data-format "
         "u16|u32|u64|i32|i64, or a blend \"W1 SRC1 W2 SRC2 ...\"";
}

bool is_data_format(const std::string& format) {
  for (const char* f : kFormats)
    if (format == f) return true;
  return false;
}

TokenFile open_data(const std::string& spec, const DataInputOptions& options) {
  MP_CHECK(is_data_format(options.format), "--data-format must be one of auto, tokens, megatron, npy, text, u16, u32, ",
           "u64, i32, i64; found \"", options.format, "\"");
  MP_CHECK(!spec.empty(), options.option, " is empty; accepted: ", data_formats_help());
  // A blend only when the words do not name an existing file (a path may hold spaces).
  if (spec.find_first_of(" \t\n") != std::string::npos && !fs::exists(spec) && !is_token_file(spec) &&
      megatron_prefix(spec).empty()) {
    auto parts = parse_blend(spec);
    MP_CHECK(!parts.empty(), options.option, " \"", spec, "\": neither a file nor a blend \"W1 SRC1 W2 SRC2 ...\"");
    return open_blend(spec, parts, options);
  }
  return open_one(spec, options);
}

// ---- next-line task ----

namespace {

uint64_t mix(uint64_t x) {  // splitmix64 of x: a fixed, portable draw
  uint64_t z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool good_line(const std::string& line) {
  if (line.size() < 20 || line.size() > 100) return false;
  int letters = 0;
  for (size_t i = 0; i < line.size();) {
    size_t n = detail::utf8_valid_length(line, i);
    if (n == 0 || line[i] == '\t') return false;
    if (n == 1 && std::isalpha(static_cast<unsigned char>(line[i]))) ++letters;
    i += n;
  }
  return letters >= 8;
}

}  // namespace

std::string make_next_line_task(const TokenFile& file, const Tokenizer* tokenizer, const NextLineTaskOptions& o) {
  MP_CHECK(o.questions > 0 && o.fewshot >= 0 && o.choices >= 2, "next-line task: need questions > 0, fewshot >= 0 ",
           "and choices >= 2");
  Tokenizer fallback = Tokenizer::byte_level();
  const Tokenizer& tok = tokenizer ? *tokenizer : fallback;
  const std::optional<uint32_t> eos = file.eos_id();
  // Every qualifying line (document, text), and every position whose two previous lines also qualify.
  struct Line {
    uint64_t doc;
    std::string text;
    bool follows_two;  // the two lines before it, in the same document, qualify too
  };
  std::vector<Line> lines;
  std::vector<size_t> candidates;
  for (uint64_t d = 0; d < file.num_documents(); ++d) {
    TokenSpan span = file.document(d);
    std::vector<uint32_t> ids;
    for (uint32_t id : span)
      if (!eos || id != *eos) ids.push_back(id);
    const std::string text = tok.decode(ids);
    int run = 0;
    size_t start = 0;
    while (start <= text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(start, end - start);
      while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.pop_back();
      if (good_line(line)) {
        lines.push_back({d, line, run >= 2});
        if (run >= 2) candidates.push_back(lines.size() - 1);
        ++run;
      } else {
        run = 0;
      }
      start = end + 1;
    }
  }
  const int64_t wanted = o.questions + o.fewshot;
  MP_CHECK(int64_t(candidates.size()) >= wanted && lines.size() >= size_t(4 * o.choices), "next-line task: ",
           file.path(), " has ", candidates.size(), " lines that follow two others, fewer than the ", wanted,
           " questions asked for");
  // A seeded Fisher-Yates shuffle of the candidates; the first `wanted` become questions.
  for (size_t i = candidates.size() - 1; i > 0; --i)
    std::swap(candidates[i], candidates[mix(o.seed * 1000003 + i) % (i + 1)]);
  std::string out;
  for (int64_t q = 0; q < wanted; ++q) {
    const size_t at = candidates[size_t(q)];
    const Line& right = lines[at];
    std::vector<std::string> choices{right.text};
    for (uint64_t draw = 0; int64_t(choices.size()) < o.choices; ++draw) {
      MP_CHECK(draw < 100000, "next-line task: ", file.path(), " has too few distinct lines in other documents");
      const Line& other = lines[mix(mix(o.seed + 7) + uint64_t(q) * 7919 + draw) % lines.size()];
      if (other.doc == right.doc || std::find(choices.begin(), choices.end(), other.text) != choices.end()) continue;
      choices.push_back(other.text);
    }
    const int64_t slot = int64_t(mix(o.seed * 31 + uint64_t(q)) % uint64_t(o.choices));
    std::swap(choices[0], choices[size_t(slot)]);
    json row{{"context", lines[at - 2].text + "\n" + lines[at - 1].text + "\n"}, {"choices", choices},
             {"answer", slot}};
    if (q < o.fewshot) row["fewshot"] = true;
    out += row.dump() + "\n";
  }
  return out;
}

// ---- Megatron index ----

MegatronIndex parse_megatron_index(const uint8_t* data, uint64_t size, uint64_t bin_size, const std::string& what) {
  static const uint8_t kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
  constexpr uint64_t kHeader = 9 + 8 + 1 + 8 + 8;
  MP_CHECK(size >= kHeader, what, ": ", size, " bytes, shorter than the ", kHeader,
           "-byte header of a Megatron index (truncated?)");
  MP_CHECK(std::memcmp(data, kMagic, 9) == 0, what, ": not a Megatron indexed-dataset index (no MMIDIDX magic)");
  const uint64_t version = load_le(data + 9, 8);
  MP_CHECK(version == 1, what, ": Megatron index version ", version, "; this build reads version 1");
  MegatronIndex ix;
  ix.dtype_code = data[17];
  const IdType t = megatron_type(ix.dtype_code);
  MP_CHECK(t.size > 0, what, ": unknown dtype code ", ix.dtype_code,
           " (the format defines 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)");
  ix.item_size = t.size;
  const uint64_t sequences = load_le(data + 18, 8), documents = load_le(data + 26, 8);
  const uint64_t body = size - kHeader;
  // Each count is bounded by the bytes it needs before any product is formed, so nothing overflows.
  MP_CHECK(sequences <= body / 12 && documents <= body / 8, what, ": header says ", sequences, " sequences and ",
           documents, " document indices, more than its ", size, " bytes hold (truncated?)");
  const uint64_t plain = 12 * sequences + 8 * documents;
  MP_CHECK(body == plain || body == plain + sequences, what, ": ", size, " bytes, but ", sequences, " sequences and ",
           documents, " document indices need ", kHeader + plain, " (or ", kHeader + plain + sequences,
           " with modes); truncated or not a Megatron index");
  ix.has_modes = body != plain;
  MP_CHECK(documents >= 1, what, ": no document indices (a Megatron index holds at least the leading 0)");
  const uint8_t* p = data + kHeader;
  ix.sequence_lengths.resize(sequences);
  ix.sequence_pointers.resize(sequences);
  ix.document_indices.resize(documents);
  for (uint64_t i = 0; i < sequences; ++i) {
    ix.sequence_lengths[i] = int32_t(uint32_t(load_le(p + 4 * i, 4)));
    MP_CHECK(ix.sequence_lengths[i] >= 0, what, ": sequence ", i, " has negative length ", ix.sequence_lengths[i]);
  }
  p += 4 * sequences;
  for (uint64_t i = 0; i < sequences; ++i) {
    const uint64_t ptr = load_le(p + 8 * i, 8), bytes = uint64_t(ix.sequence_lengths[i]) * uint64_t(t.size);
    MP_CHECK(ptr <= bin_size && bytes <= bin_size - ptr, what, ": sequence ", i, " (", ix.sequence_lengths[i],
             " ids at byte ", ptr, ") lies beyond the data file's ", bin_size, " bytes (truncated .bin?)");
    ix.sequence_pointers[i] = int64_t(ptr);
  }
  p += 8 * sequences;
  for (uint64_t i = 0; i < documents; ++i) {
    const uint64_t v = load_le(p + 8 * i, 8);
    MP_CHECK(i == 0 ? v == 0 : v >= uint64_t(ix.document_indices[i - 1]) && v <= sequences, what,
             ": document index ", i, " is ", int64_t(v),
             i == 0 ? " (must be 0)" : ", not between the previous one and the sequence count");
    ix.document_indices[i] = int64_t(v);
  }
  MP_CHECK(uint64_t(ix.document_indices.back()) == sequences, what, ": the last document index (",
           ix.document_indices.back(), ") must equal the sequence count (", sequences, ")");
  return ix;
}

// ---- NumPy .npy header ----

NpyHeader parse_npy_header(const uint8_t* data, uint64_t size, uint64_t file_size, const std::string& what) {
  MP_CHECK(size >= 10 && std::memcmp(data, "\x93NUMPY", 6) == 0, what, ": not a NumPy .npy file (no \\x93NUMPY magic)");
  const int major = data[6];
  MP_CHECK(major >= 1 && major <= 3, what, ": .npy format version ", major, ".", int(data[7]),
           "; this build reads 1.0, 2.0 and 3.0");
  const uint64_t len_bytes = major == 1 ? 2 : 4, start = 8 + len_bytes;
  MP_CHECK(size >= start, what, ": truncated .npy header");
  const uint64_t header_len = load_le(data + 8, int(len_bytes));
  // numpy itself refuses headers over 10000 bytes by default; a dict of three keys needs far less.
  MP_CHECK(header_len <= 65536 && start + header_len <= size, what, ": .npy header of ", header_len,
           " bytes is too long or truncated");
  const std::string h(reinterpret_cast<const char*>(data + start), header_len);
  auto value_of = [&](const char* key) -> size_t {
    const std::string k1 = std::string("'") + key + "'", k2 = std::string("\"") + key + "\"";
    size_t at = h.find(k1);
    if (at == std::string::npos) at = h.find(k2);
    MP_CHECK(at != std::string::npos, what, ": .npy header has no '", key, "': ", h);
    at += k1.size();
    while (at < h.size() && (h[at] == ' ' || h[at] == ':')) ++at;
    MP_CHECK(at < h.size(), what, ": .npy header ends after '", key, "'");
    return at;
  };
  NpyHeader out;
  size_t d = value_of("descr");
  MP_CHECK(h[d] == '\'' || h[d] == '"', what, ": .npy 'descr' is not a string: ", h);
  const size_t dend = h.find(h[d], d + 1);
  MP_CHECK(dend != std::string::npos, what, ": .npy 'descr' string is not closed");
  const std::string descr = h.substr(d + 1, dend - d - 1);
  MP_CHECK(descr.size() == 3 && (descr[0] == '<' || descr[0] == '>' || descr[0] == '|' || descr[0] == '=') &&
               (descr[1] == 'u' || descr[1] == 'i') && (descr[2] == '1' || descr[2] == '2' || descr[2] == '4' || descr[2] == '8'),
           what, ": .npy dtype '", descr, "' is not an integer type (accepted: u1 u2 u4 u8 i1 i2 i4 i8, either byte order)");
  out.kind = descr[1];
  out.item_size = descr[2] - '0';
  out.big_endian = descr[0] == '>';
  size_t fo = value_of("fortran_order");
  MP_CHECK(h.compare(fo, 5, "False") == 0 || h.compare(fo, 4, "True") == 0, what, ": .npy 'fortran_order' is not ",
           "True or False");
  size_t s = value_of("shape");
  MP_CHECK(h[s] == '(', what, ": .npy 'shape' is not a tuple: ", h);
  const size_t send = h.find(')', s);
  MP_CHECK(send != std::string::npos, what, ": .npy 'shape' tuple is not closed");
  std::vector<uint64_t> dims;
  std::string inner = h.substr(s + 1, send - s - 1);
  std::istringstream parts(inner);
  for (std::string item; std::getline(parts, item, ',');) {
    size_t b = item.find_first_not_of(' '), e = item.find_last_not_of(' ');
    if (b == std::string::npos) continue;
    item = item.substr(b, e - b + 1);
    MP_CHECK(item.size() <= 19 && item.find_first_not_of("0123456789") == std::string::npos, what,
             ": .npy shape entry '", item, "' is not a size");
    dims.push_back(std::stoull(item));
  }
  MP_CHECK(dims.size() == 1, what, ": .npy array has ", dims.size(), " dimensions; token ids are a 1-D array");
  out.count = dims[0];
  out.data_offset = start + header_len;
  MP_CHECK(out.data_offset <= file_size && out.count <= (file_size - out.data_offset) / uint64_t(out.item_size) &&
               out.count * uint64_t(out.item_size) == file_size - out.data_offset,
           what, ": .npy header says ", out.count, " ids of ", out.item_size, " bytes, but the file holds ",
           file_size >= out.data_offset ? file_size - out.data_offset : 0, " bytes of data (truncated?)");
  return out;
}

}  // namespace mp
