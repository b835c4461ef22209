// Offline teacher logits (issue 28): run the teacher once over the training data and store, per token, its top-k
// ids and logits plus the log-sum-exp of the full row (so the tail's mass is exact), compressed, in shards with a
// manifest; distillation then reads them instead of running the teacher (distill --teacher-logits DIR, which
// serves them through mp::distill::OfflineTeacher and trains with mp::sparse_kd_loss).
// The format is documented in docs/TEACHER_LOGITS.md; this header is its only writer and reader.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "minipuzzle/json.h"

namespace mp {

// ---- One row's codec: fixed-size rows of row_bytes() bytes ----
enum class LogitEncoding : uint32_t {
  bf16 = 1,  // each kept logit as the bfloat16 of its gap below the row's maximum (the maximum in float32)
  q8 = 2,    // each gap as one byte: q = round(255 * sqrt(gap / range)), range = the largest kept gap (float32)
  f32 = 3,   // each logit as float32, lossless (tests, exactness checks)
};
LogitEncoding logit_encoding_from_name(const std::string& name);  // "bf16" | "q8" | "f32"
const char* logit_encoding_name(LogitEncoding encoding);

struct RowCodec {
  int64_t vocab = 0, k = 0;
  int id_bits = 0;         // ceil(log2(vocab)), at least 1
  LogitEncoding encoding = LogitEncoding::bf16;
  int lse_count = 1;       // full-row log-sum-exps stored per row (one per temperature)
  // Ids: Elias-Fano over the ids sorted ascending (low_bits = floor(log2(vocab / k)) low bits per id, then the high
  // parts in unary: k + ((vocab - 1) >> low_bits) + 1 bits), when that is smaller than id_bits per id; the logits
  // are then stored in the same (id) order. Otherwise id_bits per id in descending order of the logits.
  bool elias_fano = false;
  int low_bits = 0;
  int64_t id_bytes() const;

  RowCodec() = default;
  RowCodec(int64_t vocab, int64_t k, LogitEncoding encoding, int lse_count);
  int64_t row_bytes() const;
  // ids [k] and logits [k] of one row in descending order of the logits (as at::topk gives them), lse [lse_count].
  // Decoded rows come back in the stored order (ascending ids under Elias-Fano); the loss does not depend on it.
  void encode(const int64_t* ids, const float* logits, const float* lse, uint8_t* out) const;
  // The inverse (logits as decoded: bf16 or q8 rounding of the gaps below the exact maximum).
  void decode(const uint8_t* in, int32_t* ids, float* logits, float* lse) const;
};

// FNV-1a 64 of a window's input ids (as little-endian uint32): how a served batch finds its stored window.
uint64_t window_hash(const int64_t* ids, int64_t count);

// ---- Writing: `minipuzzle teacher-logits` ----
struct TeacherLogitsOptions {
  std::string teacher;                 // HF checkpoint directory
  std::string data;                    // any data argument of minipuzzle/data_input.h
  std::string data_format = "auto";
  std::string tokenizer;               // for text data; "" the teacher's, else bytes
  std::string out_dir;
  int64_t top_k = 64;
  int64_t seq_len = 512;               // must equal distill's --seq-len (windows are the trainer's PackedWindows)
  int64_t batch_size = 4;              // windows per teacher forward
  std::string device = "cpu";          // cpu | cuda
  std::vector<double> temperatures{1.0};  // the row's lse at each (1 is always included: validation KL uses it)
  std::string logit_encoding = "bf16"; // bf16 | q8
  int64_t windows_per_shard = 0;       // 0: about 256 MiB per shard
  int64_t max_windows = 0;             // 0: every window of the data
  int threads = 0;
};

struct TeacherLogitsResult {
  int64_t windows = 0, tokens = 0;           // in the store
  int64_t shards = 0, shards_written = 0, shards_skipped = 0;
  int64_t bytes = 0;                         // all shard files
  double bytes_per_token = 0;                // bytes / tokens (rows, window hashes and shard headers)
  double row_bytes = 0;                      // the row alone
  double seconds = 0, tokens_per_s = 0;      // of this run's teacher work (skipped shards excluded)
  bool interrupted = false;                  // SIGINT/SIGTERM: finished shards are kept; rerun to resume
};

// Runs the teacher over every window and writes DIR/shard-NNNNN.bin and DIR/manifest.json, each atomically.
// Shards already present and valid (header, size, and window hashes equal to this data's) are skipped, so a rerun
// resumes; a DIR made with other settings is refused. Progress through mp::Progress.
TeacherLogitsResult write_teacher_logits(const TeacherLogitsOptions& options);

// ---- Reading ----
class TeacherLogitsStore {
 public:
  // Opens DIR/manifest.json (which must say complete) and maps every shard; checks headers against the manifest.
  static std::shared_ptr<TeacherLogitsStore> open(const std::string& dir);
  ~TeacherLogitsStore();
  const json& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  const RowCodec& codec() const { return codec_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t windows() const { return windows_; }
  const std::vector<double>& temperatures() const { return temperatures_; }
  // Window index of the stored window whose input ids hash to `hash`, or -1.
  int64_t find(uint64_t hash) const;
  // Decodes window w into ids [seq_len, k], logits [seq_len, k], lse [seq_len, lse_count] (row-major buffers).
  void decode_window(int64_t w, int32_t* ids, float* logits, float* lse) const;

  struct Shard;

 private:
  TeacherLogitsStore() = default;
  std::string dir_;
  json manifest_;
  RowCodec codec_;
  int64_t seq_len_ = 0, windows_ = 0, windows_per_shard_ = 0;
  std::vector<double> temperatures_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::unordered_map<uint64_t, int64_t> by_hash_;
};

}  // namespace mp
