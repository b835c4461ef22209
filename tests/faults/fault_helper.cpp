// A small program the fault-injection tests drive (test_faults.cpp): it performs one save or load of the tool's
// persistent state so that the test can break it from outside - a file-size limit (disk full) or kill -9 at a
// random moment - and then check what is left on disk.
//
//   fault_helper trainer-save OUT STEP [FSIZE_BYTES]  save a distill trainer checkpoint whose every parameter and
//                                                    moment equals STEP; with FSIZE_BYTES, the save runs under
//                                                    RLIMIT_FSIZE (SIGXFSZ ignored, so write() fails with EFBIG)
//   fault_helper trainer-save-loop OUT FIRST          save steps FIRST, FIRST+1, ... forever, printing "saved N"
//   fault_helper trainer-load OUT                     load (what `distill --resume` does) and print "step N" if
//                                                    every tensor and the JSON agree on N; exit 1 otherwise
//   fault_helper model-save OUT FSIZE_BYTES NAN        write_checkpoint of a small random Nemotron-H model (vocab
//                                                    300); FSIZE_BYTES 0: no limit; NAN 1: one weight is NaN
//   fault_helper make-tokens NAME COUNT               a token file of COUNT ids below 300 (4 documents)
//
// The trainer state is made large (PARAM_ELEMENTS floats per tensor) so that a save takes long enough for a
// kill to land inside it.
#include <ATen/ATen.h>
#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "distill/trainer_state.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/error.h"

namespace {

constexpr int64_t kParamElements = 1 << 20;  // 4 MiB per tensor, 4 tensors and 8 moments: ~48 MiB per save

std::map<std::string, at::Tensor> make_params(double value) {
  std::map<std::string, at::Tensor> p;
  for (const char* name : {"backbone.embeddings.weight", "backbone.layers.0.mixer.in_proj.weight",
                           "backbone.layers.0.norm.weight", "lm_head.weight"})
    p[name] = at::full({kParamElements}, value, at::kFloat);
  return p;
}

void limit_file_size(const char* bytes) {
  signal(SIGXFSZ, SIG_IGN);
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = std::strtoull(bytes, nullptr, 10);
  if (setrlimit(RLIMIT_FSIZE, &lim) != 0) {
    std::perror("setrlimit");
    std::exit(2);
  }
}

void save_step(const std::string& out, int64_t step) {
  auto params = make_params(double(step));
  mp::distill::AdamW opt(params, {});
  std::map<std::string, at::Tensor> state;
  for (auto& [k, t] : opt.state_tensors()) state[k] = at::full_like(t, double(step));
  opt.load_state(state, step);
  mp::distill::TrainerState st;
  st.step = step;
  st.cursor = step * 3;
  st.tokens = step * 100;
  st.train_loss.assign(size_t(step), 1.0);
  st.learning_rates.assign(size_t(step), 1e-4);
  st.settings = {{"seq_len", 8}, {"seed", 1}};
  mp::distill::save_trainer_state(out, st, opt);
}

int load(const std::string& out) {
  auto params = make_params(-1.0);
  mp::distill::AdamW opt(params, {});
  mp::distill::TrainerState st;
  st.settings = {{"seq_len", 8}, {"seed", 1}};
  if (!mp::distill::load_trainer_state(out, st, opt)) {
    std::printf("no checkpoint\n");
    return 1;
  }
  const double want = double(st.step);
  bool ok = st.cursor == st.step * 3 && st.tokens == st.step * 100 && int64_t(st.train_loss.size()) == st.step &&
            opt.steps() == st.step;
  for (const auto& p : opt.params()) ok = ok && p.eq(want).all().item<bool>();
  for (auto& [k, t] : opt.state_tensors()) ok = ok && t.eq(want).all().item<bool>();
  std::printf("step %lld %s\n", static_cast<long long>(st.step), ok ? "consistent" : "INCONSISTENT");
  return ok ? 0 : 1;
}

void save_model(const std::string& out, bool with_nan) {
  mp::json j = {{"hybrid_override_pattern", "M*-"}, {"vocab_size", 300}, {"hidden_size", 64},
                {"intermediate_size", 128}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                {"head_dim", 16}, {"mamba_num_heads", 8}, {"mamba_head_dim", 16}, {"n_groups", 2},
                {"ssm_state_size", 16}, {"conv_kernel", 4}, {"chunk_size", 16}};
  mp::ModelConfig config = mp::ModelConfig::from_json(j, "fault_helper config");
  mp::CheckpointWriteOptions options;
  options.dtype = mp::DType::F32;
  options.max_shard_bytes = 64 << 10;  // several shards, so a failure can land between files too
  at::manual_seed(0);
  mp::write_checkpoint(out, config, mp::expected_tensors(config),
                       [&](const mp::TensorSpec& s) {
                         at::Tensor t = at::randn(s.shape) * 0.05;
                         if (with_nan && s.name.find("layers.0.mixer.in_proj") != std::string::npos)
                           t.view(-1)[0] = std::nan("");
                         return t;
                       },
                       options);
}

// Written here from the format in token_file.h (not with TokenFileWriter), so the helper needs no data stage.
void make_tokens(const std::string& name, int64_t count) {
  std::vector<uint32_t> ids;
  std::vector<uint64_t> offsets{0};
  for (int64_t i = 0; i < count; ++i) {
    ids.push_back(static_cast<uint32_t>((i * 7919 + i / 13) % 300));
    if ((i + 1) % (count / 4 > 0 ? count / 4 : 1) == 0 || i + 1 == count) offsets.push_back(uint64_t(i + 1));
  }
  auto write = [](const std::string& path, const void* data, size_t n) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    MP_CHECK(f && std::fwrite(data, 1, n, f) == n && std::fclose(f) == 0, "cannot write ", path);
  };
  write(name + ".tokens", ids.data(), ids.size() * 4);  // little-endian host (x86-64, aarch64)
  std::string index("MPTIDX1\0", 8);
  auto put64 = [&](uint64_t v) {
    for (int b = 0; b < 8; ++b) index.push_back(static_cast<char>(v >> (8 * b)));
  };
  put64(offsets.size() - 1);
  for (uint64_t o : offsets) put64(o);
  write(name + ".index", index.data(), index.size());
  mp::json meta = {{"format", "minipuzzle-tokens"}, {"version", 1},
                   {"tokenizer", {{"kind", "byte_level"}, {"path", ""}, {"sha256", std::string(64, '0')}}},
                   {"vocab_size", 300}, {"eos_id", nullptr}, {"eos_appended", false},
                   {"num_tokens", ids.size()}, {"num_documents", offsets.size() - 1},
                   {"sources", {"fault_helper"}}, {"split", "all"}, {"dtype", "uint32_le"}};
  std::string text = meta.dump(1);
  write(name + ".json", text.data(), text.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: fault_helper trainer-save|trainer-save-loop|trainer-load|model-save OUT ...\n");
    return 2;
  }
  const std::string mode = argv[1], out = argv[2];
  try {
    if (mode == "trainer-save" && argc >= 4) {
      if (argc >= 5) limit_file_size(argv[4]);
      save_step(out, std::atoll(argv[3]));
      std::printf("saved %s\n", argv[3]);
    } else if (mode == "trainer-save-loop" && argc >= 4) {
      for (int64_t step = std::atoll(argv[3]);; ++step) {
        save_step(out, step);
        std::printf("saved %lld\n", static_cast<long long>(step));
        std::fflush(stdout);
      }
    } else if (mode == "trainer-load") {
      return load(out);
    } else if (mode == "model-save" && argc >= 5) {
      if (std::atoll(argv[3]) > 0) limit_file_size(argv[3]);
      save_model(out, std::atoi(argv[4]) != 0);
      std::printf("saved model\n");
    } else if (mode == "make-tokens" && argc >= 4) {
      make_tokens(out, std::atoll(argv[3]));
      std::printf("wrote tokens\n");
    } else {
      std::fprintf(stderr, "fault_helper: unknown mode %s\n", mode.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
