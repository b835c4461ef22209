// Checkpoint directories: open (validating against the config), write (streamed, sharded, atomic).
#include "minipuzzle/checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/json.h"


namespace mp {

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  std::vector<TensorSpec> t;
  t.push_back({"backbone.embeddings.weight", {c.vocab_size, c.hidden_size}, {}});
  for (int64_t i = 0; i < c.num_layers(); ++i) {
    std::string p = "backbone.layers." + std::to_string(i) + ".";
    t.push_back({p + "norm.weight", {c.hidden_size}, {}});
    std::string m = p + "mixer.";
    switch (c.layers[i]) {
      case LayerType::Mamba: {
        t.push_back({m + "A_log", {c.mamba_num_heads}, {}});
        t.push_back({m + "D", {c.mamba_num_heads}, {}});
        if (c.use_conv_bias) t.push_back({m + "conv1d.bias", {c.mamba_conv_dim()}, {}});
        t.push_back({m + "conv1d.weight", {c.mamba_conv_dim(), 1, c.conv_kernel}, {}});
        t.push_back({m + "dt_bias", {c.mamba_num_heads}, {}});
        if (c.use_bias) t.push_back({m + "in_proj.bias", {c.mamba_in_proj_dim()}, {}});
        t.push_back({m + "in_proj.weight", {c.mamba_in_proj_dim(), c.hidden_size}, {}});
        t.push_back({m + "norm.weight", {c.mamba_d_inner()}, {}});
        if (c.use_bias) t.push_back({m + "out_proj.bias", {c.hidden_size}, {}});
        t.push_back({m + "out_proj.weight", {c.hidden_size, c.mamba_d_inner()}, {}});
        break;
      }
      case LayerType::Attention:
        t.push_back({m + "k_proj.weight", {c.num_key_value_heads * c.head_dim, c.hidden_size}, {}});
        t.push_back({m + "o_proj.weight", {c.hidden_size, c.num_attention_heads * c.head_dim}, {}});
        t.push_back({m + "q_proj.weight", {c.num_attention_heads * c.head_dim, c.hidden_size}, {}});
        t.push_back({m + "v_proj.weight", {c.num_key_value_heads * c.head_dim, c.hidden_size}, {}});
        break;
      case LayerType::Mlp:
        if (c.mlp_bias) t.push_back({m + "down_proj.bias", {c.hidden_size}, {}});
        t.push_back({m + "down_proj.weight", {c.hidden_size, c.intermediate_size}, {}});
        if (c.mlp_bias) t.push_back({m + "up_proj.bias", {c.intermediate_size}, {}});
        t.push_back({m + "up_proj.weight", {c.intermediate_size, c.hidden_size}, {}});
        break;
      case LayerType::Moe: {
        // As NVIDIA's checkpoints and transformers' save_pretrained store them: one tensor per routed expert
        // (transformers fuses them into 3-D parameters in memory only), the router's correction bias in fp32.
        const int64_t d = c.moe_expert_dim();
        for (int64_t e = 0; e < c.n_routed_experts; ++e) {
          std::string x = m + "experts." + std::to_string(e) + ".";
          t.push_back({x + "down_proj.weight", {d, c.moe_intermediate_size}, {}});
          t.push_back({x + "up_proj.weight", {c.moe_intermediate_size, d}, {}});
        }
        if (c.moe_latent_size > 0) {
          if (c.mlp_bias) t.push_back({m + "fc1_latent_proj.bias", {c.moe_latent_size}, {}});
          t.push_back({m + "fc1_latent_proj.weight", {c.moe_latent_size, c.hidden_size}, {}});
          if (c.mlp_bias) t.push_back({m + "fc2_latent_proj.bias", {c.hidden_size}, {}});
          t.push_back({m + "fc2_latent_proj.weight", {c.hidden_size, c.moe_latent_size}, {}});
        }
        t.push_back({m + "gate.e_score_correction_bias", {c.n_routed_experts}, DType::F32});
        t.push_back({m + "gate.weight", {c.n_routed_experts, c.hidden_size}, {}});
        const int64_t s = c.moe_shared_expert_intermediate_size;
        if (c.mlp_bias) t.push_back({m + "shared_experts.down_proj.bias", {c.hidden_size}, {}});
        t.push_back({m + "shared_experts.down_proj.weight", {c.hidden_size, s}, {}});
        if (c.mlp_bias) t.push_back({m + "shared_experts.up_proj.bias", {s}, {}});
        t.push_back({m + "shared_experts.up_proj.weight", {s, c.hidden_size}, {}});
        break;
      }
    }
  }
  t.push_back({"backbone.norm_f.weight", {c.hidden_size}, {}});
  // Always listed: transformers 5.x never ties NemotronH's lm_head (it saves and loads lm_head.weight even with
  // tie_word_embeddings), so we always write it; a tied checkpoint without it reads the embeddings instead.
  t.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, {}});
  return t;
}

int64_t count_parameters(const ModelConfig& config) {
  int64_t n = 0;
  for (auto& s : expected_tensors(config)) {
    if (config.tie_word_embeddings && s.name == "lm_head.weight") continue;  // shared with the embeddings
    int64_t k = 1;
    for (auto d : s.shape) k *= d;
    n += k;
  }
  return n;
}

static std::string canonical_name(const std::string& name) {
  if (name.rfind("model.", 0) == 0) return "backbone." + name.substr(6);
  return name;
}

Checkpoint Checkpoint::open(const std::string& dir) {
  MP_CHECK(fs::is_directory(dir), dir, ": not a directory (expected a Hugging Face checkpoint directory)");
  Checkpoint ck;
  ck.dir_ = dir;
  ck.config_ = load_config(dir);
  std::vector<std::string> shard_files;
  const std::string index = fs::join(dir, "model.safetensors.index.json");
  if (fs::exists(index)) {
    json j = read_json_file(index);
    MP_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index, ": missing \"weight_map\"");
    std::set<std::string> seen;
    for (auto& [name, file] : j["weight_map"].items()) {
      MP_CHECK(file.is_string(), index, ": weight_map entry for ", name, " must be a file name");
      std::string f = file.get<std::string>();
      MP_CHECK(f.find('/') == std::string::npos && f.find("..") == std::string::npos, index,
               ": shard name \"", f, "\" must be a plain file name in the checkpoint directory");
      if (seen.insert(f).second) shard_files.push_back(f);
    }
  } else {
    MP_CHECK(fs::exists(fs::join(dir, "model.safetensors")), dir,
             ": no model.safetensors or model.safetensors.index.json found");
    shard_files.push_back("model.safetensors");
  }
  for (auto& f : shard_files) {
    auto file = SafetensorsFile::open(fs::join(dir, f));
    size_t idx = ck.files_.size();
    ck.files_.push_back(file);
    for (auto& info : file->tensors()) {
      std::string name = canonical_name(info.name);
      MP_CHECK(!ck.tensors_.count(name), dir, ": tensor \"", name, "\" appears in more than one shard");
      ck.tensors_[name] = {idx, &info};
    }
  }
  if (ck.config_.tie_word_embeddings && !ck.tensors_.count("lm_head.weight") &&
      ck.tensors_.count("backbone.embeddings.weight")) {
    ck.tensors_["lm_head.weight"] = ck.tensors_["backbone.embeddings.weight"];
  }
  for (auto& spec : expected_tensors(ck.config_)) {
    auto it = ck.tensors_.find(spec.name);
    MP_CHECK(it != ck.tensors_.end(), dir, ": tensor \"", spec.name, "\" is missing (the config implies it)");
    MP_CHECK(it->second.second->shape == spec.shape, dir, ": tensor \"", spec.name, "\" has shape ",
             at::IntArrayRef(it->second.second->shape), " but the config implies ", at::IntArrayRef(spec.shape));
  }
  return ck;
}

std::vector<std::string> Checkpoint::mtp_tensor_names() const {
  std::vector<std::string> names;
  for (auto it = tensors_.lower_bound("mtp."); it != tensors_.end() && it->first.rfind("mtp.", 0) == 0; ++it)
    names.push_back(it->first);
  return names;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  for (auto& [n, _] : tensors_) names.push_back(n);
  return names;
}

bool Checkpoint::has(const std::string& name) const { return tensors_.count(canonical_name(name)) > 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = tensors_.find(canonical_name(name));
  MP_CHECK(it != tensors_.end(), dir_, ": no tensor named \"", name, "\"");
  return *it->second.second;
}

std::pair<const SafetensorsFile*, const TensorInfo*> Checkpoint::locate(const std::string& name) const {
  auto it = tensors_.find(canonical_name(name));
  MP_CHECK(it != tensors_.end(), dir_, ": no tensor named \"", name, "\"");
  return {files_[it->second.first].get(), it->second.second};
}

at::Tensor Checkpoint::tensor(const std::string& name) const {
  auto it = tensors_.find(canonical_name(name));
  MP_CHECK(it != tensors_.end(), dir_, ": no tensor named \"", name, "\"");
  return files_[it->second.first]->tensor(it->second.second->name);
}

DType Checkpoint::storage_dtype() const { return info("backbone.embeddings.weight").dtype; }

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (auto& [_, v] : tensors_) n += v.second->nbytes();
  return n;
}

std::vector<std::string> Checkpoint::extra_files() const {
  static const char* names[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                                "chat_template.jinja"};
  std::vector<std::string> out;
  for (auto* n : names) {
    const std::string p = fs::join(dir_, n);
    if (fs::exists(p)) out.push_back(p);
  }
  return out;
}

void check_output_dir(const std::string& out_dir, bool overwrite) {
  const std::string out = fs::absolute(out_dir);
  const std::string parent = fs::parent(out);
  MP_CHECK(fs::is_directory(parent), out_dir, ": parent directory ", parent, " does not exist");
  MP_CHECK(::access(parent.c_str(), W_OK) == 0, out_dir, ": parent directory ", parent,
           " is not writable");
  // access() trusts permission bits, which root bypasses; read-only mounts and sysfs-like directories refuse
  // anyway. Creating (and removing) a probe directory is the real test, done before any long work starts.
  const std::string probe = fs::join(parent, ".minipuzzle-probe-" + std::to_string(::getpid()));
  if (::mkdir(probe.c_str(), 0700) != 0) {
    int err = errno;
    fail(out_dir, ": parent directory ", parent, " is not writable (", std::strerror(err), ")");
  }
  ::rmdir(probe.c_str());
  MP_CHECK(overwrite || !fs::exists(out), out_dir, ": already exists (choose another output or pass --overwrite)");
}

namespace {
// Removes the temporary directory unless committed: nothing partial is ever left behind.
struct TempDir {
  std::string path;
  bool committed = false;
  ~TempDir() {
    if (!committed) fs::remove_all_quietly(path);
  }
};

uint64_t spec_bytes(const TensorSpec& s, DType d) {
  uint64_t n = dtype_size(d);
  for (auto x : s.shape) n *= static_cast<uint64_t>(x);
  return n;
}
}  // namespace

namespace {
// Tensors assigned to shards in order, a new shard starting when the next tensor would overflow the limit.
struct ShardPlan {
  std::vector<std::vector<size_t>> shards{1};
  uint64_t total = 0;
  std::string name(size_t k) const {
    if (shards.size() == 1) return "model.safetensors";
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    return buf;
  }
};

ShardPlan plan_shards(const std::vector<TensorSpec>& specs, const CheckpointWriteOptions& options) {
  ShardPlan p;
  uint64_t shard_size = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    uint64_t b = spec_bytes(specs[i], specs[i].dtype.value_or(options.dtype));
    if (!p.shards.back().empty() && shard_size + b > options.max_shard_bytes) {
      p.shards.emplace_back();
      shard_size = 0;
    }
    p.shards.back().push_back(i);
    shard_size += b;
    p.total += b;
  }
  return p;
}

std::vector<SafetensorsWriter::Spec> shard_specs(const ShardPlan& p, size_t k, const std::vector<TensorSpec>& specs,
                                                 const CheckpointWriteOptions& options) {
  std::vector<SafetensorsWriter::Spec> ws;
  for (size_t i : p.shards[k]) ws.push_back({specs[i].name, specs[i].dtype.value_or(options.dtype), specs[i].shape});
  return ws;
}

// Everything beside the shards (index, config.json, copied files), then the rename into place.
void finish_directory(const std::string& tmp, const std::string& out, const std::string& out_dir, const ShardPlan& p,
                      const std::vector<TensorSpec>& specs, const ModelConfig& config,
                      const CheckpointWriteOptions& options, bool overwrite) {
  if (p.shards.size() > 1) {
    json weight_map = json::object();
    for (size_t k = 0; k < p.shards.size(); ++k)
      for (size_t i : p.shards[k]) weight_map[specs[i].name] = p.name(k);
    json index{{"metadata", {{"total_size", p.total}}}, {"weight_map", weight_map}};
    write_json_file(fs::join(tmp, "model.safetensors.index.json"), index);
  }
  json cfg = config.to_json();
  cfg["dtype"] = options.dtype == DType::BF16 ? "bfloat16" : options.dtype == DType::F16 ? "float16" : "float32";
  write_json_file(fs::join(tmp, "config.json"), cfg);
  for (auto& f : options.copy_files) {
    try {
      fs::copy_file(f, fs::join(tmp, fs::filename(f)));
    } catch (const Error& e) {
      fail("copying ", f, " into the output failed: ", e.what());
    }
  }
  MP_CHECK(!interrupted(), "interrupted while writing ", out_dir, "; nothing was written");
  if (overwrite && fs::exists(out)) fs::remove_all(out);
  fs::rename(tmp, out);
}

[[noreturn]] void write_failed(const std::string& path, int err) {
  fail(path, ": write failed (", std::strerror(err), "); is the disk full?");
}
}  // namespace

void write_checkpoint(const std::string& out_dir, const ModelConfig& config, const std::vector<TensorSpec>& specs,
                      const TensorProducer& produce, const CheckpointWriteOptions& options, bool overwrite) {
  check_output_dir(out_dir, overwrite);
  const std::string out = fs::absolute(out_dir);
  TempDir tmp{out + ".tmp-" + std::to_string(::getpid())};
  fs::remove_all(tmp.path);
  fs::create_directories(tmp.path);

  const ShardPlan shards = plan_shards(specs, options);
  for (size_t k = 0; k < shards.shards.size(); ++k) {
    SafetensorsWriter writer(fs::join(tmp.path, shards.name(k)), shard_specs(shards, k, specs, options));
    for (size_t i : shards.shards[k]) {
      MP_CHECK(!interrupted(), "interrupted while writing ", out_dir, "; nothing was written");
      writer.write(specs[i].name, produce(specs[i]));
    }
    writer.close();
  }
  finish_directory(tmp.path, out, out_dir, shards, specs, config, options, overwrite);
  tmp.committed = true;
}

// ---------------------------------------------------------------------------------------- CheckpointWriter

CheckpointWriter::CheckpointWriter(const std::string& out_dir, const ModelConfig& config,
                                   const std::vector<TensorSpec>& specs, const CheckpointWriteOptions& options,
                                   bool overwrite)
    : out_dir_(out_dir), config_(config), specs_(specs), options_(options), overwrite_(overwrite) {
  check_output_dir(out_dir, overwrite);
  tmp_ = fs::absolute(out_dir) + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp_);
  fs::create_directories(tmp_);
  try {
    const ShardPlan plan = plan_shards(specs_, options_);
    places_.resize(specs_.size());
    for (size_t k = 0; k < plan.shards.size(); ++k) {
      auto shard = std::make_unique<Shard>();
      shard->name = plan.name(k);
      shard->path = fs::join(tmp_, shard->name);
      const auto layout = SafetensorsWriter::layout(shard_specs(plan, k, specs_, options_));
      shard->fd = ::open(shard->path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      MP_CHECK(shard->fd >= 0, shard->path, ": cannot create (", std::strerror(errno), ")");
      shards_.push_back(std::move(shard));
      Shard& sh = *shards_.back();
      for (size_t j = 0; j < plan.shards[k].size(); ++j) {
        places_[plan.shards[k][j]] = {k, layout.file_offsets[j], layout.nbytes[j]};
        sh.bytes += layout.nbytes[j];
      }
      sh.remaining = sh.bytes;  // counts down as ranges arrive; the range that takes it to 0 queues the fsync
      ssize_t done = 0;
      for (size_t off = 0; off < layout.prefix.size(); off += static_cast<size_t>(done)) {
        done = ::pwrite(sh.fd, layout.prefix.data() + off, layout.prefix.size() - off, static_cast<off_t>(off));
        if (done < 0 && errno == EINTR) done = 0;
        else if (done <= 0) write_failed(sh.path, errno);
      }
      if (sh.bytes == 0 && ::fsync(sh.fd) != 0) fail(sh.path, ": flushing failed (", std::strerror(errno), ")");
    }
    const char* mode = std::getenv("MINIPUZZLE_WRITEBACK");
    // Default: the kernel's own writeback (on a 2-core machine, starting it early from a thread took 2x as
    // long: scripts/bench_prune.sh mid).
    early_writeback_ = mode && std::string(mode) == "early";
    flush_thread_ = std::thread([this] { flusher(); });
  } catch (...) {
    for (auto& sh : shards_)
      if (sh->fd >= 0) ::close(sh->fd);
    fs::remove_all_quietly(tmp_);
    throw;
  }
}

CheckpointWriter::~CheckpointWriter() {
  stop_flusher();
  for (auto& sh : shards_)
    if (sh->fd >= 0) ::close(sh->fd);
  if (!committed_) {
    fs::remove_all_quietly(tmp_);
  }
}

void CheckpointWriter::wrote(size_t tensor, uint64_t offset, uint64_t n) {
  const size_t k = places_[tensor].shard;
  Shard& sh = *shards_[k];
  const bool complete = sh.remaining.fetch_sub(n) == n;  // this range completed the shard
  if (!early_writeback_ && !complete) return;
  {
    std::lock_guard<std::mutex> lock(flush_mu_);
    if (early_writeback_) flush_queue_.push_back({k, places_[tensor].file_offset + offset, n});
    if (complete) flush_queue_.push_back({k, 0, 0});
  }
  flush_cv_.notify_one();
}

// Writeback off the writers' threads: starting it (sync_file_range) allocates blocks and queues I/O in the
// caller, and an fsync waits for the disk; here neither holds up the cutting and writing.
void CheckpointWriter::flusher() {
  for (;;) {
    Flush f;
    {
      std::unique_lock<std::mutex> lock(flush_mu_);
      flush_cv_.wait(lock, [&] { return flush_stop_ || !flush_queue_.empty(); });
      if (flush_queue_.empty()) return;
      f = flush_queue_.front();
      flush_queue_.pop_front();
    }
    Shard& sh = *shards_[f.shard];
    if (f.n > 0) {
      ::sync_file_range(sh.fd, static_cast<off_t>(f.offset), static_cast<off_t>(f.n), SYNC_FILE_RANGE_WRITE);
    } else if (::fsync(sh.fd) != 0) {
      std::lock_guard<std::mutex> lock(flush_mu_);
      if (flush_error_.empty())
        flush_error_ = sh.path + ": flushing failed (" + std::strerror(errno) + "); is the disk full?";
    }
  }
}

void CheckpointWriter::stop_flusher() {
  if (!flush_thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(flush_mu_);
    flush_stop_ = true;
  }
  flush_cv_.notify_one();
  flush_thread_.join();
}

void CheckpointWriter::write(size_t tensor, uint64_t offset, const void* data, uint64_t n) {
  if (n == 0) return;
  const Place& p = places_.at(tensor);
  MP_CHECK(offset + n <= p.nbytes, out_dir_, ": write past the end of tensor \"", specs_[tensor].name, "\"");
  const Shard& sh = *shards_[p.shard];
  const char* src = static_cast<const char*>(data);
  uint64_t at = p.file_offset + offset, left = n;
  while (left > 0) {
    ssize_t w = ::pwrite(sh.fd, src, std::min<uint64_t>(left, 1u << 30), static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) write_failed(sh.path, w < 0 ? errno : ENOSPC);
    src += w, at += static_cast<uint64_t>(w), left -= static_cast<uint64_t>(w);
  }
  wrote(tensor, offset, n);
}

void CheckpointWriter::copy(size_t tensor, uint64_t offset, int src_fd, uint64_t src_offset, uint64_t n) {
  if (n == 0) return;
  const Place& p = places_.at(tensor);
  MP_CHECK(offset + n <= p.nbytes, out_dir_, ": copy past the end of tensor \"", specs_[tensor].name, "\"");
  const Shard& sh = *shards_[p.shard];
  loff_t in = static_cast<loff_t>(src_offset), at = static_cast<loff_t>(p.file_offset + offset);
  uint64_t left = n;
  while (left > 0) {
    ssize_t w = ::copy_file_range(src_fd, &in, sh.fd, &at, std::min<uint64_t>(left, 1u << 30), 0);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF)) {
      // Not between these files (other file systems, old kernels): through a buffer.
      std::vector<char> buf(std::min<uint64_t>(left, 8u << 20));
      while (left > 0) {
        ssize_t r = ::pread(src_fd, buf.data(), std::min<uint64_t>(left, buf.size()), in);
        if (r < 0 && errno == EINTR) continue;
        MP_CHECK(r > 0, "reading the parent failed (", r < 0 ? std::strerror(errno) : "unexpected end of file", ")");
        for (ssize_t o = 0; o < r;) {
          ssize_t ww = ::pwrite(sh.fd, buf.data() + o, static_cast<size_t>(r - o), at);
          if (ww < 0 && errno == EINTR) continue;
          if (ww <= 0) write_failed(sh.path, ww < 0 ? errno : ENOSPC);
          o += ww, at += ww;
        }
        in += r, left -= static_cast<uint64_t>(r);
      }
      break;
    }
    if (w < 0) write_failed(sh.path, errno);
    MP_CHECK(w > 0, "copying from the parent: unexpected end of file at offset ", in);
    left -= static_cast<uint64_t>(w);
  }
  wrote(tensor, offset, n);
}

void CheckpointWriter::commit() {
  MP_CHECK(!committed_, out_dir_, ": committed twice");
  for (auto& sh : shards_)
    MP_CHECK(sh->remaining == 0, sh->path, ": ", sh->remaining.load(), " of ", sh->bytes, " bytes were not written");
  stop_flusher();  // every shard's fsync has run once it returns
  MP_CHECK(flush_error_.empty(), flush_error_);
  for (auto& sh : shards_) {
    int rc = ::close(sh->fd);
    sh->fd = -1;
    MP_CHECK(rc == 0, sh->path, ": closing failed (", std::strerror(errno), "); is the disk full?");
  }
  finish_directory(tmp_, fs::absolute(out_dir_), out_dir_, plan_shards(specs_, options_), specs_, config_, options_,
                   overwrite_);
  committed_ = true;
}

}  // namespace mp
