// Offline teacher logits (issue 28): the writer (`minipuzzle teacher-logits`) and reader of the store documented in
// docs/TEACHER_LOGITS.md. Rows are fixed-size (RowCodec), so window w of a shard starts at a computed offset and
// the reader maps shards and decodes only the windows a batch asks for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/data_input.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/teacher_logits.h"
#include "minipuzzle/tokenizer.h"

namespace mp {

namespace {

constexpr char kMagic[8] = {'M', 'P', 'T', 'L', 'O', 'G', '0', '1'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kHeaderBytes = 64;
const char* kFormatName = "minipuzzle-teacher-logits";

template <typename T>
void put(uint8_t* p, T v) { std::memcpy(p, &v, sizeof(T)); }  // little-endian hosts only (x86-64, aarch64)
template <typename T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

int bits_for(int64_t vocab) {
  int b = 1;
  while ((int64_t(1) << b) < vocab) ++b;
  return b;
}

struct ShardHeader {
  LogitEncoding encoding;
  uint64_t vocab, k, lse_count, seq_len, first_window, windows, row_bytes;
};

std::string encode_header(const ShardHeader& h) {
  std::string s(kHeaderBytes, '\0');
  auto* p = reinterpret_cast<uint8_t*>(s.data());
  std::memcpy(p, kMagic, 8);
  put<uint32_t>(p + 8, kVersion);
  put<uint32_t>(p + 12, uint32_t(h.encoding));
  put<uint64_t>(p + 16, h.vocab);
  put<uint32_t>(p + 24, uint32_t(h.k));
  put<uint32_t>(p + 28, uint32_t(h.lse_count));
  put<uint64_t>(p + 32, h.seq_len);
  put<uint64_t>(p + 40, h.first_window);
  put<uint64_t>(p + 48, h.windows);
  put<uint64_t>(p + 56, h.row_bytes);
  return s;
}

// The header's fields, or a reason it is not a shard header.
bool decode_header(const uint8_t* p, uint64_t size, ShardHeader& h, std::string& why) {
  if (size < uint64_t(kHeaderBytes) || std::memcmp(p, kMagic, 8) != 0) {
    why = "not a teacher-logits shard (magic)";
    return false;
  }
  if (get<uint32_t>(p + 8) != kVersion) {
    why = "shard format version " + std::to_string(get<uint32_t>(p + 8)) + ", expected " + std::to_string(kVersion);
    return false;
  }
  h.encoding = LogitEncoding(get<uint32_t>(p + 12));
  h.vocab = get<uint64_t>(p + 16);
  h.k = get<uint32_t>(p + 24);
  h.lse_count = get<uint32_t>(p + 28);
  h.seq_len = get<uint64_t>(p + 32);
  h.first_window = get<uint64_t>(p + 40);
  h.windows = get<uint64_t>(p + 48);
  h.row_bytes = get<uint64_t>(p + 56);
  const uint64_t expected = uint64_t(kHeaderBytes) + h.windows * (8 + h.seq_len * h.row_bytes);
  if (size != expected) {
    why = "size " + std::to_string(size) + " bytes, the header implies " + std::to_string(expected);
    return false;
  }
  return true;
}

std::string shard_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "shard-%05lld.bin", static_cast<long long>(i));
  return buf;
}

// A read-only mapping of a whole file.
struct Mapped {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  Mapped() = default;
  explicit Mapped(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MP_CHECK(fd >= 0, "teacher logits: cannot open ", path, ": ", std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      fail("teacher logits: cannot stat ", path, ": ", std::strerror(e));
    }
    size = uint64_t(st.st_size);
    if (size > 0) {
      void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
      const int e = errno;
      ::close(fd);
      MP_CHECK(m != MAP_FAILED, "teacher logits: cannot map ", path, ": ", std::strerror(e));
      data = static_cast<const uint8_t*>(m);
    } else {
      ::close(fd);
    }
  }
  ~Mapped() {
    if (data) munmap(const_cast<uint8_t*>(data), size);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
LogitEncoding logit_encoding_from_name(const std::string& name) {
  if (name == "bf16") return LogitEncoding::bf16;
  if (name == "q8") return LogitEncoding::q8;
  if (name == "f32") return LogitEncoding::f32;
  fail("teacher logits: logit encoding must be bf16, q8 or f32, found \"", name, "\"");
}
const char* logit_encoding_name(LogitEncoding e) {
  return e == LogitEncoding::q8 ? "q8" : e == LogitEncoding::f32 ? "f32" : "bf16";
}

RowCodec::RowCodec(int64_t vocab_, int64_t k_, LogitEncoding encoding_, int lse_count_)
    : vocab(vocab_), k(k_), id_bits(bits_for(vocab_)), encoding(encoding_), lse_count(lse_count_) {
  MP_CHECK(vocab > 0 && k >= 1 && k <= vocab, "teacher logits: top-k ", k, " must lie in [1, vocab = ", vocab, "]");
  MP_CHECK(id_bits <= 32, "teacher logits: vocabulary ", vocab, " needs more than 32 bits per id");
  MP_CHECK(lse_count >= 1, "teacher logits: at least one lse per row");
  int l = 0;
  while ((k << (l + 1)) <= vocab) ++l;  // floor(log2(vocab / k))
  low_bits = l;
  const int64_t packed = (k * id_bits + 7) / 8;
  const int64_t ef = (k * l + k + ((vocab - 1) >> l) + 1 + 7) / 8;
  elias_fano = ef < packed;
}

int64_t RowCodec::id_bytes() const {
  if (elias_fano) return (k * low_bits + k + ((vocab - 1) >> low_bits) + 1 + 7) / 8;
  return (k * id_bits + 7) / 8;
}

namespace {
// A little-endian bit stream over a zeroed buffer.
struct BitWriter {
  uint8_t* p;
  int64_t pos = 0;
  void put(uint64_t value, int bits) {
    for (int b = 0; b < bits; ++b, ++pos)
      if ((value >> b) & 1) p[pos >> 3] |= uint8_t(1u << (pos & 7));
  }
  void set(int64_t bit) { p[bit >> 3] |= uint8_t(1u << (bit & 7)); }
};
struct BitReader {
  const uint8_t* p;
  int64_t pos = 0;
  uint64_t get(int bits) {
    uint64_t v = 0;
    for (int b = 0; b < bits; ++b, ++pos) v |= uint64_t((p[pos >> 3] >> (pos & 7)) & 1) << b;
    return v;
  }
};
}  // namespace

int64_t RowCodec::row_bytes() const {
  const int64_t ids = id_bytes();
  const int64_t head = 4 * lse_count + 4 + (encoding == LogitEncoding::q8 ? 4 : 0);
  const int64_t per_logit = encoding == LogitEncoding::q8 ? 1 : encoding == LogitEncoding::f32 ? 4 : 2;
  return head + per_logit * k + ids;
}

void RowCodec::encode(const int64_t* ids_in, const float* logits_in, const float* lse, uint8_t* out) const {
  for (int64_t i = 0; i < k; ++i)
    MP_CHECK(ids_in[i] >= 0 && ids_in[i] < vocab, "teacher logits: id ", ids_in[i], " outside [0, ", vocab, ")");
  const float top = logits_in[0], bottom = logits_in[k - 1];
  // Under Elias-Fano the row is stored in ascending order of the ids.
  std::vector<int64_t> order(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) order[size_t(i)] = i;
  if (elias_fano) std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids_in[a] < ids_in[b]; });
  std::vector<int64_t> ids(static_cast<size_t>(k));
  std::vector<float> logits(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    ids[size_t(i)] = ids_in[order[size_t(i)]];
    logits[size_t(i)] = logits_in[order[size_t(i)]];
  }
  uint8_t* p = out;
  for (int i = 0; i < lse_count; ++i, p += 4) put<float>(p, lse[i]);
  put<float>(p, top);
  p += 4;
  if (encoding == LogitEncoding::q8) {
    const float range = std::max(0.f, top - bottom);
    put<float>(p, range);
    p += 4;
    for (int64_t i = 0; i < k; ++i) {
      const float gap = std::max(0.f, top - logits[i]);
      const float q = range > 0 ? std::nearbyint(255.f * std::sqrt(std::min(1.f, gap / range))) : 0.f;
      p[i] = uint8_t(q);
    }
    p += k;
  } else if (encoding == LogitEncoding::f32) {
    for (int64_t i = 0; i < k; ++i) put<float>(p + 4 * i, logits[i]);
    p += 4 * k;
  } else {
    for (int64_t i = 0; i < k; ++i) {
      const c10::BFloat16 gap(std::max(0.f, top - logits[i]));  // round to nearest even
      put<uint16_t>(p + 2 * i, gap.x);
    }
    p += 2 * k;
  }
  // ids: a little-endian bit stream.
  std::memset(p, 0, size_t(id_bytes()));
  BitWriter w{p};
  if (!elias_fano) {
    for (int64_t i = 0; i < k; ++i) w.put(uint64_t(ids[size_t(i)]), id_bits);
    return;
  }
  const uint64_t low_mask = (uint64_t(1) << low_bits) - 1;
  for (int64_t i = 0; i < k; ++i) {
    MP_CHECK(i == 0 || ids[size_t(i)] > ids[size_t(i - 1)], "teacher logits: id ", ids[size_t(i)],
             " appears twice in one row");
    w.put(uint64_t(ids[size_t(i)]) & low_mask, low_bits);
  }
  const int64_t high = w.pos;
  for (int64_t i = 0; i < k; ++i) w.set(high + (ids[size_t(i)] >> low_bits) + i);
}

void RowCodec::decode(const uint8_t* in, int32_t* ids, float* logits, float* lse) const {
  const uint8_t* p = in;
  for (int i = 0; i < lse_count; ++i, p += 4) lse[i] = get<float>(p);
  const float top = get<float>(p);
  p += 4;
  if (encoding == LogitEncoding::q8) {
    const float range = get<float>(p);
    p += 4;
    for (int64_t i = 0; i < k; ++i) {
      const float u = float(p[i]) / 255.f;
      logits[i] = top - range * u * u;
    }
    p += k;
  } else if (encoding == LogitEncoding::f32) {
    for (int64_t i = 0; i < k; ++i) logits[i] = get<float>(p + 4 * i);
    p += 4 * k;
  } else {
    for (int64_t i = 0; i < k; ++i) {
      c10::BFloat16 gap;
      gap.x = get<uint16_t>(p + 2 * i);
      logits[i] = top - float(gap);
    }
    p += 2 * k;
  }
  BitReader r{p};
  if (!elias_fano) {
    for (int64_t i = 0; i < k; ++i) ids[i] = int32_t(r.get(id_bits));
    return;
  }
  for (int64_t i = 0; i < k; ++i) ids[i] = int32_t(r.get(low_bits));
  int64_t bit = r.pos;
  for (int64_t i = 0; i < k; ++i) {
    while (!((p[bit >> 3] >> (bit & 7)) & 1)) ++bit;
    ids[i] |= int32_t((bit - r.pos - i) << low_bits);
    ++bit;
  }
}

uint64_t window_hash(const int64_t* ids, int64_t count) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t v = uint32_t(ids[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

// ---------------------------------------------------------------------------------------------------------------
namespace {

// What makes two stores the same: a rerun with other values is refused instead of mixing shards.
json store_settings(const TeacherLogitsOptions& o, const RowCodec& codec, const std::vector<double>& temps,
                    int64_t windows, int64_t per_shard, uint64_t data_tokens) {
  return json{{"teacher", fs::absolute(o.teacher)}, {"data", o.data}, {"data_tokens", data_tokens},
              {"vocab_size", codec.vocab}, {"top_k", codec.k}, {"seq_len", o.seq_len},
              {"lse_temperatures", temps}, {"logit_encoding", logit_encoding_name(codec.encoding)},
              {"windows", windows}, {"windows_per_shard", per_shard}};
}

// True when DIR/name is a finished shard for these windows (header, size, hashes); throws when it is a shard of
// other data (hashes differ), so a rerun never mixes two datasets.
bool shard_done(const std::string& path, const ShardHeader& want, const std::vector<uint64_t>& hashes) {
  if (!fs::is_regular_file(path)) return false;
  Mapped m(path);
  ShardHeader h{};
  std::string why;
  if (!decode_header(m.data, m.size, h, why)) return false;  // e.g. an older format: rewritten
  if (h.encoding != want.encoding || h.vocab != want.vocab || h.k != want.k || h.lse_count != want.lse_count ||
      h.seq_len != want.seq_len || h.first_window != want.first_window || h.windows != want.windows ||
      h.row_bytes != want.row_bytes)
    return false;
  const uint64_t block = 8 + h.seq_len * h.row_bytes;
  for (uint64_t w = 0; w < h.windows; ++w)
    MP_CHECK(get<uint64_t>(m.data + kHeaderBytes + w * block) == hashes[w], "teacher-logits: ", path,
             " holds window ", h.first_window + w, " of other tokens than this data's; it was made from other "
             "data: remove the directory or choose another -o");
  return true;
}

}  // namespace

TeacherLogitsResult write_teacher_logits(const TeacherLogitsOptions& o) {
  MP_CHECK(!o.teacher.empty() && !o.data.empty() && !o.out_dir.empty(),
           "teacher-logits: TEACHER, --data and -o are required");
  MP_CHECK(o.seq_len > 0 && o.batch_size > 0, "teacher-logits: --seq-len and --batch-size must be positive");
  MP_CHECK(o.device == "cpu" || o.device == "cuda", "teacher-logits: --device must be cpu or cuda, found \"", o.device, "\"");
  if (o.threads > 0) at::set_num_threads(o.threads);
  std::vector<double> temps{1.0};
  for (double t : o.temperatures) {
    MP_CHECK(std::isfinite(t) && t > 0, "teacher-logits: temperatures must be positive, found ", t);
    if (std::find(temps.begin(), temps.end(), t) == temps.end()) temps.push_back(t);
  }
  const LogitEncoding encoding = logit_encoding_from_name(o.logit_encoding);

  const c10::Device device = o.device == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
#ifndef MINIPUZZLE_WITH_CUDA
  MP_CHECK(!device.is_cuda(), "teacher-logits: --device cuda needs a build with CUDA");
#endif
  const Checkpoint ck = Checkpoint::open(o.teacher);
  const int64_t V = ck.config().vocab_size;
  const RowCodec codec(V, o.top_k, encoding, int(temps.size()));

  std::unique_ptr<Tokenizer> tokenizer = tokenizer_for_data(o.tokenizer, {o.teacher});
  DataInputOptions d;
  d.format = o.data_format;
  d.tokenizer = tokenizer.get();
  d.vocab_size = uint64_t(V);
  d.option = "--data";
  auto file = std::make_shared<const TokenFile>(open_data(o.data, d));
  const distill::PackedWindows windows(file, o.seq_len);
  int64_t count = windows.size();
  if (o.max_windows > 0) count = std::min(count, o.max_windows);
  MP_CHECK(count > 0, "teacher-logits: ", o.data, " holds ", file->num_tokens(), " tokens, fewer than one window of ",
           o.seq_len + 1, "; lower --seq-len");
  const int64_t L = o.seq_len, R = codec.row_bytes();
  const int64_t per_shard = o.windows_per_shard > 0
                                ? o.windows_per_shard
                                : std::max<int64_t>(1, (int64_t(256) << 20) / std::max<int64_t>(1, L * R + 8));
  const int64_t shards = (count + per_shard - 1) / per_shard;
  const json settings = store_settings(o, codec, temps, count, per_shard, file->num_tokens());

  fs::create_directories(o.out_dir);
  const std::string manifest_path = fs::join(o.out_dir, "manifest.json");
  if (fs::exists(manifest_path)) {
    json old = json::parse(fs::read_file(manifest_path), nullptr, false);
    MP_CHECK(!old.is_discarded() && old.value("format", "") == kFormatName, "teacher-logits: ", manifest_path,
             " is not a teacher-logits manifest; choose another -o");
    MP_CHECK(old["settings"] == settings, "teacher-logits: ", o.out_dir, " holds teacher logits made with other "
             "settings (", old["settings"].dump(), "); remove it or choose another -o");
  }
  json manifest{{"format", kFormatName}, {"version", kVersion}, {"complete", false}, {"settings", settings},
                {"row_bytes", R}, {"id_bits", codec.id_bits},
                {"id_encoding", codec.elias_fano ? "elias_fano" : "packed"}, {"shards", json::array()}};
  fs::write_file_atomic(manifest_path, manifest.dump(1) + "\n");

  // Window hashes of the whole data (cheap next to the teacher): they identify windows for the reader and let a
  // rerun check that existing shards were made from these tokens.
  std::vector<uint64_t> hashes(static_cast<size_t>(count));
  for (int64_t w = 0; w < count; ++w) {
    const at::Tensor t = windows.window(w);
    hashes[size_t(w)] = window_hash(t.data_ptr<int64_t>(), L);
  }

  std::unique_ptr<NemotronH> model;  // loaded only when a shard needs writing
  const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  TeacherLogitsResult res;
  res.shards = shards;
  res.windows = count;
  res.tokens = count * L;
  res.row_bytes = double(R);
  std::vector<bool> done(static_cast<size_t>(shards));
  int64_t todo_windows = 0;
  for (int64_t s = 0; s < shards; ++s) {
    const int64_t first = s * per_shard, n = std::min(per_shard, count - first);
    const ShardHeader h{encoding, uint64_t(V), uint64_t(o.top_k), uint64_t(temps.size()), uint64_t(L),
                        uint64_t(first), uint64_t(n), uint64_t(R)};
    const std::vector<uint64_t> mine(hashes.begin() + first, hashes.begin() + first + n);
    done[size_t(s)] = shard_done(fs::join(o.out_dir, shard_name(s)), h, mine);
    if (!done[size_t(s)]) todo_windows += n;
  }
  Progress progress("teacher-logits", todo_windows * L, "tok");
  double work_seconds = 0;
  at::NoGradGuard no_grad;
  for (int64_t s = 0; s < shards && !res.interrupted; ++s) {
    const int64_t first = s * per_shard, n = std::min(per_shard, count - first);
    if (done[size_t(s)]) {
      ++res.shards_skipped;
      continue;
    }
    if (!model) model = std::make_unique<NemotronH>(NemotronH::load(ck, device, dtype));
    const auto t0 = std::chrono::steady_clock::now();
    const ShardHeader h{encoding, uint64_t(V), uint64_t(o.top_k), uint64_t(temps.size()), uint64_t(L),
                        uint64_t(first), uint64_t(n), uint64_t(R)};
    std::string bytes = encode_header(h);
    const int64_t block = 8 + L * R;
    bytes.resize(size_t(kHeaderBytes + n * block));
    auto* base = reinterpret_cast<uint8_t*>(bytes.data()) + kHeaderBytes;
    for (int64_t b0 = 0; b0 < n; b0 += o.batch_size) {
      const int64_t b = std::min(o.batch_size, n - b0);
      std::vector<at::Tensor> rows;
      for (int64_t i = 0; i < b; ++i) rows.push_back(windows.window(first + b0 + i).narrow(0, 0, L));
      const at::Tensor ids = at::stack(rows).to(device);
      const at::Tensor logits = model->forward(ids).to(at::kFloat);  // [b, L, V]
      std::vector<at::Tensor> lses;
      for (double t : temps) lses.push_back(at::logsumexp(t == 1.0 ? logits : logits / t, {-1}));
      const at::Tensor lse = at::stack(lses, -1).cpu().contiguous();  // [b, L, lse_count]
      auto top = at::topk(logits, o.top_k, -1, /*largest=*/true, /*sorted=*/true);
      const at::Tensor tv = std::get<0>(top).cpu().contiguous(), ti = std::get<1>(top).cpu().contiguous();
      const float* pv = tv.data_ptr<float>();
      const int64_t* pi = ti.data_ptr<int64_t>();
      const float* pl = lse.data_ptr<float>();
      for (int64_t i = 0; i < b; ++i) put<uint64_t>(base + (b0 + i) * block, hashes[size_t(first + b0 + i)]);
      at::parallel_for(0, b * L, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t w = r / L, pos = r % L;
          codec.encode(pi + r * o.top_k, pv + r * o.top_k, pl + r * int64_t(temps.size()),
                       base + (b0 + w) * block + 8 + pos * R);
        }
      });
      progress.advance(b * L);
      if (interrupted()) {
        res.interrupted = true;
        break;
      }
    }
    work_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (res.interrupted) break;  // this shard is incomplete: nothing of it is written
    fs::write_file_atomic(fs::join(o.out_dir, shard_name(s)), bytes);
    ++res.shards_written;
    res.seconds = work_seconds;
  }
  res.seconds = work_seconds;
  const int64_t worked = (res.shards_written > 0 || res.interrupted) ? progress.done() : 0;
  res.tokens_per_s = work_seconds > 0 ? double(worked) / work_seconds : 0;
  if (res.interrupted) {
    progress.message("teacher-logits: interrupted; " + std::to_string(res.shards_written + res.shards_skipped) + " of " +
                     std::to_string(shards) + " shards are complete (rerun the same command to resume)");
    return res;
  }
  progress.finish();
  for (int64_t s = 0; s < shards; ++s) {
    const int64_t first = s * per_shard, n = std::min(per_shard, count - first);
    const std::string name = shard_name(s);
    const int64_t size = int64_t(fs::file_size(fs::join(o.out_dir, name)));
    res.bytes += size;
    manifest["shards"].push_back({{"file", name}, {"first_window", first}, {"windows", n}, {"bytes", size}});
  }
  res.bytes_per_token = double(res.bytes) / double(res.tokens);
  manifest["complete"] = true;
  manifest["tokens"] = res.tokens;
  manifest["bytes"] = res.bytes;
  manifest["bytes_per_token"] = res.bytes_per_token;
  fs::write_file_atomic(manifest_path, manifest.dump(1) + "\n");
  return res;
}

// ---------------------------------------------------------------------------------------------------------------
struct TeacherLogitsStore::Shard {
  std::unique_ptr<Mapped> map;
  int64_t first = 0, windows = 0;
};

TeacherLogitsStore::~TeacherLogitsStore() = default;

std::shared_ptr<TeacherLogitsStore> TeacherLogitsStore::open(const std::string& dir) {
  const std::string path = fs::join(dir, "manifest.json");
  MP_CHECK(fs::is_regular_file(path), "teacher logits: ", dir, " has no manifest.json; make it with "
           "`minipuzzle teacher-logits TEACHER --data D -o ", dir, " --top-k K`");
  json m = json::parse(fs::read_file(path), nullptr, false);
  MP_CHECK(!m.is_discarded() && m.value("format", "") == kFormatName, "teacher logits: ", path,
           " is not a teacher-logits manifest");
  MP_CHECK(m.value("version", 0) == int(kVersion), "teacher logits: ", path, " has format version ",
           m.value("version", 0), ", this build reads ", kVersion);
  MP_CHECK(m.value("complete", false), "teacher logits: ", dir, " is incomplete (its writer was interrupted); "
           "rerun the same teacher-logits command to finish it");
  std::shared_ptr<TeacherLogitsStore> st(new TeacherLogitsStore());
  st->dir_ = dir;
  st->manifest_ = m;
  try {
    const json& s = m.at("settings");
    st->temperatures_ = s.at("lse_temperatures").get<std::vector<double>>();
    st->codec_ = RowCodec(s.at("vocab_size").get<int64_t>(), s.at("top_k").get<int64_t>(),
                          logit_encoding_from_name(s.at("logit_encoding").get<std::string>()),
                          int(st->temperatures_.size()));
    st->seq_len_ = s.at("seq_len").get<int64_t>();
    st->windows_ = s.at("windows").get<int64_t>();
    st->windows_per_shard_ = s.at("windows_per_shard").get<int64_t>();
  } catch (const json::exception& e) {
    fail("teacher logits: ", path, ": ", e.what());
  }
  const int64_t R = st->codec_.row_bytes(), block = 8 + st->seq_len_ * R;
  int64_t next = 0;
  for (const json& e : m.at("shards")) {
    auto shard = std::make_unique<Shard>();
    const std::string file = fs::join(dir, e.at("file").get<std::string>());
    shard->map = std::make_unique<Mapped>(file);
    ShardHeader h{};
    std::string why;
    MP_CHECK(decode_header(shard->map->data, shard->map->size, h, why), "teacher logits: ", file, ": ", why);
    MP_CHECK(int64_t(h.first_window) == next && h.k == uint64_t(st->codec_.k) &&
                 h.vocab == uint64_t(st->codec_.vocab) && int64_t(h.seq_len) == st->seq_len_ &&
                 int64_t(h.row_bytes) == R && h.encoding == st->codec_.encoding,
             "teacher logits: ", file, " does not agree with ", path, " (first window ", h.first_window, ", k ", h.k,
             ", seq_len ", h.seq_len, ")");
    shard->first = next;
    shard->windows = int64_t(h.windows);
    for (int64_t w = 0; w < shard->windows; ++w)
      st->by_hash_.emplace(get<uint64_t>(shard->map->data + kHeaderBytes + w * block), next + w);
    next += shard->windows;
    st->shards_.push_back(std::move(shard));
  }
  MP_CHECK(next == st->windows_, "teacher logits: ", path, " lists shards of ", next, " windows, its settings say ",
           st->windows_);
  return st;
}

int64_t TeacherLogitsStore::find(uint64_t hash) const {
  auto it = by_hash_.find(hash);
  return it == by_hash_.end() ? -1 : it->second;
}

void TeacherLogitsStore::decode_window(int64_t w, int32_t* ids, float* logits, float* lse) const {
  MP_CHECK(w >= 0 && w < windows_, "teacher logits: window ", w, " outside [0, ", windows_, ")");
  const Shard& s = *shards_[size_t(w / windows_per_shard_)];
  const int64_t R = codec_.row_bytes(), block = 8 + seq_len_ * R, k = codec_.k, nl = codec_.lse_count;
  const uint8_t* base = s.map->data + kHeaderBytes + (w - s.first) * block + 8;
  for (int64_t pos = 0; pos < seq_len_; ++pos)
    codec_.decode(base + pos * R, ids + pos * k, logits + pos * k, lse + pos * nl);
}

}  // namespace mp
