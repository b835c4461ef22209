// Checkpoint directories: open (validating against the config), write (streamed, sharded, atomic).
#include "minipuzzle/checkpoint.h"

#include <ATen/ATen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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
  MP_CHECK(::access(parent.c_str(), W_OK) == 0, out_dir, ": parent directory ", parent, " is not writable");
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

void write_checkpoint(const std::string& out_dir, const ModelConfig& config, const std::vector<TensorSpec>& specs,
                      const TensorProducer& produce, const CheckpointWriteOptions& options, bool overwrite) {
  check_output_dir(out_dir, overwrite);
  const std::string out = fs::absolute(out_dir);
  TempDir tmp{out + ".tmp-" + std::to_string(::getpid())};
  fs::remove_all(tmp.path);
  fs::create_directories(tmp.path);

  // Assign tensors to shards in order, starting a new shard when the next tensor would overflow the limit.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_size = 0, total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    uint64_t b = spec_bytes(specs[i], specs[i].dtype.value_or(options.dtype));
    if (!shards.back().empty() && shard_size + b > options.max_shard_bytes) {
      shards.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(i);
    shard_size += b;
    total += b;
  }
  auto shard_name = [&](size_t k) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    return std::string(buf);
  };
  json weight_map = json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    std::vector<SafetensorsWriter::Spec> ws;
    for (size_t i : shards[k]) ws.push_back({specs[i].name, specs[i].dtype.value_or(options.dtype), specs[i].shape});
    SafetensorsWriter writer(fs::join(tmp.path, shard_name(k)), ws);
    for (size_t i : shards[k]) {
      MP_CHECK(!interrupted(), "interrupted while writing ", out_dir, "; nothing was written");
      writer.write(specs[i].name, produce(specs[i]));
      weight_map[specs[i].name] = shard_name(k);
    }
    writer.close();
  }
  if (shards.size() > 1) {
    json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_json_file(fs::join(tmp.path, "model.safetensors.index.json"), index);
  }
  json cfg = config.to_json();
  cfg["dtype"] = options.dtype == DType::BF16 ? "bfloat16" : options.dtype == DType::F16 ? "float16" : "float32";
  write_json_file(fs::join(tmp.path, "config.json"), cfg);
  for (auto& f : options.copy_files) fs::copy_file(f, fs::join(tmp.path, fs::filename(f)));
  MP_CHECK(!interrupted(), "interrupted while writing ", out_dir, "; nothing was written");
  if (overwrite && fs::exists(out)) fs::remove_all(out);
  fs::rename(tmp.path, out);
  tmp.committed = true;
}

}  // namespace mp
