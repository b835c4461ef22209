// `minipuzzle data`: streams text and JSONL files into token files. Inputs are read in blocks and cut at
// document boundaries; each batch of documents is encoded by a pool of worker threads (which keep their
// word caches across batches) and written in input order, so the output does not depend on the thread count.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <thread>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"

namespace mp {


bool document_in_valid_split(uint64_t k, double valid_fraction) {
  if (valid_fraction <= 0) return false;
  uint64_t z = k + 0x9E3779B97F4A7C15ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53 < valid_fraction;
}

static bool line_is_blank(std::string_view line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  return true;
}

std::vector<std::string_view> split_paragraphs(std::string_view text) {
  std::vector<std::string_view> docs;
  size_t pos = 0, doc_begin = std::string_view::npos;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    if (line_is_blank(text.substr(pos, end - pos))) {
      if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, pos - doc_begin));
      doc_begin = std::string_view::npos;
    } else if (doc_begin == std::string_view::npos) {
      doc_begin = pos;
    }
    pos = end;
  }
  if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin));
  return docs;
}

namespace {

struct Document {
  std::string text;    // the document, or for JSONL the raw line
  bool jsonl = false;  // parse `text` as a JSON object first
  size_t file = 0;
  uint64_t line = 0;
};

// A fixed set of threads that run one batch function at a time; the caller waits for each batch.
class WorkerPool {
 public:
  explicit WorkerPool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void run(const std::function<void()>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    running_ = int(threads_.size());
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [this] { return running_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void()>* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--running_ == 0) done_.notify_one();
    }
  }
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void()>* job_ = nullptr;
  uint64_t generation_ = 0;
  int running_ = 0;
  bool stop_ = false;
};

bool is_jsonl_path(const std::string& path) {
  auto ends = [&](const char* ext) {
    size_t n = std::strlen(ext);
    return path.size() >= n && path.compare(path.size() - n, n, ext) == 0;
  };
  return ends(".jsonl") || ends(".ndjson");
}

// Reads one input in blocks and hands out complete documents.
class DocumentReader {
 public:
  DocumentReader(const std::string& path, size_t file_index, const std::string& text_documents)
      : path_(path), file_(file_index), jsonl_(is_jsonl_path(path)), whole_file_(!jsonl_ && text_documents == "file"),
        in_(path, std::ios::binary) {
    MP_CHECK(in_.good(), "cannot open input ", path, ": ", std::strerror(errno));
  }
  // Appends the documents of the next block to `out`; returns the bytes read, 0 at the end.
  size_t next(std::vector<Document>& out) {
    if (done_) return 0;
    constexpr size_t kBlock = 4 << 20;
    size_t old = buffer_.size();
    buffer_.resize(old + kBlock);
    in_.read(&buffer_[old], kBlock);
    size_t got = size_t(in_.gcount());
    buffer_.resize(old + got);
    MP_CHECK(!in_.bad(), "reading ", path_, " failed");
    bool eof = got < kBlock;
    if (eof) done_ = true;
    if (whole_file_) {
      if (eof && !buffer_.empty()) out.push_back({std::move(buffer_), false, file_, 1});
      if (eof) buffer_.clear();
      return got;
    }
    // Find the last cut point in the new data: after a blank line (text) or after any newline (JSONL).
    size_t cut = 0;
    for (size_t nl = buffer_.find('\n', scan_); nl != std::string::npos; nl = buffer_.find('\n', scan_)) {
      if (jsonl_ || line_is_blank(std::string_view(buffer_).substr(scan_, nl + 1 - scan_))) cut = nl + 1;
      scan_ = nl + 1;
    }
    if (eof) cut = buffer_.size();
    emit(std::string_view(buffer_).substr(0, cut), out);
    buffer_.erase(0, cut);
    scan_ -= std::min(scan_, cut);
    return got;
  }

 private:
  void emit(std::string_view block, std::vector<Document>& out) {
    if (jsonl_) {
      size_t pos = 0;
      while (pos < block.size()) {
        size_t nl = block.find('\n', pos);
        size_t end = nl == std::string_view::npos ? block.size() : nl + 1;
        ++line_;
        std::string_view line = block.substr(pos, end - pos);
        if (!line_is_blank(line)) out.push_back({std::string(line), true, file_, line_});
        pos = end;
      }
      return;
    }
    for (std::string_view doc : split_paragraphs(block)) out.push_back({std::string(doc), false, file_, 0});
  }
  std::string path_;
  size_t file_;
  bool jsonl_, whole_file_;
  std::ifstream in_;
  std::string buffer_;
  size_t scan_ = 0;
  uint64_t line_ = 0;
  bool done_ = false;
};

}  // namespace

DataPrepResult prepare_token_files(const DataPrepOptions& options) {
  auto start = std::chrono::steady_clock::now();
  MP_CHECK(!options.inputs.empty(), "minipuzzle data: no input files given");
  MP_CHECK(!options.output.empty(), "minipuzzle data: no output name given (-o NAME)");
  MP_CHECK(options.valid_fraction >= 0 && options.valid_fraction < 1, "--valid-fraction must be in [0, 1), found ",
           options.valid_fraction);
  MP_CHECK(options.text_documents == "paragraph" || options.text_documents == "file",
           "text documents must be \"paragraph\" or \"file\", found ", json(options.text_documents).dump());
  uint64_t total_bytes = 0;
  for (const std::string& in : options.inputs) {
    MP_CHECK(fs::is_regular_file(in), "input ", in, " is not a readable file");
    total_bytes += fs::file_size(in);
  }
  // Inputs are never modified: refuse an output name whose files would replace one (e.g. -o data for data.json).
  std::vector<std::string> bases = {options.output};
  if (options.valid_fraction > 0) bases = {options.output + ".train", options.output + ".valid"};
  for (const std::string& base : bases)
    for (const char* ext : {".tokens", ".index", ".json"})
      for (const std::string& in : options.inputs) {
        MP_CHECK(!fs::same_file(base + ext, in), "output ", base, ext, " would overwrite the input ", in,
                 "; choose another -o name");
      }
  Tokenizer tokenizer = Tokenizer::from_file(options.tokenizer);
  std::optional<uint32_t> eos = tokenizer.eos_id();
  MP_CHECK(!options.append_eos || eos, "--append-eos: tokenizer ", options.tokenizer,
           " has no end-of-document token (looked for <eos>, </s>, <|endoftext|>, <|end_of_text|>, <|eot_id|>, ...)");

  TokenFileMetadata meta;
  meta.tokenizer_kind = tokenizer.kind();
  meta.tokenizer_path = options.tokenizer == "byte" ? "" : options.tokenizer;
  meta.tokenizer_sha256 = tokenizer.sha256();
  meta.vocab_size = tokenizer.vocab_size();
  meta.eos_id = eos;
  meta.eos_appended = options.append_eos;
  meta.sources = options.inputs;

  DataPrepResult result;
  result.input_bytes = total_bytes;
  bool split = options.valid_fraction > 0;
  std::vector<std::unique_ptr<TokenFileWriter>> writers;
  if (split) {
    for (const char* name : {"train", "valid"}) {
      TokenFileMetadata m = meta;
      m.split = name;
      result.paths.push_back(options.output + "." + name);
      writers.push_back(std::make_unique<TokenFileWriter>(result.paths.back(), m));
    }
  } else {
    result.paths.push_back(options.output);
    writers.push_back(std::make_unique<TokenFileWriter>(options.output, meta));
  }

  int threads = options.threads > 0 ? options.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  result.threads = threads;
  WorkerPool pool(threads);
  Progress progress("tokenize", int64_t(total_bytes), "B", options.progress);
  std::vector<Document> batch;
  std::vector<std::vector<uint32_t>> encoded;
  uint64_t document_index = 0, pending_bytes = 0;
  constexpr size_t kBatchBytes = 8 << 20;
  size_t batch_bytes = 0;

  auto flush = [&] {
    encoded.assign(batch.size(), {});
    std::atomic<size_t> next{0};
    std::mutex error_mutex;
    std::exception_ptr error;
    std::function<void()> job = [&] {
      for (size_t k = next++; k < batch.size(); k = next++) {
        try {
          const Document& d = batch[k];
          if (d.jsonl) {
            json j;
            try {
              j = json::parse(d.text);
            } catch (const json::exception& e) {
              fail(options.inputs[d.file], ":", d.line, ": not a JSON object (", e.what(), ")");
            }
            MP_CHECK(j.is_object() && j.contains(options.jsonl_field) && j.at(options.jsonl_field).is_string(),
                     options.inputs[d.file], ":", d.line, ": expected an object with a string field \"",
                     options.jsonl_field, "\" (choose the field with --jsonl-field)");
            tokenizer.encode_append(j.at(options.jsonl_field).get_ref<const std::string&>(), encoded[k]);
          } else {
            tokenizer.encode_append(d.text, encoded[k]);
          }
          if (options.append_eos) encoded[k].push_back(*eos);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          next = batch.size();
        }
      }
    };
    pool.run(job);
    if (error) std::rethrow_exception(error);
    for (size_t k = 0; k < batch.size(); ++k) {
      bool valid = split && document_in_valid_split(document_index++, options.valid_fraction);
      writers[valid ? 1 : 0]->add_document(encoded[k]);
    }
    progress.advance(int64_t(pending_bytes), {{"tokens", writers[0]->num_tokens() + (split ? writers[1]->num_tokens() : 0)}});
    pending_bytes = 0;
    batch.clear();
    batch_bytes = 0;
  };

  for (size_t f = 0; f < options.inputs.size(); ++f) {
    DocumentReader reader(options.inputs[f], f, options.text_documents);
    for (;;) {
      size_t before = batch.size();
      size_t got = reader.next(batch);
      pending_bytes += got;
      for (size_t k = before; k < batch.size(); ++k) batch_bytes += batch[k].text.size();
      if (batch_bytes >= kBatchBytes) flush();
      if (interrupted()) {
        result.interrupted = true;
        return result;  // the writers' destructors remove their temporary files
      }
      if (got == 0) break;
    }
  }
  flush();
  for (auto& w : writers) result.metadata.push_back(w->finish());
  progress.finish();
  if (split && (result.metadata[0].num_documents == 0 || result.metadata[1].num_documents == 0))
    log_warning("minipuzzle data: the " + std::string(result.metadata[1].num_documents == 0 ? "valid" : "train") +
                " split is empty (" + std::to_string(document_index) + " documents in all); change --valid-fraction "
                "or give inputs with more documents");
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace mp
