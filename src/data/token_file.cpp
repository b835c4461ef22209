// Token files (format in include/minipuzzle/token_file.h): a validating memory-mapped reader and an
// atomic writer. Everything read from disk is checked before use, so a truncated or mismatched file fails
// with a message that names it instead of feeding a model out-of-range ids.
#include "minipuzzle/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "minipuzzle/data_input.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/tokenizer.h"

namespace mp {


static_assert(sizeof(uint32_t) == 4 && sizeof(uint64_t) == 8, "token files need 32- and 64-bit integers");

static bool host_is_little_endian() {
  uint32_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

json TokenFileMetadata::to_json() const {
  json j;
  j["format"] = kTokenFileFormat;
  j["version"] = kTokenFileVersion;
  j["tokenizer"] = {{"kind", tokenizer_kind}, {"path", tokenizer_path}, {"sha256", tokenizer_sha256}};
  j["vocab_size"] = vocab_size;
  j["eos_id"] = eos_id ? json(*eos_id) : json();
  j["eos_appended"] = eos_appended;
  j["num_tokens"] = num_tokens;
  j["num_documents"] = num_documents;
  j["sources"] = sources;
  j["split"] = split;
  j["dtype"] = "uint32_le";
  return j;
}

// A non-negative integer field no larger than `max`. nlohmann's get<int>() on a float or an out-of-range value is
// an unchecked (for floats, undefined) conversion, so outside input is checked first.
static uint64_t unsigned_field(const json& j, const char* key, uint64_t max, const std::string& what) {
  const json& v = j.at(key);
  MP_CHECK(v.is_number_integer() && (v.is_number_unsigned() || v.get<int64_t>() >= 0) && v.get<uint64_t>() <= max, what, ": \"", key,
           "\" must be an integer from 0 to ", max, ", found ", v.dump());
  return v.get<uint64_t>();
}

TokenFileMetadata TokenFileMetadata::from_json(const json& j, const std::string& what) {
  TokenFileMetadata m;
  try {
    MP_CHECK(j.is_object() && j.value("format", std::string()) == kTokenFileFormat, what,
             ": not minipuzzle token-file metadata (expected \"format\": \"", kTokenFileFormat, "\")");
    int version = static_cast<int>(unsigned_field(j, "version", 1u << 30, what));
    MP_CHECK(version == kTokenFileVersion, what, ": token-file version ", version, ", this build reads version ",
             kTokenFileVersion);
    const json& tok = j.at("tokenizer");
    m.tokenizer_kind = tok.at("kind").get<std::string>();
    m.tokenizer_path = tok.value("path", std::string());
    m.tokenizer_sha256 = tok.at("sha256").get<std::string>();
    m.vocab_size = static_cast<uint32_t>(unsigned_field(j, "vocab_size", UINT32_MAX, what));
    if (!j.at("eos_id").is_null()) m.eos_id = static_cast<uint32_t>(unsigned_field(j, "eos_id", UINT32_MAX, what));
    m.eos_appended = j.value("eos_appended", false);
    m.num_tokens = unsigned_field(j, "num_tokens", UINT64_MAX, what);
    m.num_documents = unsigned_field(j, "num_documents", UINT64_MAX, what);
    m.sources = j.value("sources", std::vector<std::string>());
    m.split = j.value("split", std::string("all"));
  } catch (const json::exception& e) {
    fail(what, ": malformed token-file metadata (", e.what(), ")");
  }
  MP_CHECK(m.vocab_size > 0, what, ": vocab_size must be positive");
  MP_CHECK(!m.eos_id || *m.eos_id < m.vocab_size, what, ": eos_id ", m.eos_id.value_or(0), " >= vocab_size ", m.vocab_size);
  return m;
}

static uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::vector<uint64_t> parse_token_index(const uint8_t* data, uint64_t size, uint64_t num_tokens,
                                        const std::string& what) {
  MP_CHECK(size >= 24, what, ": index is ", size, " bytes, shorter than its 16-byte header plus one offset");
  MP_CHECK(std::memcmp(data, kTokenIndexMagic, 8) == 0, what, ": not a minipuzzle token index (bad magic)");
  uint64_t docs = read_u64_le(data + 8);
  MP_CHECK(docs < (size - 16) / 8 && size == 16 + 8 * (docs + 1), what, ": index says ", docs,
           " documents, which needs ", docs < (uint64_t(1) << 60) ? std::to_string(16 + 8 * (docs + 1)) : "too many",
           " bytes, but it has ", size);
  std::vector<uint64_t> offsets(docs + 1);
  for (uint64_t i = 0; i <= docs; ++i) {
    offsets[i] = read_u64_le(data + 16 + 8 * i);
    MP_CHECK(i == 0 ? offsets[0] == 0 : offsets[i] >= offsets[i - 1], what, ": document offset ", i, " (",
             offsets[i], ") ", i == 0 ? "must be 0" : "is below the previous one");
  }
  MP_CHECK(offsets.back() == num_tokens, what, ": the last offset (", offsets.back(), ") must equal the token count (",
           num_tokens, ")");
  return offsets;
}

std::string token_file_base(const std::string& path) {
  for (const char* ext : {".tokens", ".index", ".json"}) {
    size_t n = std::strlen(ext);
    if (path.size() > n && path.compare(path.size() - n, n, ext) == 0) return path.substr(0, path.size() - n);
  }
  return path;
}

bool is_token_file(const std::string& path) {
  std::string base = token_file_base(path);
  return fs::is_regular_file(base + ".tokens") && fs::is_regular_file(base + ".index");
}

static std::string read_whole_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  MP_CHECK(in.good(), "cannot open ", what, " ", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TokenFile TokenFile::open(const std::string& path) {
  MP_CHECK(host_is_little_endian(), "token files are little-endian and this host is not");
  std::string base = token_file_base(path);
  TokenFile f;
  f.path_ = base;
  std::string tokens_path = base + ".tokens", index_path = base + ".index", json_path = base + ".json";
  MP_CHECK(fs::is_regular_file(tokens_path), "token file ", base, ": ", tokens_path,
           " is missing (make token files with `minipuzzle data`)");
  MP_CHECK(fs::is_regular_file(json_path), "token file ", base, ": metadata ", json_path, " is missing");
  f.meta_ = TokenFileMetadata::from_json(read_json_file(json_path), json_path);

  int fd = ::open(tokens_path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd >= 0, "cannot open ", tokens_path, ": ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat ", tokens_path, ": ", std::strerror(errno));
  }
  uint64_t bytes = uint64_t(st.st_size);
  if (bytes % 4 != 0) {
    ::close(fd);
    fail(tokens_path, ": size ", bytes, " bytes is not a multiple of 4 (uint32 ids); the file is truncated or not a token file");
  }
  f.num_tokens_ = bytes / 4;
  if (bytes > 0) {
    void* map = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    MP_CHECK(map != MAP_FAILED, "cannot map ", tokens_path, ": ", std::strerror(errno));
    f.storage_ = std::shared_ptr<const void>(map, [bytes](const void* p) { munmap(const_cast<void*>(p), bytes); });
    f.tokens_ = static_cast<const uint32_t*>(map);
  } else {
    ::close(fd);
  }
  MP_CHECK(f.num_tokens_ == f.meta_.num_tokens, tokens_path, " holds ", f.num_tokens_, " tokens but ", json_path,
           " says ", f.meta_.num_tokens);
  std::string index = read_whole_file(index_path, "token index");
  f.offsets_ = parse_token_index(reinterpret_cast<const uint8_t*>(index.data()), index.size(), f.num_tokens_, index_path);
  MP_CHECK(f.num_documents() == f.meta_.num_documents, index_path, " holds ", f.num_documents(), " documents but ",
           json_path, " says ", f.meta_.num_documents);
  for (uint64_t i = 0; i < f.num_tokens_; ++i)
    if (f.tokens_[i] >= f.meta_.vocab_size)
      fail(tokens_path, ": token ", i, " is id ", f.tokens_[i], ", not below vocab_size ", f.meta_.vocab_size,
           " from ", json_path);
  return f;
}

TokenFile TokenFile::from_documents(const std::vector<std::vector<uint32_t>>& documents, TokenFileMetadata meta) {
  auto all = std::make_shared<std::vector<uint32_t>>();
  TokenFile f;
  f.offsets_.push_back(0);
  for (const auto& d : documents) {
    for (uint32_t id : d)
      MP_CHECK(id < meta.vocab_size, "token id ", id, " is not below vocab_size ", meta.vocab_size);
    all->insert(all->end(), d.begin(), d.end());
    f.offsets_.push_back(all->size());
  }
  f.num_tokens_ = all->size();
  f.tokens_ = all->data();
  f.storage_ = all;
  meta.num_tokens = f.num_tokens_;
  meta.num_documents = documents.size();
  f.meta_ = std::move(meta);
  return f;
}

TokenFile TokenFile::from_ids(std::vector<uint32_t> ids, std::vector<uint64_t> offsets, TokenFileMetadata meta,
                              std::string path) {
  MP_CHECK(!offsets.empty() && offsets.front() == 0 && offsets.back() == ids.size(), path,
           ": document offsets must run from 0 to the token count");
  for (size_t i = 1; i < offsets.size(); ++i)
    MP_CHECK(offsets[i] >= offsets[i - 1], path, ": document offset ", i, " is below the previous one");
  for (size_t i = 0; i < ids.size(); ++i)
    MP_CHECK(ids[i] < meta.vocab_size, path, ": token ", i, " is id ", ids[i], ", not below vocab_size ",
             meta.vocab_size);
  auto all = std::make_shared<std::vector<uint32_t>>(std::move(ids));
  TokenFile f;
  f.num_tokens_ = all->size();
  f.tokens_ = all->data();
  f.storage_ = all;
  f.offsets_ = std::move(offsets);
  meta.num_tokens = f.num_tokens_;
  meta.num_documents = f.offsets_.size() - 1;
  f.meta_ = std::move(meta);
  f.path_ = std::move(path);
  return f;
}

TokenSpan TokenFile::document(uint64_t i) const {
  MP_CHECK(i < num_documents(), "document ", i, " out of range: ", path_, " has ", num_documents(), " documents");
  return {tokens_ + offsets_[i], size_t(offsets_[i + 1] - offsets_[i])};
}

// ---- writer ----

TokenFileWriter::TokenFileWriter(const std::string& path, TokenFileMetadata meta)
    : base_(token_file_base(path)), meta_(std::move(meta)) {
  MP_CHECK(host_is_little_endian(), "token files are little-endian and this host is not");
  MP_CHECK(meta_.vocab_size > 0, "token file ", base_, ": vocab_size must be set before writing");
  std::string suffix = ".tmp-" + std::to_string(::getpid());
  tmp_tokens_ = base_ + ".tokens" + suffix;
  tmp_index_ = base_ + ".index" + suffix;
  tmp_json_ = base_ + ".json" + suffix;
  const std::string parent = fs::parent(base_);
  if (!parent.empty()) fs::create_directories(parent);
  tokens_out_ = std::fopen(tmp_tokens_.c_str(), "wb");
  MP_CHECK(tokens_out_ != nullptr, "cannot create ", tmp_tokens_, ": ", std::strerror(errno));
}

TokenFileWriter::~TokenFileWriter() {
  if (finished_) return;
  if (tokens_out_) std::fclose(tokens_out_);
  fs::remove_quietly(tmp_tokens_);
  fs::remove_quietly(tmp_index_);
  fs::remove_quietly(tmp_json_);
}

void TokenFileWriter::add_document(const uint32_t* ids, size_t count) {
  MP_CHECK(!finished_, "token file ", base_, ": add_document after finish");
  for (size_t i = 0; i < count; ++i)
    MP_CHECK(ids[i] < meta_.vocab_size, "token file ", base_, ": id ", ids[i], " is not below vocab_size ",
             meta_.vocab_size);
  if (count > 0 && std::fwrite(ids, 4, count, tokens_out_) != count)
    fail("writing ", tmp_tokens_, " failed: ", std::strerror(errno), " (disk full?)");
  offsets_.push_back(offsets_.back() + count);
}

static void write_bytes_file(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  MP_CHECK(f != nullptr, "cannot create ", path, ": ", std::strerror(errno));
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = (std::fclose(f) == 0) && ok;
  MP_CHECK(ok, "writing ", path, " failed (disk full?)");
}

TokenFileMetadata TokenFileWriter::finish() {
  MP_CHECK(!finished_, "token file ", base_, ": finish called twice");
  int rc = std::fclose(tokens_out_);
  tokens_out_ = nullptr;
  MP_CHECK(rc == 0, "writing ", tmp_tokens_, " failed: ", std::strerror(errno), " (disk full?)");
  std::string index(kTokenIndexMagic, 8);
  auto put_u64 = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) index += char((v >> (8 * i)) & 0xFF);
  };
  put_u64(offsets_.size() - 1);
  for (uint64_t o : offsets_) put_u64(o);
  write_bytes_file(tmp_index_, index);
  meta_.num_tokens = offsets_.back();
  meta_.num_documents = offsets_.size() - 1;
  write_json_file(tmp_json_, meta_.to_json());
  // The metadata goes last: whoever finds NAME.json finds the other two complete.
  fs::rename(tmp_tokens_, base_ + ".tokens");
  fs::rename(tmp_index_, base_ + ".index");
  fs::rename(tmp_json_, base_ + ".json");
  finished_ = true;
  return meta_;
}

TokenFile read_tokens_for_eval(const std::string& path, const Tokenizer* tokenizer) {
  DataInputOptions o;
  o.tokenizer = tokenizer;
  return open_data(path, o);
}

}  // namespace mp
