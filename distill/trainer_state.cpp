// Trainer checkpoints: everything needed to continue bit for bit, written atomically.
#include "distill/trainer_state.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
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
    json j{{"format", "minipuzzle-distill-checkpoint"}, {"version", 1}, {"step", state.step},
           {"cursor", state.cursor}, {"tokens", state.tokens}, {"optimizer_steps", optimizer.steps()},
           {"nonfinite_in_a_row", state.nonfinite_in_a_row}, {"skipped_steps", state.skipped_steps},
           {"train_loss", losses_to_json(state.train_loss)}, {"learning_rates", state.learning_rates},
           {"evals", state.evals}, {"settings", state.settings}};
    report::write_text_file(fs::join(tmp, "trainer.json"), j.dump(1) + "\n");
  } catch (...) {
    fs::remove_all_quietly(tmp);
    throw;
  }
  fs::remove_all_quietly(prev);
  if (fs::exists(final_dir)) fs::rename(final_dir, prev);
  fs::rename(tmp, final_dir);
  fs::remove_all_quietly(prev);
}

bool load_trainer_state(const std::string& out_dir, TrainerState& state, AdamW& optimizer) {
  std::string dir = checkpoint_dir(out_dir);
  if (!fs::exists(fs::join(dir, "trainer.json"))) {
    dir = fs::join(out_dir, "checkpoint.prev");  // interrupted between the two renames of a save
    if (!fs::exists(fs::join(dir, "trainer.json"))) return false;
  }
  json j = read_json_file(fs::join(dir, "trainer.json"));  // corrupt file: mp::Error naming it, not a raw parse_error
  MP_CHECK(j.value("format", "") == "minipuzzle-distill-checkpoint", dir,
           "/trainer.json is not a minipuzzle distillation checkpoint");
  // Settings that define the step sequence must match, or "resume" would silently train something else.
  for (auto& [k, v] : state.settings.items()) {
    MP_CHECK(j["settings"].contains(k) && j["settings"][k] == v, "distill: cannot resume from ", dir,
             ": setting \"", k, "\" was ", j["settings"].value(k, json()).dump(), ", now ", v.dump(),
             "; rerun with the original settings or use a new output directory");
  }
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

}  // namespace mp::distill
