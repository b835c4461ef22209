// Hugging Face checkpoint directories: config.json plus one or several safetensors shards
// (model.safetensors.index.json). Reading is memory-mapped; writing streams tensor by tensor into a
// temporary directory that is renamed into place only when everything is on disk.
#pragma once
#include <ATen/core/Tensor.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "minipuzzle/config.h"
#include "minipuzzle/safetensors.h"

namespace mp {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::optional<DType> dtype;  // storage dtype; unset: the writer's default
};

// Every tensor a Nemotron-H checkpoint of this configuration holds, in a canonical order, with its shape.
// Names use the `backbone.` prefix that NVIDIA's and transformers' saves use.
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);

// Parameter count of a configuration (from the shapes above; tied lm_head counted once).
int64_t count_parameters(const ModelConfig& config);

class Checkpoint {
 public:
  // Opens a directory; validates config.json, every shard header, and that each expected tensor is present with
  // the shape the config implies. Throws mp::Error naming the file and the problem.
  static Checkpoint open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  std::vector<std::string> tensor_names() const;
  // The multi-token-prediction tensors (`mtp.*`, NVIDIA's MTP layers; transformers ignores them), in name order.
  std::vector<std::string> mtp_tensor_names() const;
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  // Memory-mapped view (no copy); `model.` prefixed names are accepted as aliases of `backbone.`.
  at::Tensor tensor(const std::string& name) const;
  // The shard and header entry holding a tensor (raw bytes, file offsets: for copies that bypass at::Tensor).
  std::pair<const SafetensorsFile*, const TensorInfo*> locate(const std::string& name) const;
  DType storage_dtype() const;  // dtype of the embedding table: the checkpoint's working precision
  uint64_t total_bytes() const;
  // Files beside the weights that a derived checkpoint should carry (tokenizer, generation config, ...).
  std::vector<std::string> extra_files() const;

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> tensors_;
};

struct CheckpointWriteOptions {
  uint64_t max_shard_bytes = 5ull << 30;  // as transformers' default
  DType dtype = DType::BF16;              // storage dtype of floating tensors
  std::vector<std::string> copy_files;    // absolute paths copied into the output (tokenizer files, ...)
};

// Produces tensor `spec.name` on demand, so the writer holds one tensor at a time.
using TensorProducer = std::function<at::Tensor(const TensorSpec& spec)>;

// Writes config.json, shards (model.safetensors, or model-0000k-of-0000n.safetensors + index) into
// `out_dir`.tmp-<pid>, then renames it to `out_dir`. Refuses to overwrite an existing out_dir unless
// `overwrite`; on any error (disk full, interrupt) the temporary directory is removed and nothing is left.
void write_checkpoint(const std::string& out_dir, const ModelConfig& config, const std::vector<TensorSpec>& specs,
                      const TensorProducer& produce, const CheckpointWriteOptions& options, bool overwrite = false);

// The same files as write_checkpoint, filled positionally: the layout (shards, headers, every tensor's offset) is
// fixed at construction, then any thread writes any byte range of any tensor, in any order. A flusher thread
// fsyncs each shard as soon as its last byte is in, so the writers never wait on the disk; with
// MINIPUZZLE_WRITEBACK=early it also starts writeback of ranges as they arrive (sync_file_range). commit() waits for the flusher, checks that every byte was written and renames
// the directory into place; without commit() (an error, an interrupt) the destructor removes everything.
class CheckpointWriter {
 public:
  CheckpointWriter(const std::string& out_dir, const ModelConfig& config, const std::vector<TensorSpec>& specs,
                   const CheckpointWriteOptions& options, bool overwrite = false);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  size_t size() const { return places_.size(); }
  uint64_t nbytes(size_t tensor) const { return places_.at(tensor).nbytes; }
  // The shard file a tensor goes to: buffered writes to one file are serialised by the file system (the inode
  // lock), so writers that want to run in parallel spread over shards.
  size_t shard_of(size_t tensor) const { return places_.at(tensor).shard; }
  // Bytes [offset, offset + n) of tensor `tensor`'s data. Thread-safe.
  void write(size_t tensor, uint64_t offset, const void* data, uint64_t n);
  // The same from another file's bytes [src_offset, src_offset + n), copied inside the kernel
  // (copy_file_range; with pread/pwrite where the file systems refuse). Thread-safe.
  void copy(size_t tensor, uint64_t offset, int src_fd, uint64_t src_offset, uint64_t n);
  void commit();

 private:
  struct Shard {
    std::string name, path;
    int fd = -1;
    uint64_t bytes = 0;
    std::atomic<uint64_t> remaining{0};
  };
  struct Place {
    size_t shard = 0;
    uint64_t file_offset = 0, nbytes = 0;
  };
  void wrote(size_t tensor, uint64_t offset, uint64_t n);
  void flusher();
  void stop_flusher();
  struct Flush {
    size_t shard;
    uint64_t offset, n;  // n == 0: fsync the shard
  };
  std::mutex flush_mu_;
  std::condition_variable flush_cv_;
  std::deque<Flush> flush_queue_;
  bool flush_stop_ = false, early_writeback_ = true;
  std::string flush_error_;
  std::thread flush_thread_;
  std::string out_dir_, tmp_;
  ModelConfig config_;
  std::vector<TensorSpec> specs_;
  CheckpointWriteOptions options_;
  bool overwrite_ = false, committed_ = false;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<Place> places_;
};

// Checks an output directory before long work starts: its parent exists and is writable, and it does not
// exist yet (unless overwrite). Throws with a clear message.
void check_output_dir(const std::string& out_dir, bool overwrite);

}  // namespace mp
