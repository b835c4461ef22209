// Hugging Face checkpoint directories: config.json plus one or several safetensors shards
// (model.safetensors.index.json). Reading is memory-mapped; writing streams tensor by tensor into a
// temporary directory that is renamed into place only when everything is on disk.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
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

// Checks an output directory before long work starts: its parent exists and is writable, and it does not
// exist yet (unless overwrite). Throws with a clear message.
void check_output_dir(const std::string& out_dir, bool overwrite);

}  // namespace mp
