// Trainer checkpoints: everything needed to continue bit for bit, written atomically.
#include "distill/trainer_state.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <fstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/fsdp.h"
#include "minipuzzle/report.h"
#include "minipuzzle/safetensors.h"


namespace mp::distill {

std::string checkpoint_dir(const std::string& out_dir) { return fs::join(out_dir, "checkpoint"); }

// JSON has no NaN; skipped steps are stored as null.
static json losses_to_json(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(std::isfinite(x) ? json(x) : json(nullptr));
  return a;
}
static std::vector<double> losses_from_json(const json& a) {
  std::vector<double> v;
  for (auto& x : a) v.push_back(x.is_null() ? NAN : x.get<double>());
  return v;
}

static json state_json(const TrainerState& state, int64_t optimizer_steps) {
  return {{"format", "minipuzzle-distill-checkpoint"}, {"version", 1}, {"step", state.step},
          {"cursor", state.cursor}, {"tokens", state.tokens}, {"optimizer_steps", optimizer_steps},
          {"nonfinite_in_a_row", state.nonfinite_in_a_row}, {"skipped_steps", state.skipped_steps},
          {"train_loss", losses_to_json(state.train_loss)}, {"learning_rates", state.learning_rates},
          {"evals", state.evals}, {"settings", state.settings}};
}

// The complete new checkpoint `tmp` replaces OUT/checkpoint: the old one is renamed to checkpoint.prev first and
// removed last, so that a crash at any point leaves a complete checkpoint.
static void commit_checkpoint(const std::string& out_dir, const std::string& tmp) {
  const std::string final_dir = checkpoint_dir(out_dir);
  const std::string prev = fs::join(out_dir, "checkpoint.prev");
  fs::remove_all_quietly(prev);
  if (fs::exists(final_dir)) fs::rename(final_dir, prev);
  fs::rename(tmp, final_dir);
  fs::remove_all_quietly(prev);
}

// OUT/checkpoint, or checkpoint.prev when a save was interrupted between its renames; "" when there is none.
static std::string find_checkpoint(const std::string& out_dir) {
  std::string dir = checkpoint_dir(out_dir);
  if (fs::exists(fs::join(dir, "trainer.json"))) return dir;
  dir = fs::join(out_dir, "checkpoint.prev");
  return fs::exists(fs::join(dir, "trainer.json")) ? dir : "";
}

static json read_checked(const std::string& dir, const TrainerState& state) {
  json j = read_json_file(fs::join(dir, "trainer.json"));  // corrupt file: mp::Error naming it, not a raw parse_error
  MP_CHECK(j.value("format", "") == "minipuzzle-distill-checkpoint", dir,
           "/trainer.json is not a minipuzzle distillation checkpoint");
  // Settings that define the step sequence must match, or "resume" would silently train something else.
  json saved = j["settings"];
  // A plain run's checkpoint records the global batch as its three factors (a sharded run may split it otherwise).
  if (!saved.contains("global_batch") && saved.contains("micro_batch") && saved.contains("grad_accum") &&
      saved.contains("world_size"))
    saved["global_batch"] = saved["micro_batch"].get<int64_t>() * saved["grad_accum"].get<int64_t>() *
                            saved["world_size"].get<int64_t>();
  for (auto& [k, v] : state.settings.items()) {
    MP_CHECK(saved.contains(k) && saved[k] == v, "distill: cannot resume from ", dir, ": setting \"", k, "\" was ",
             saved.value(k, json()).dump(), ", now ", v.dump(),
             "; rerun with the original settings or use a new output directory");
  }
  return j;
}

static void restore_counters(const json& j, TrainerState& state) {
  state.step = j.at("step").get<int64_t>();
  state.cursor = j.at("cursor").get<int64_t>();
  state.tokens = j.at("tokens").get<int64_t>();
  state.nonfinite_in_a_row = j.value("nonfinite_in_a_row", int64_t(0));
  state.skipped_steps = j.value("skipped_steps", int64_t(0));
  state.train_loss = losses_from_json(j.at("train_loss"));
  state.learning_rates = j.at("learning_rates").get<std::vector<double>>();
  state.evals = j.at("evals");
}

void save_trainer_state(const std::string& out_dir, const TrainerState& state, const AdamW& optimizer) {
  const std::string final_dir = checkpoint_dir(out_dir);
  const std::string tmp = fs::join(out_dir, "checkpoint.tmp-" + std::to_string(getpid()));
  const std::string prev = fs::join(out_dir, "checkpoint.prev");
  fs::remove_all_quietly(tmp);
  fs::create_directories(tmp);
  try {
    std::map<std::string, at::Tensor> tensors;
    for (size_t i = 0; i < optimizer.names().size(); ++i)
      tensors["param/" + optimizer.names()[i]] = optimizer.params()[i].detach().cpu().contiguous();
    for (auto& [k, t] : optimizer.state_tensors()) tensors[k] = t.detach().cpu().contiguous();
    tensors["rng/cpu"] = at::detail::getDefaultCPUGenerator().get_state();
    if (!optimizer.params().empty() && optimizer.params()[0].is_cuda()) {
      auto gen = at::globalContext().defaultGenerator(optimizer.params()[0].device());
      tensors["rng/cuda"] = gen.get_state();
    }
    save_safetensors(fs::join(tmp, "state.safetensors"), tensors);
    report::write_text_file(fs::join(tmp, "trainer.json"), state_json(state, optimizer.steps()).dump(1) + "\n");
  } catch (...) {
    fs::remove_all_quietly(tmp);
    throw;
  }
  commit_checkpoint(out_dir, tmp);
}

bool load_trainer_state(const std::string& out_dir, TrainerState& state, AdamW& optimizer) {
  std::string dir = checkpoint_dir(out_dir);
  if (!fs::exists(fs::join(dir, "trainer.json"))) {
    dir = fs::join(out_dir, "checkpoint.prev");  // interrupted between the two renames of a save
    if (!fs::exists(fs::join(dir, "trainer.json"))) return false;
  }
  json j = read_json_file(fs::join(dir, "trainer.json"));
  MP_CHECK(!j.contains("sharded"), "distill: ", dir, " is a sharded checkpoint (--shard ",
           j["sharded"].value("mode", std::string("zero3")), "); resume it with --shard zero2 or zero3");
  j = read_checked(dir, state);
  auto file = SafetensorsFile::open(fs::join(dir, "state.safetensors"));
  std::map<std::string, at::Tensor> tensors;
  for (auto& info : file->tensors()) tensors[info.name] = file->tensor(info.name);
  {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < optimizer.names().size(); ++i) {
      auto it = tensors.find("param/" + optimizer.names()[i]);
      MP_CHECK(it != tensors.end(), "distill: checkpoint ", dir, " lacks parameter ", optimizer.names()[i]);
      MP_CHECK(it->second.sizes() == optimizer.params()[i].sizes(), "distill: checkpoint parameter ",
               optimizer.names()[i], " has shape ", it->second.sizes(), ", the student has ",
               optimizer.params()[i].sizes());
      at::Tensor p = optimizer.params()[i];
      p.copy_(it->second);
    }
  }
  optimizer.load_state(tensors, j.at("optimizer_steps").get<int64_t>());
  at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the global generator
  cpu_gen.set_state(tensors.at("rng/cpu").clone());
  if (tensors.count("rng/cuda") && !optimizer.params().empty() && optimizer.params()[0].is_cuda()) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(optimizer.params()[0].device());
    cuda_gen.set_state(tensors.at("rng/cuda").clone());
  }
  state.step = j.at("step").get<int64_t>();
  state.cursor = j.at("cursor").get<int64_t>();
  state.tokens = j.at("tokens").get<int64_t>();
  state.nonfinite_in_a_row = j.value("nonfinite_in_a_row", int64_t(0));
  state.skipped_steps = j.value("skipped_steps", int64_t(0));
  state.train_loss = losses_from_json(j.at("train_loss"));
  state.learning_rates = j.at("learning_rates").get<std::vector<double>>();
  state.evals = j.at("evals");
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Sharded checkpoints (--shard zero2|zero3): OUT/checkpoint/trainer.json (with "sharded": mode, shard group size,
// flat layout) and one shard-RRRRR-of-SSSSS.safetensors per rank of a shard group ("param/UNIT", "exp_avg/UNIT",
// "exp_avg_sq/UNIT", "master/UNIT": the rank's slice of each flat unit). Every rank writes its file into
// OUT/checkpoint.tmp-sharded; after a barrier rank 0 writes trainer.json and commits the directory as above.
static std::string shard_file(int64_t rank, int64_t group) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05lld-of-%05lld.safetensors", (long long)rank, (long long)group);
  return buf;
}

void save_sharded_trainer_state(const std::string& out_dir, const TrainerState& state, const ShardedStudent& student,
                                Communicator* comm) {
  const std::string tmp = fs::join(out_dir, "checkpoint.tmp-sharded");
  const bool leader = communicator_rank(comm) == 0;
  if (leader) {
    fs::remove_all_quietly(tmp);
    fs::create_directories(tmp);
  }
  barrier(comm);
  const std::map<std::string, at::Tensor> tensors = student.shard_state();
  // Replicas (hybrid sharding) hold the same shards: the first shard group writes them.
  if (student.replica_index() == 0)
    save_safetensors(fs::join(tmp, shard_file(student.shard_rank(), student.shard_group_size())), tensors);
  barrier(comm);
  if (leader) {
    json j = state_json(state, student.optimizer().steps());
    j["sharded"] = {{"mode", shard_mode_name(student.mode())}, {"shard_group_size", student.shard_group_size()},
                    {"layout", student.layout().to_json()}};
    report::write_text_file(fs::join(tmp, "trainer.json"), j.dump(1) + "\n");
    commit_checkpoint(out_dir, tmp);
  }
  barrier(comm);
}

bool load_sharded_trainer_state(const std::string& out_dir, TrainerState& state, ShardedStudent& student) {
  const std::string dir = find_checkpoint(out_dir);
  if (dir.empty()) return false;
  const json j = read_checked(dir, state);
  const FlatLayout& layout = student.layout();
  std::function<at::Tensor(size_t, const std::string&, int64_t, int64_t)> get;
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  // A flat unit's elements [begin, begin + length) as float32 (zeros past the unit's tensors).
  if (j.contains("sharded")) {
    MP_CHECK(j["sharded"]["layout"] == layout.to_json(), "distill: the sharded checkpoint in ", dir,
             " has another parameter layout than this student (another model shape?)");
    const int64_t old_group = j["sharded"]["shard_group_size"].get<int64_t>();
    for (int64_t k = 0; k < old_group; ++k) files.push_back(SafetensorsFile::open(fs::join(dir, shard_file(k, old_group))));
    get = [&, old_group](size_t u, const std::string& kind, int64_t begin, int64_t length) {
      at::Tensor out = at::zeros({length}, at::kFloat);
      const std::string& unit = layout.units[u].name;
      const int64_t old_len = layout.units[u].shard_length(old_group);
      for (int64_t k = begin / old_len; k < old_group && k * old_len < begin + length; ++k) {
        const int64_t a = std::max(begin, k * old_len), b = std::min(begin + length, (k + 1) * old_len);
        if (a >= b) continue;
        std::string name = kind + "/" + unit;
        if (kind == "master" && !files[size_t(k)]->find(name)) name = "param/" + unit;  // saved from fp32 parameters
        MP_CHECK(files[size_t(k)]->find(name), "distill: ", files[size_t(k)]->path(), " lacks \"", name, "\"");
        out.narrow(0, a - begin, b - a).copy_(files[size_t(k)]->tensor(name).narrow(0, a - k * old_len, b - a));
      }
      return out;
    };
  } else {
    // A checkpoint of the plain trainer (per-tensor state): the same elements, assembled per unit.
    files.push_back(SafetensorsFile::open(fs::join(dir, "state.safetensors")));
    get = [&](size_t u, const std::string& kind, int64_t begin, int64_t length) {
      at::Tensor out = at::zeros({length}, at::kFloat);
      for (auto& e : layout.units[u].entries) {
        const int64_t a = std::max(begin, e.offset), b = std::min(begin + length, e.offset + e.numel);
        if (a >= b) continue;
        std::string name = kind + "/" + e.names[0];
        if (kind == "master" && !files[0]->find(name)) name = "param/" + e.names[0];
        MP_CHECK(files[0]->find(name), "distill: ", files[0]->path(), " lacks \"", name, "\"");
        out.narrow(0, a - begin, b - a).copy_(files[0]->tensor(name).reshape(-1).narrow(0, a - e.offset, b - a));
      }
      return out;
    };
  }
  student.load_shard_state(get, j.at("optimizer_steps").get<int64_t>());
  restore_counters(j, state);
  return true;
}

}  // namespace mp::distill
