// Token files: what `minipuzzle data` writes and calibration, distillation, `score` and `eval` read.
//
// A token file NAME is three files side by side:
//   NAME.tokens  the token ids of every document, concatenated: raw little-endian uint32, nothing else
//                (so numpy.fromfile(p, "<u4") reads it). Its size is 4 * num_tokens bytes.
//   NAME.index   document boundaries: 8-byte magic "MPTIDX1\0", little-endian uint64 num_documents, then
//                num_documents + 1 little-endian uint64 token offsets: offsets[0] = 0, non-decreasing,
//                offsets[num_documents] = num_tokens. Document i is tokens [offsets[i], offsets[i+1]).
//                Size: 16 + 8 * (num_documents + 1) bytes.
//   NAME.json    metadata (see TokenFileMetadata): format name and version, the tokenizer (kind, path,
//                sha256 of its tokenizer.json bytes), vocab_size, eos_id (null if none), num_tokens,
//                num_documents, the source files, the split ("all", "train" or "valid"), whether an EOS id
//                ends every document.
// Ids are < vocab_size (checked when the file is opened, so a model can index its embedding without checks).
// The writer writes NAME.*.tmp-PID files and renames them into place only when all three are complete;
// a reader never sees a half-written file. Any of "NAME", "NAME.tokens", "NAME.index", "NAME.json" names
// the same token file.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "minipuzzle/json.h"
#include "minipuzzle/progress.h"

namespace mp {

class Tokenizer;

constexpr char kTokenIndexMagic[8] = {'M', 'P', 'T', 'I', 'D', 'X', '1', '\0'};
constexpr const char* kTokenFileFormat = "minipuzzle-tokens";
constexpr int kTokenFileVersion = 1;

// A read-only run of token ids (C++17 has no std::span).
struct TokenSpan {
  const uint32_t* data = nullptr;
  size_t size = 0;
  const uint32_t* begin() const { return data; }
  const uint32_t* end() const { return data + size; }
  uint32_t operator[](size_t i) const { return data[i]; }
  bool empty() const { return size == 0; }
};

struct TokenFileMetadata {
  std::string tokenizer_kind;     // "bpe" (a tokenizer.json) or "byte_level"
  std::string tokenizer_path;     // as given on the command line ("" for byte_level)
  std::string tokenizer_sha256;   // of the tokenizer.json bytes; for byte_level, of its description
  uint32_t vocab_size = 0;
  std::optional<uint32_t> eos_id;
  bool eos_appended = false;      // every document ends with eos_id
  std::vector<std::string> sources;
  std::string split = "all";      // "all", "train" or "valid"
  // Filled by the writer / checked by the reader:
  uint64_t num_tokens = 0, num_documents = 0;

  json to_json() const;
  static TokenFileMetadata from_json(const json& j, const std::string& what);
};

// Validates an index file's bytes alone (used by TokenFile::open and the fuzz target): returns the offsets
// (num_documents + 1 of them). `num_tokens` is the size of the matching .tokens file in tokens.
std::vector<uint64_t> parse_token_index(const uint8_t* data, uint64_t size, uint64_t num_tokens,
                                        const std::string& what);

// The base name NAME from NAME, NAME.tokens, NAME.index or NAME.json.
std::string token_file_base(const std::string& path);
// True when `path` names a token file (its NAME.tokens and NAME.index exist).
bool is_token_file(const std::string& path);

class TokenFile {
 public:
  // Memory-maps NAME.tokens and NAME.index, reads NAME.json, and checks that sizes, counts, offsets and the
  // metadata agree and that every id is < vocab_size. Throws mp::Error naming the file and the problem.
  static TokenFile open(const std::string& path);
  // A token file held in memory (one document per entry), e.g. a text file encoded on the fly for `eval`.
  static TokenFile from_documents(const std::vector<std::vector<uint32_t>>& documents, TokenFileMetadata meta);
  // Ids and document offsets already in memory (other formats, blends): offsets start at 0, never decrease and
  // end at ids.size(); every id must be below meta.vocab_size. Both are checked.
  static TokenFile from_ids(std::vector<uint32_t> ids, std::vector<uint64_t> offsets, TokenFileMetadata meta,
                            std::string path);

  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t num_documents() const { return offsets_.empty() ? 0 : offsets_.size() - 1; }
  const uint32_t* data() const { return tokens_; }
  TokenSpan all() const { return {tokens_, num_tokens_}; }
  TokenSpan document(uint64_t i) const;
  const std::vector<uint64_t>& offsets() const { return offsets_; }
  const TokenFileMetadata& metadata() const { return meta_; }
  uint32_t vocab_size() const { return meta_.vocab_size; }
  std::optional<uint32_t> eos_id() const { return meta_.eos_id; }
  const std::string& path() const { return path_; }

 private:
  std::shared_ptr<const void> storage_;  // the mapping or the in-memory vector; keeps tokens_ alive
  const uint32_t* tokens_ = nullptr;
  uint64_t num_tokens_ = 0;
  std::vector<uint64_t> offsets_;
  TokenFileMetadata meta_;
  std::string path_;
};

// Writes NAME.tokens / NAME.index / NAME.json atomically. Documents are appended in order; finish() writes
// the index and metadata and renames the three temporary files into place. Destroying an unfinished writer
// removes its temporary files (nothing appears at NAME.*).
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, TokenFileMetadata meta);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  void add_document(const uint32_t* ids, size_t count);
  void add_document(const std::vector<uint32_t>& ids) { add_document(ids.data(), ids.size()); }
  uint64_t num_tokens() const { return offsets_.back(); }
  uint64_t num_documents() const { return offsets_.size() - 1; }
  // Throws on I/O errors (disk full); returns the final metadata.
  TokenFileMetadata finish();

 private:
  std::string base_, tmp_tokens_, tmp_index_, tmp_json_;
  TokenFileMetadata meta_;
  std::vector<uint64_t> offsets_{0};
  std::FILE* tokens_out_ = nullptr;
  bool finished_ = false;
};

// ---- `minipuzzle data`: text and JSONL files -> token files ----
// Inputs: files ending in .jsonl or .ndjson are JSON Lines (one object per non-blank line; its `jsonl_field`
// string is one document); every other file is UTF-8 text (any bytes are accepted), split into documents
// by `text_documents`: "paragraph" (default) - a document is a run of non-blank lines, blank (whitespace-
// only) lines separate documents and are dropped, each document keeps its lines' newlines; "file" - the
// whole file is one document. Documents keep input order (files in the order given).
// Held-out split: with valid_fraction F > 0, document k (0-based, over all inputs) goes to the valid split
// when splitmix64(k) / 2^64 < F - deterministic, independent of the thread count - and the outputs are
// NAME.train.* and NAME.valid.*; otherwise NAME.*.
struct DataPrepOptions {
  std::vector<std::string> inputs;
  std::string tokenizer = "byte";  // a tokenizer.json (or its directory), or "byte"
  std::string output;              // NAME
  std::string jsonl_field = "text";
  std::string text_documents = "paragraph";  // "paragraph" or "file"
  double valid_fraction = 0.0;
  int threads = 0;  // 0: all hardware threads
  bool append_eos = false;
  ProgressMode progress = ProgressMode::Auto;
};
struct DataPrepResult {
  std::vector<std::string> paths;               // NAME, or NAME.train and NAME.valid
  std::vector<TokenFileMetadata> metadata;      // one per path
  uint64_t input_bytes = 0;
  double seconds = 0.0;
  int threads = 0;                              // encoding threads used
  bool interrupted = false;                     // stopped by SIGINT/SIGTERM; nothing was written
};
DataPrepResult prepare_token_files(const DataPrepOptions& options);
// The held-out split rule above, exposed for tests.
bool document_in_valid_split(uint64_t document_index, double valid_fraction);
// "paragraph" documents of a text (the rule above), as views into it.
std::vector<std::string_view> split_paragraphs(std::string_view text);

// A token file as is; otherwise a UTF-8 text file, encoded as one document with `tokenizer`, or with the
// byte-level tokenizer when `tokenizer` is null. open_data (minipuzzle/data_input.h) with its defaults.
TokenFile read_tokens_for_eval(const std::string& path, const Tokenizer* tokenizer = nullptr);

}  // namespace mp
