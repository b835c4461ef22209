// safetensors reader (mmap, validating) and streaming writer.
#include "minipuzzle/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "minipuzzle/error.h"
#include "minipuzzle/json.h"

namespace mp {

namespace {
struct DTypeRow {
  DType d;
  const char* name;
  size_t size;
  at::ScalarType st;
};
const DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8, at::kDouble},       {DType::F32, "F32", 4, at::kFloat},
    {DType::F16, "F16", 2, at::kHalf},         {DType::BF16, "BF16", 2, at::kBFloat16},
    {DType::I64, "I64", 8, at::kLong},         {DType::I32, "I32", 4, at::kInt},
    {DType::I16, "I16", 2, at::kShort},        {DType::I8, "I8", 1, at::kChar},
    {DType::U8, "U8", 1, at::kByte},           {DType::U16, "U16", 2, at::kUInt16},
    {DType::U32, "U32", 4, at::kUInt32},       {DType::U64, "U64", 8, at::kUInt64},
    {DType::BOOL, "BOOL", 1, at::kBool},       {DType::F8_E4M3, "F8_E4M3", 1, at::kFloat8_e4m3fn},
    {DType::F8_E5M2, "F8_E5M2", 1, at::kFloat8_e5m2},
};
const DTypeRow& row(DType d) {
  for (auto& r : kDTypes)
    if (r.d == d) return r;
  fail("internal: unknown dtype");
}
}  // namespace

const char* dtype_name(DType d) { return row(d).name; }
size_t dtype_size(DType d) { return row(d).size; }
at::ScalarType to_scalar_type(DType d) { return row(d).st; }

DType dtype_from_name(const std::string& s, const std::string& what) {
  for (auto& r : kDTypes)
    if (s == r.name) return r.d;
  fail(what, ": unknown dtype \"", s, "\" (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_*)");
}

DType from_scalar_type(at::ScalarType t) {
  for (auto& r : kDTypes)
    if (r.st == t) return r.d;
  fail("safetensors: tensor dtype ", c10::toString(t), " cannot be stored");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::vector<TensorInfo> SafetensorsFile::parse_header(const uint8_t* data, uint64_t size, const std::string& what,
                                                      std::map<std::string, std::string>* metadata) {
  MP_CHECK(size >= 8, what, ": file is ", size, " bytes, too short for a safetensors header (truncated?)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  MP_CHECK(header_len <= kMaxSafetensorsHeaderBytes, what, ": header length ", header_len,
           " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes (corrupt file?)");
  MP_CHECK(header_len <= size - 8, what, ": header length ", header_len, " runs past the end of the file (",
           size, " bytes; truncated download?)");
  const uint64_t data_size = size - 8 - header_len;
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(data) + 8, reinterpret_cast<const char*>(data) + 8 + header_len);
  } catch (const json::exception& e) {
    fail(what, ": header is not valid JSON (", e.what(), ")");
  }
  MP_CHECK(header.is_object(), what, ": header must be a JSON object");
  MP_CHECK(header.size() <= kMaxSafetensorsTensors + 1, what, ": header lists ", header.size(),
           " entries, over the limit of ", kMaxSafetensorsTensors);
  std::vector<TensorInfo> infos;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      MP_CHECK(entry.is_object(), what, ": __metadata__ must be an object of strings");
      for (auto& [k, v] : entry.items()) {
        MP_CHECK(v.is_string(), what, ": __metadata__ value for \"", k, "\" must be a string");
        if (metadata) (*metadata)[k] = v.get<std::string>();
      }
      continue;
    }
    std::string where = what + ": tensor \"" + name + "\"";
    MP_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") && entry.contains("data_offsets"),
             where, ": entry needs dtype, shape and data_offsets");
    MP_CHECK(entry["dtype"].is_string(), where, ": dtype must be a string");
    TensorInfo info;
    info.name = name;
    info.dtype = dtype_from_name(entry["dtype"].get<std::string>(), where);
    MP_CHECK(entry["shape"].is_array() && entry["shape"].size() <= 16, where, ": shape must be a list of at most 16 sizes");
    uint64_t numel = 1;
    for (auto& s : entry["shape"]) {
      MP_CHECK(s.is_number_unsigned() || (s.is_number_integer() && s.get<int64_t>() >= 0), where,
               ": shape entries must be non-negative integers");
      uint64_t d = s.get<uint64_t>();
      // Each size and the product (in bytes too) stay below 2^62, so int64 shapes and byte counts cannot wrap.
      MP_CHECK(d <= (uint64_t(1) << 62) && (d == 0 || numel <= (uint64_t(1) << 62) / d), where,
               ": shape product overflows");
      numel *= d;
      info.shape.push_back(static_cast<int64_t>(d));
    }
    MP_CHECK(numel <= (uint64_t(1) << 62) / dtype_size(info.dtype), where, ": shape x dtype size overflows");
    auto& off = entry["data_offsets"];
    MP_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
             ": data_offsets must be two non-negative integers");
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    MP_CHECK(info.begin <= info.end, where, ": data_offsets [", info.begin, ", ", info.end, "] are reversed");
    MP_CHECK(info.end <= data_size, where, ": data_offsets end ", info.end, " is past the end of the data (",
             data_size, " bytes; truncated file?)");
    uint64_t expect = numel * dtype_size(info.dtype);
    MP_CHECK(expect == info.end - info.begin, where, ": shape x dtype is ", expect, " bytes but data_offsets span ",
             info.end - info.begin);
    infos.push_back(std::move(info));
  }
  std::vector<const TensorInfo*> by_offset;
  for (auto& i : infos) by_offset.push_back(&i);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  const TensorInfo* furthest = nullptr;  // the tensor reaching furthest so far: any later start below it overlaps
  for (const TensorInfo* t : by_offset) {
    if (t->begin == t->end) continue;
    MP_CHECK(!furthest || t->begin >= furthest->end, what, ": tensors \"", furthest ? furthest->name : "", "\" and \"",
             t->name, "\" overlap in the data section");
    if (!furthest || t->end > furthest->end) furthest = t;
  }
  return infos;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat");
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->self_ = f;
  f->path_ = path;
  f->map_size_ = static_cast<uint64_t>(st.st_size);
  if (f->map_size_ > 0) {
    f->map_ = mmap(nullptr, f->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map_ == MAP_FAILED) {
      f->map_ = nullptr;
      ::close(fd);
      fail(path, ": cannot memory-map (", std::strerror(errno), ")");
    }
  }
  ::close(fd);
  const uint8_t* bytes = static_cast<const uint8_t*>(f->map_);
  f->tensors_ = parse_header(bytes, f->map_size_, path, &f->metadata_);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  f->data_ = bytes + 8 + header_len;
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  MP_CHECK(info, path_, ": no tensor named \"", name, "\"");
  auto keep = self_.lock();
  auto options = at::TensorOptions().dtype(to_scalar_type(info->dtype)).device(at::kCPU);
  if (info->numel() == 0) return at::empty(info->shape, options);
  // safetensors data is only guaranteed byte-aligned; copy when the view would be misaligned.
  const uint8_t* ptr = data(*info);
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(info->dtype) != 0) {
    at::Tensor t = at::empty(info->shape, options);
    std::memcpy(t.data_ptr(), ptr, info->nbytes());
    return t;
  }
  return at::from_blob(const_cast<uint8_t*>(ptr), info->shape, [keep](void*) {}, options);
}

// ---------------------------------------------------------------------------------------------------------

static void write_all(int fd, const void* data, uint64_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<uint64_t>(n, 1u << 30));
    if (w < 0 && errno == EINTR) continue;
    MP_CHECK(w > 0, path, ": write failed (", std::strerror(errno), "); is the disk full?");
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

SafetensorsWriter::Layout SafetensorsWriter::layout(const std::vector<Spec>& specs,
                                                   const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  Layout out;
  uint64_t offset = 0;
  for (auto& s : specs) {
    uint64_t n = dtype_size(s.dtype);
    for (auto d : s.shape) n *= static_cast<uint64_t>(d);
    header[s.name] = {{"dtype", dtype_name(s.dtype)}, {"shape", s.shape}, {"data_offsets", {offset, offset + n}}};
    out.file_offsets.push_back(offset);
    out.nbytes.push_back(n);
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section starts 8-byte aligned
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.prefix.push_back(static_cast<char>(static_cast<uint8_t>(n >> (8 * i))));
  out.prefix += text;
  for (auto& o : out.file_offsets) o += out.prefix.size();
  return out;
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Spec> specs,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path), specs_(std::move(specs)) {
  const Layout l = layout(specs_, metadata);
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MP_CHECK(fd_ >= 0, path, ": cannot create (", std::strerror(errno), ")");
  write_all(fd_, l.prefix.data(), l.prefix.size(), path_);
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsWriter::write_bytes(const std::string& name, const void* data, uint64_t nbytes) {
  MP_CHECK(next_ < specs_.size(), path_, ": more tensors written than declared (\"", name, "\")");
  const Spec& s = specs_[next_];
  MP_CHECK(s.name == name, path_, ": expected tensor \"", s.name, "\" next, got \"", name, "\"");
  uint64_t expect = dtype_size(s.dtype);
  for (auto d : s.shape) expect *= static_cast<uint64_t>(d);
  MP_CHECK(expect == nbytes, path_, ": tensor \"", name, "\" has ", nbytes, " bytes, expected ", expect);
  write_all(fd_, data, nbytes, path_);
  ++next_;
}

void SafetensorsWriter::write(const std::string& name, const at::Tensor& tensor) {
  MP_CHECK(next_ < specs_.size(), path_, ": more tensors written than declared (\"", name, "\")");
  const Spec& s = specs_[next_];
  MP_CHECK(tensor.sizes().vec() == s.shape, path_, ": tensor \"", name, "\" has shape ", tensor.sizes(),
           ", declared ", at::IntArrayRef(s.shape));
  at::Tensor t = tensor.to(at::kCPU, to_scalar_type(s.dtype)).contiguous();
  write_bytes(name, t.data_ptr(), static_cast<uint64_t>(t.nbytes()));
}

void SafetensorsWriter::close() {
  if (fd_ < 0) return;
  MP_CHECK(next_ == specs_.size(), path_, ": only ", next_, " of ", specs_.size(), " tensors were written");
  int rc = ::fsync(fd_);
  int rc2 = ::close(fd_);
  fd_ = -1;
  MP_CHECK(rc == 0 && rc2 == 0, path_, ": flushing failed (", std::strerror(errno), "); is the disk full?");
}

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  std::vector<SafetensorsWriter::Spec> specs;
  for (auto& [name, t] : tensors) specs.push_back({name, from_scalar_type(t.scalar_type()), t.sizes().vec()});
  SafetensorsWriter w(path, specs);
  for (auto& [name, t] : tensors) w.write(name, t);
  w.close();
}

}  // namespace mp
