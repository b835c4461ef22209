// safetensors: a validating, memory-mapped reader and a streaming writer.
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {str: str}}, then the data. Every header is checked before any tensor is touched.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mp {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, U16, U32, U64, BOOL, F8_E4M3, F8_E5M2 };

const char* dtype_name(DType d);               // safetensors spelling, e.g. "BF16"
DType dtype_from_name(const std::string& s, const std::string& what);
size_t dtype_size(DType d);
at::ScalarType to_scalar_type(DType d);
DType from_scalar_type(at::ScalarType t);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// Limits on outside input: a header larger than this or more tensors than this is refused.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;
constexpr size_t kMaxSafetensorsTensors = 1u << 20;

class SafetensorsFile {
 public:
  // Maps the file read-only and validates the header; throws mp::Error naming the file and the problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Validates header bytes alone (no file needed): used by open() and the fuzz target.
  static std::vector<TensorInfo> parse_header(const uint8_t* data, uint64_t size, const std::string& what,
                                              std::map<std::string, std::string>* metadata = nullptr);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  const uint8_t* data(const TensorInfo& info) const { return data_ + info.begin; }
  // Where a tensor's bytes start in the file (for readers that go around the map: copy_file_range, pread).
  uint64_t file_offset(const TensorInfo& info) const {
    return static_cast<uint64_t>(data_ - static_cast<const uint8_t*>(map_)) + info.begin;
  }
  // A tensor viewing the mapped bytes (no copy); it keeps the mapping alive. Read-only: clone before writing.
  at::Tensor tensor(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  uint64_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// Streaming writer: the header (all names, dtypes, shapes) is fixed at construction, then tensors are written
// one at a time in that order, so a whole model never needs to be in memory.
class SafetensorsWriter {
 public:
  struct Spec {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(const std::string& path, std::vector<Spec> specs,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  // What the file holds before the data (8-byte length + JSON header padded to 8 bytes) and where each spec's
  // data starts in the file: the writer's exact layout, for writers that fill files positionally.
  struct Layout {
    std::string prefix;
    std::vector<uint64_t> file_offsets, nbytes;
  };
  static Layout layout(const std::vector<Spec>& specs,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  // Writes the next tensor; it must match the next spec's name, dtype and shape. Accepts any device/layout.
  void write(const std::string& name, const at::Tensor& tensor);
  void write_bytes(const std::string& name, const void* data, uint64_t nbytes);
  void close();  // checks that every spec was written, flushes; throws on I/O errors (disk full)

 private:
  std::string path_;
  std::vector<Spec> specs_;
  size_t next_ = 0;
  int fd_ = -1;
};

// Convenience: writes a name->tensor map in one file (names sorted). For small files (logits, test data).
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors);

}  // namespace mp
