// Realising a plan: streamed from the parent's memory map into a new checkpoint, or in memory.
//
// Memory: a mapped file's pages count in the process's resident set once touched, so reading an 8 GB parent
// through the map would hold 8 GB resident by the end. Each parent tensor's pages are therefore released
// (madvise DONTNEED: the mapping stays valid and re-reads from the page cache if touched again) as soon as they
// have been cut, and large tensors are cut in row blocks so that at most one block of the parent is resident
// beside the output tensor.
#include <ATen/ATen.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/pruning.h"

namespace mp {

namespace {

constexpr int64_t kBlockBytes = 64ll << 20;  // parent bytes cut per block

// Drops the process's mapping of [begin, end) (rounded inwards to pages at the end, outwards at the start: a
// page shared with a neighbouring tensor is simply faulted in again if needed).
void release_pages(const void* begin, size_t nbytes) {
  if (!begin || nbytes == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t b = reinterpret_cast<uintptr_t>(begin) & ~(page - 1);
  uintptr_t e = (reinterpret_cast<uintptr_t>(begin) + nbytes) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// Output rows [r0, r1) of a cut, copied with plain loops: ATen's index_select along dim 1 on bf16 costs several
// times a copy, which made pruning 4-5x slower than `cp`. Columns go as runs of consecutive kept indices (memcpy).
void cut_rows_raw(const at::Tensor& source, const TensorCut& cut, const std::vector<std::pair<int64_t, int64_t>>& col_runs,
                  at::Tensor& out, int64_t r0, int64_t r1) {
  const int64_t rows = source.size(0);
  const size_t elem = source.element_size();
  const size_t src_row = static_cast<size_t>(source.numel() / rows) * elem;
  const size_t dst_row = static_cast<size_t>(out.numel() / std::max<int64_t>(1, out.size(0))) * elem;
  const char* src = static_cast<const char*>(source.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(r0, r1, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t from = cut.rows.empty() ? r : cut.rows[static_cast<size_t>(r)];
      const char* s = src + static_cast<size_t>(from) * src_row;
      char* d = dst + static_cast<size_t>(r) * dst_row;
      if (col_runs.empty()) {
        std::memcpy(d, s, src_row);
        continue;
      }
      for (auto& [c, n] : col_runs) {
        std::memcpy(d, s + static_cast<size_t>(c) * elem, static_cast<size_t>(n) * elem);
        d += static_cast<size_t>(n) * elem;
      }
    }
  });
}

// Cuts a memory-mapped parent tensor block by block of output rows, releasing parent pages behind it.
at::Tensor cut_streamed(const at::Tensor& source, const TensorCut& cut) {
  const int64_t rows = source.dim() == 0 ? 1 : source.size(0);
  const int64_t row_bytes = rows ? static_cast<int64_t>(source.nbytes()) / rows : 0;
  const int64_t block = std::max<int64_t>(1, kBlockBytes / std::max<int64_t>(1, row_bytes));
  if (source.dim() == 0) {
    at::Tensor out = cut_tensor(source, cut);
    release_pages(source.data_ptr(), source.nbytes());
    return out;
  }
  const bool ascending = std::is_sorted(cut.rows.begin(), cut.rows.end());
  const int64_t out_rows = cut.rows.empty() ? rows : static_cast<int64_t>(cut.rows.size());
  at::Tensor out = at::empty(cut.out.shape, source.options());
  MP_CHECK(source.is_contiguous() && (cut.cols.empty() || source.dim() == 2), "pruning: cannot stream-cut ",
           cut.source_name);
  std::vector<std::pair<int64_t, int64_t>> col_runs;  // (first column, count) of consecutive kept columns
  for (int64_t c : cut.cols) {
    if (!col_runs.empty() && col_runs.back().first + col_runs.back().second == c) ++col_runs.back().second;
    else col_runs.push_back({c, 1});
  }
  const char* base = static_cast<const char*>(source.data_ptr());
  for (int64_t r0 = 0; r0 < out_rows; r0 += block) {
    const int64_t r1 = std::min(out_rows, r0 + block);
    cut_rows_raw(source, cut, col_runs, out, r0, r1);
    if (ascending) {  // everything before the last row read is done with
      const int64_t last = cut.rows.empty() ? r1 : cut.rows[static_cast<size_t>(r1 - 1)] + 1;
      release_pages(base, static_cast<size_t>(last * row_bytes));
    }
  }
  release_pages(base, source.nbytes());
  return out;
}

}  // namespace

void prune_checkpoint(const Checkpoint& parent, const PrunePlan& plan, const std::string& out_dir,
                      const PruneOptions& options) {
  MP_CHECK(parent.config().pattern() == plan.source.pattern() && parent.config().hidden_size == plan.source.hidden_size &&
               count_parameters(parent.config()) == count_parameters(plan.source),
           parent.dir(), ": this checkpoint is not the model the pruning plan was made for (pattern ",
           parent.config().pattern(), ", plan's ", plan.source.pattern(), ")");
  check_output_dir(out_dir, options.overwrite);
  const std::vector<TensorCut> cuts = plan_tensor_cuts(plan);
  std::map<std::string, const TensorCut*> by_name;
  std::deque<TensorCut> extra_cuts;  // MTP copies (a deque: the pointers in by_name stay valid)
  std::vector<TensorSpec> specs;
  uint64_t total_bytes = 0;
  for (auto& c : cuts) {
    by_name[c.out.name] = &c;
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
      by_name[name] = &extra_cuts.emplace_back(c);
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

  Progress progress("prune", static_cast<int64_t>(total_bytes >> 20), "MiB");
  // A whole tensor handed to the writer straight from the map is released when the next one is asked for.
  const void* pending = nullptr;
  size_t pending_bytes = 0;
  uint64_t written = 0, reported = 0;
  auto produce = [&](const TensorSpec& spec) -> at::Tensor {
    release_pages(pending, pending_bytes);
    pending = nullptr;
    const TensorCut& cut = *by_name.at(spec.name);
    at::Tensor source = parent.tensor(cut.source_name);
    at::Tensor out;
    if (cut.identity()) {  // no copy: the writer reads the mapped bytes
      out = source;
      pending = source.data_ptr();
      pending_bytes = source.nbytes();
    } else {
      out = cut_streamed(source, cut);
    }
    written += out.nbytes();
    int64_t mib = static_cast<int64_t>(written >> 20) - static_cast<int64_t>(reported);
    if (mib > 0) {
      progress.advance(mib);
      reported += static_cast<uint64_t>(mib);
    }
    return out;
  };
  write_checkpoint(out_dir, target_config, specs, produce, write_options, options.overwrite);
  release_pages(pending, pending_bytes);
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
