// Realising a plan: streamed from the parent's memory map into a new checkpoint, or in memory.
//
// Speed: the output's layout (shards, headers, every tensor's offset) is known before anything is read, so the
// work is split into pieces (a block of output rows of one tensor, at most kPieceBytes) that a few threads take
// in file order, round-robin over the output shards, and write in place (pwrite). A piece whose rows are whole
// parent rows in long runs (identity tensors, row-only cuts) is copied file to file inside the kernel
// (copy_file_range, as `cp` does); a piece that cuts columns is gathered from the map into the thread's buffer
// with one memcpy per run of kept columns (one load/store per element where runs are short), then written with
// one pwrite. A flusher thread fsyncs each shard as soon as it is complete (CheckpointWriter), so flushing
// overlaps the work.
//
// Memory: a mapped file's pages count in the process's resident set once touched, so reading an 8 GB parent
// through the map would hold 8 GB resident by the end. The pages a piece read are released (madvise
// DONTNEED: the mapping stays valid and re-reads from the page cache if touched again) as soon as it is written;
// resident memory is about threads x (one piece of the parent + one output buffer).
#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "minipuzzle/error.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/pruning.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older kernels answer EINVAL and the pages fault in one by one
#endif

namespace mp {

namespace {

constexpr uint64_t kPieceBytes = 16ull << 20;   // output (or parent) bytes per piece
constexpr uint64_t kCopyRunBytes = 1ull << 20;  // runs of whole parent rows at least this long go file to file

uintptr_t page_size() {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

// Drops the process's mapping of the whole pages inside [begin, end): the pages at the ends may be shared
// with a piece another thread is reading. Correct either way (a dropped clean page is faulted in again from the
// page cache); only the resident-set size depends on it.
void release_pages(const void* begin, size_t nbytes) {
  if (!begin || nbytes == 0) return;
  const uintptr_t page = page_size();
  uintptr_t b = (reinterpret_cast<uintptr_t>(begin) + page - 1) & ~(page - 1);
  uintptr_t e = (reinterpret_cast<uintptr_t>(begin) + nbytes) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// Maps [begin, end) in one call instead of a page fault per page (the kernel reads ahead for the whole range).
void populate(const void* begin, size_t nbytes) {
  if (!begin || nbytes == 0) return;
  const uintptr_t page = page_size();
  uintptr_t b = reinterpret_cast<uintptr_t>(begin) & ~(page - 1);
  uintptr_t e = (reinterpret_cast<uintptr_t>(begin) + nbytes + page - 1) & ~(page - 1);
  if (::madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_READ) != 0)
    ::madvise(reinterpret_cast<void*>(b), e - b, MADV_WILLNEED);
}

// One output tensor: where its parent bytes are and how rows and columns map.
struct Source {
  const TensorCut* cut = nullptr;
  size_t out_index = 0;
  const uint8_t* base = nullptr;  // parent bytes in the map
  int fd = -1;                    // the parent shard, for file-to-file copies
  uint64_t file_offset = 0;       // of the parent tensor in that file
  int64_t out_rows = 0;
  uint64_t elem = 0, src_row = 0, dst_row = 0;  // bytes
  std::vector<std::pair<int64_t, int64_t>> col_runs;  // (first column, count) of consecutive kept columns
  bool short_runs = false;  // gather column by column (runs average under 8 elements)
  int64_t source_row(int64_t r) const { return cut->rows.empty() ? r : cut->rows[static_cast<size_t>(r)]; }
};

struct Piece {
  size_t source = 0;
  int64_t r0 = 0, r1 = 0;  // output rows
};

// Output rows [r0, r1) gathered into dst (contiguous rows of dst_row bytes).
void gather_rows(const Source& s, int64_t r0, int64_t r1, uint8_t* dst) {
  const size_t kept_cols = s.cut->cols.size();
  for (int64_t r = r0; r < r1; ++r, dst += s.dst_row) {
    const uint8_t* row = s.base + static_cast<uint64_t>(s.source_row(r)) * s.src_row;
    if (s.col_runs.empty()) {
      std::memcpy(dst, row, s.src_row);
    } else if (s.short_runs && s.elem == 2) {
      // Short runs: a memcpy call per run costs more than moving the elements (the hidden cut of a random
      // scoring keeps runs of a few channels). memcpy of 2 bytes compiles to one load and one store.
      const int64_t* cols = s.cut->cols.data();
      for (size_t j = 0; j < kept_cols; ++j) std::memcpy(dst + 2 * j, row + 2 * cols[j], 2);
    } else if (s.short_runs && s.elem == 4) {
      const int64_t* cols = s.cut->cols.data();
      for (size_t j = 0; j < kept_cols; ++j) std::memcpy(dst + 4 * j, row + 4 * cols[j], 4);
    } else {
      uint8_t* d = dst;
      for (auto& [c, n] : s.col_runs) {
        std::memcpy(d, row + static_cast<uint64_t>(c) * s.elem, static_cast<uint64_t>(n) * s.elem);
        d += static_cast<uint64_t>(n) * s.elem;
      }
    }
  }
}

// Runs of consecutive parent rows among output rows [r0, r1): (first output row, count).
std::vector<std::pair<int64_t, int64_t>> row_runs(const Source& s, int64_t r0, int64_t r1) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t r = r0; r < r1; ++r) {
    if (!runs.empty() && s.source_row(runs.back().first) + runs.back().second == s.source_row(r)) ++runs.back().second;
    else runs.push_back({r, 1});
  }
  return runs;
}

void write_piece(const Source& s, const Piece& p, CheckpointWriter& writer, std::vector<uint8_t>& buffer) {
  if (p.r1 <= p.r0 || s.dst_row == 0) return;
  const uint64_t out_offset = static_cast<uint64_t>(p.r0) * s.dst_row;
  const uint64_t out_bytes = static_cast<uint64_t>(p.r1 - p.r0) * s.dst_row;
  if (s.col_runs.empty()) {
    const auto runs = row_runs(s, p.r0, p.r1);
    if (out_bytes / runs.size() >= kCopyRunBytes) {  // long runs of whole rows: file to file, no user copy
      for (auto& [r, n] : runs)
        writer.copy(s.out_index, static_cast<uint64_t>(r) * s.dst_row, s.fd,
                    s.file_offset + static_cast<uint64_t>(s.source_row(r)) * s.src_row,
                    static_cast<uint64_t>(n) * s.src_row);
      return;
    }
  }
  // The parent rows this piece reads lie in [first, last].
  int64_t first = s.source_row(p.r0), last = first;
  for (int64_t r = p.r0 + 1; r < p.r1; ++r) first = std::min(first, s.source_row(r)), last = std::max(last, s.source_row(r));
  const uint8_t* span = s.base + static_cast<uint64_t>(first) * s.src_row;
  const uint64_t span_bytes = static_cast<uint64_t>(last - first + 1) * s.src_row;
  // Pre-map the span only when the piece reads most of it (a sparse row selection would map what it skips).
  if (span_bytes && span_bytes <= 2 * out_bytes + s.src_row) populate(span, span_bytes);
  if (buffer.size() < out_bytes) buffer.resize(out_bytes);
  gather_rows(s, p.r0, p.r1, buffer.data());
  writer.write(s.out_index, out_offset, buffer.data(), out_bytes);
  if (span_bytes) release_pages(span, span_bytes);
}

int auto_threads() {
  if (const char* e = std::getenv("MINIPUZZLE_PRUNE_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  // A few threads saturate a disk and the memory bus; more only contend.
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
}

}  // namespace

void prune_checkpoint(const Checkpoint& parent, const PrunePlan& plan, const std::string& out_dir,
                      const PruneOptions& options) {
  MP_CHECK(parent.config().pattern() == plan.source.pattern() && parent.config().hidden_size == plan.source.hidden_size &&
               count_parameters(parent.config()) == count_parameters(plan.source),
           parent.dir(), ": this checkpoint is not the model the pruning plan was made for (pattern ",
           parent.config().pattern(), ", plan's ", plan.source.pattern(), ")");
  check_output_dir(out_dir, options.overwrite);
  // MTP copies are appended below, before anything takes pointers into it.
  std::vector<TensorCut> cuts = plan_tensor_cuts(plan);
  std::vector<TensorSpec> specs;
  uint64_t total_bytes = 0;
  for (auto& c : cuts) {
    TensorSpec spec = c.out;
    spec.dtype = parent.info(c.source_name).dtype;  // keep each tensor's stored precision (bit-identical copies)
    uint64_t n = dtype_size(*spec.dtype);
    for (auto d : spec.shape) n *= static_cast<uint64_t>(d);
    total_bytes += n;
    specs.push_back(spec);
  }
  // MTP layers (`mtp.*`): copied as stored when their shapes still fit, dropped when asked, else refused.
  const std::vector<std::string> mtp = parent.mtp_tensor_names();
  ModelConfig target_config = plan.target;
  if (!mtp.empty() && !plan.drop_mtp) {
    MP_CHECK(plan.mtp_shapes_unchanged, parent.dir(), ": the checkpoint has ", mtp.size(),
             " MTP tensors (mtp.*) whose shapes follow the hidden size, attention heads and MoE widths this target "
             "changes; minipuzzle does not prune MTP layers. Pass --drop-mtp (target \"drop_mtp\": true) to write "
             "the pruned model without them (num_nextn_predict_layers 0)");
    for (const auto& name : mtp) {
      TensorCut c;
      c.out = {name, parent.info(name).shape, parent.info(name).dtype};
      c.source_name = name;
      cuts.push_back(c);  // an identity cut: copied as stored, like every unchanged tensor
      specs.push_back(c.out);
      uint64_t n = dtype_size(parent.info(name).dtype);
      for (auto d : c.out.shape) n *= static_cast<uint64_t>(d);
      total_bytes += n;
    }
  }
  if (!mtp.empty() && plan.drop_mtp) target_config.num_nextn_predict_layers = 0;
  CheckpointWriteOptions write_options;
  write_options.dtype = parent.storage_dtype();
  write_options.max_shard_bytes = options.max_shard_bytes;
  if (options.copy_tokenizer) write_options.copy_files = parent.extra_files();
  for (auto& f : options.extra_files) write_options.copy_files.push_back(f);

  // The parent's shards opened again for file-to-file copies (the reader maps them and keeps no descriptor).
  std::map<const SafetensorsFile*, int> fds;
  struct CloseAll {
    std::map<const SafetensorsFile*, int>& fds;
    ~CloseAll() {
      for (auto& [_, fd] : fds)
        if (fd >= 0) ::close(fd);
    }
  } close_all{fds};
  std::vector<Source> sources;
  std::vector<Piece> pieces;
  for (size_t i = 0; i < cuts.size(); ++i) {
    const TensorCut& cut = cuts[i];
    auto [file, info] = parent.locate(cut.source_name);
    if (!fds.count(file)) {
      int fd = ::open(file->path().c_str(), O_RDONLY | O_CLOEXEC);
      MP_CHECK(fd >= 0, file->path(), ": cannot open (", std::strerror(errno), ")");
      fds[file] = fd;
    }
    Source s;
    s.cut = &cut;
    s.out_index = i;
    s.base = file->data(*info);
    s.fd = fds[file];
    s.file_offset = file->file_offset(*info);
    s.elem = dtype_size(info->dtype);
    const int64_t rows = info->shape.empty() ? 1 : info->shape[0];
    s.out_rows = cut.out.shape.empty() ? 1 : cut.out.shape[0];
    s.src_row = rows ? info->nbytes() / static_cast<uint64_t>(rows) : 0;
    uint64_t out_numel = 1;
    for (auto d : cut.out.shape) out_numel *= static_cast<uint64_t>(d);
    s.dst_row = s.out_rows ? out_numel * s.elem / static_cast<uint64_t>(s.out_rows) : 0;
    MP_CHECK(cut.cols.empty() || info->shape.size() == 2, "pruning: cannot cut the columns of ", cut.source_name,
             " (", info->shape.size(), " dimensions)");
    for (int64_t c : cut.cols) {
      if (!s.col_runs.empty() && s.col_runs.back().first + s.col_runs.back().second == c) ++s.col_runs.back().second;
      else s.col_runs.push_back({c, 1});
    }
    s.short_runs = !s.col_runs.empty() && cut.cols.size() < 8 * s.col_runs.size();
    sources.push_back(std::move(s));
    const Source& src = sources.back();
    const int64_t block = static_cast<int64_t>(
        std::max<uint64_t>(1, kPieceBytes / std::max<uint64_t>({1, src.src_row, src.dst_row})));
    for (int64_t r = 0; r < src.out_rows; r += block) pieces.push_back({i, r, std::min(src.out_rows, r + block)});
  }

  CheckpointWriter writer(out_dir, target_config, specs, write_options, options.overwrite);
  // Pieces taken round-robin over the shards (each shard's in file order): the file system serialises buffered
  // writes to one file, so threads writing different shards copy into the page cache in parallel.
  {
    std::vector<std::vector<Piece>> by_shard;
    for (const Piece& p : pieces) {
      const size_t k = writer.shard_of(p.source);
      if (by_shard.size() <= k) by_shard.resize(k + 1);
      by_shard[k].push_back(p);
    }
    pieces.clear();
    for (size_t j = 0;; ++j) {
      bool any = false;
      for (auto& list : by_shard)
        if (j < list.size()) pieces.push_back(list[j]), any = true;
      if (!any) break;
    }
  }
  const int threads = std::max(1, std::min<int>(options.threads > 0 ? options.threads : auto_threads(),
                                                static_cast<int>(pieces.size())));
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> written{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex mu;
  std::condition_variable cv;
  int running = threads;
  auto work = [&] {
    std::vector<uint8_t> buffer;
    try {
      for (size_t k; !stop && (k = next++) < pieces.size();) {
        if (interrupted()) fail("interrupted while writing ", out_dir, "; nothing was written");
        const Piece& p = pieces[k];
        const Source& s = sources[p.source];
        write_piece(s, p, writer, buffer);
        written += static_cast<uint64_t>(p.r1 - p.r0) * s.dst_row;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
      stop = true;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (--running == 0) cv.notify_all();
  };
  Progress progress("prune", static_cast<int64_t>(total_bytes >> 20), "MiB");
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work);
  int64_t reported = 0;
  {
    std::unique_lock<std::mutex> lock(mu);
    while (running > 0) {
      cv.wait_for(lock, std::chrono::milliseconds(200));
      const int64_t mib = static_cast<int64_t>(written.load() >> 20);
      if (mib > reported) progress.advance(mib - reported), reported = mib;
    }
  }
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  writer.commit();
  progress.finish();
}

NemotronH prune_in_memory(const NemotronH& parent, const PrunePlan& plan) {
  MP_CHECK(parent.config().pattern() == plan.source.pattern() && parent.num_parameters() == count_parameters(plan.source),
           "prune_in_memory: the model is not the one the plan was made for (pattern ", parent.config().pattern(),
           ", plan's ", plan.source.pattern(), ")");
  std::map<std::string, at::Tensor> params;
  const auto& from = parent.parameters();
  for (auto& cut : plan_tensor_cuts(plan)) params[cut.out.name] = cut_tensor(from.at(cut.source_name).detach(), cut);
  if (plan.target.tie_word_embeddings && from.at("lm_head.weight").is_same(from.at("backbone.embeddings.weight")))
    params["lm_head.weight"] = params["backbone.embeddings.weight"];  // keep them one tensor
  return NemotronH(plan.target, std::move(params));
}

}  // namespace mp
