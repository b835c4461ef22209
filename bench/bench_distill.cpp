// One distillation step of the trainer (mp::distill::train_step: teacher forward, student forward + fused
// lm_head/KD loss, backward, gradient clipping, AdamW on fp32 masters) for a ~1B student and a ~2B teacher with
// random Nemotron-H weights in bf16; prints JSON (tokens/s, peak memory). bench/bench_distill_torch.py runs the
// equivalent PyTorch loop (transformers models, eager KD) on the configs this program writes (--config-dir).
// --activation-checkpointing runs the student's layers through mp::distill::checkpointed (--checkpoint-layers K
// per segment), as `minipuzzle distill --activation-checkpointing` does; scripts/gpu/distill.sh runs it beside the
// plain step and compares peak memory, tokens/s and the losses.
// --offline-k K (issue 28): the teacher is saved, `teacher-logits` (mp::write_teacher_logits) stores its top-K rows
// of the step's windows under --store-dir, the teacher is freed, and the step trains from the store
// (OfflineTeacher + sparse_kd_loss): tokens/s and peak memory without the teacher resident, plus the store's
// bytes/token and the teacher pass's tokens/s.
// Usage: bench_distill [--batch 2] [--seq 2048] [--steps 4] [--warmup 2] [--device cuda|cpu] [--tiny]
//        [--no-fused] [--activation-checkpointing] [--checkpoint-layers 1] [--config-dir DIR]
//        [--offline-k K --store-dir DIR]
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include "minipuzzle/fs.h"
#include <fstream>
#include <string>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif
#include "bench/gpu_timer.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/teacher_logits.h"
#include "minipuzzle/token_file.h"

using namespace mp;

namespace {

// Nemotron-H-like shapes (vocabulary 131072, Mamba-2 heads of 64, 8 groups, state 128, GQA attention).
ModelConfig make_config(int64_t hidden, int64_t ffn, const std::string& pattern, int64_t attn_heads, int64_t kv_heads,
                        int64_t mamba_heads, int64_t vocab) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", vocab}, {"hidden_size", hidden}, {"intermediate_size", ffn},
         {"hybrid_override_pattern", pattern}, {"num_attention_heads", attn_heads},
         {"num_key_value_heads", kv_heads}, {"head_dim", hidden / attn_heads}, {"mamba_num_heads", mamba_heads},
         {"mamba_head_dim", 64}, {"n_groups", 8}, {"ssm_state_size", 128}, {"conv_kernel", 4},
         {"chunk_size", 128}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "bfloat16"}};
  return ModelConfig::from_json(j, "bench config");
}

#ifdef MINIPUZZLE_WITH_CUDA
// The caching allocator knows a device only after its first allocation, and "cuda" has no index (-1):
// allocate once and ask for the current device, or the stats calls abort with "Invalid device argument".
c10::DeviceIndex allocator_device(c10::Device device) {
  (void)at::empty({1}, at::TensorOptions().device(device));
  return device.has_index() ? device.index() : c10::cuda::current_device();
}
#endif

double peak_gib(c10::Device device) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(allocator_device(device));
    return double(stats.allocated_bytes[0].peak) / double(1ull << 30);
  }
#endif
  return 0.0;
}

void reset_peak(c10::Device device) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(allocator_device(device));
#endif
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 2, seq = 2048;
  int steps = 4, warmup = 2;
  bool checkpointing = false;
  int64_t layers_per_segment = 1;
  bool tiny = false, fused = true;
  int64_t offline_k = 0;
  std::string store_dir = "/tmp/bench_distill_store";
  std::string device_name = at::hasCUDA() ? "cuda" : "cpu", config_dir;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return std::string(argv[++i]); };
    if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(next());
    else if (!std::strcmp(argv[i], "--seq")) seq = std::stoll(next());
    else if (!std::strcmp(argv[i], "--steps")) steps = std::stoi(next());
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::stoi(next());
    else if (!std::strcmp(argv[i], "--device")) device_name = next();
    else if (!std::strcmp(argv[i], "--tiny")) tiny = true;
    else if (!std::strcmp(argv[i], "--no-fused")) fused = false;
    else if (!std::strcmp(argv[i], "--activation-checkpointing")) checkpointing = true;
    else if (!std::strcmp(argv[i], "--checkpoint-layers")) layers_per_segment = std::stoll(next());
    else if (!std::strcmp(argv[i], "--config-dir")) config_dir = next();
    else if (!std::strcmp(argv[i], "--offline-k")) offline_k = std::stoll(next());
    else if (!std::strcmp(argv[i], "--store-dir")) store_dir = next();
  }
  c10::Device device(device_name);
  const at::ScalarType dtype = device.is_cuda() ? at::kBFloat16 : at::kFloat;
  // ~1.0B student (16 layers, hidden 2048) and ~2.1B teacher (20 layers, hidden 3072); --tiny for a CPU smoke run.
  ModelConfig student_cfg = tiny ? make_config(128, 256, "M-M*", 4, 2, 8, 512)
                                 : make_config(2048, 8192, "M-M-M*-M-M-M*-M-", 16, 4, 64, 131072);
  ModelConfig teacher_cfg = tiny ? make_config(192, 384, "M-M*M-", 4, 2, 16, 512)
                                 : make_config(3072, 12288, "M-M-M*-M-M-M-M*-M-M-", 24, 8, 96, 131072);
  if (!config_dir.empty()) {
    mp::fs::create_directories(config_dir + "/student");
    mp::fs::create_directories(config_dir + "/teacher");
    std::ofstream(config_dir + "/student/config.json") << student_cfg.to_json().dump(2);
    std::ofstream(config_dir + "/teacher/config.json") << teacher_cfg.to_json().dump(2);
  }

  NemotronH student = NemotronH::random_init(student_cfg, 1, device, dtype);
  std::unique_ptr<distill::Teacher> teacher =
      std::make_unique<distill::ModelTeacher>(NemotronH::random_init(teacher_cfg, 2, device, dtype));
  student.set_requires_grad(true);
  distill::AdamW optimizer(student.parameters(), {});
  distill::GradientSync sync(nullptr, optimizer.params(), int64_t(25) << 20);
  distill::LossOptions loss;
  loss.alpha = 0.5;
  loss.temperature = 1.0;
  loss.fused_lm_head = fused;
  loss.checkpoint_layers = checkpointing ? layers_per_segment : 0;
  at::Generator gen = at::detail::createCPUGenerator(3);
  distill::Batch b;
  b.input_ids = at::randint(0, student_cfg.vocab_size, {batch, seq}, gen, at::kLong);
  b.labels = at::randint(0, student_cfg.vocab_size, {batch, seq}, gen, at::kLong);
  json offline;
  if (offline_k > 0) {
    // One document whose packed windows are the step's batch; the teacher's rows of them go to a store on disk.
    mp::fs::remove_all(store_dir);
    mp::fs::create_directories(store_dir);
    const at::Tensor doc = at::randint(0, student_cfg.vocab_size, {batch * seq + 1}, gen, at::kLong);
    std::vector<uint32_t> ids(size_t(doc.numel()));
    for (int64_t i = 0; i < doc.numel(); ++i) ids[size_t(i)] = uint32_t(doc[i].item<int64_t>());
    TokenFileMetadata meta;
    meta.tokenizer_kind = "byte_level";
    meta.vocab_size = uint32_t(student_cfg.vocab_size);
    TokenFileWriter w(store_dir + "/data", meta);
    w.add_document(ids);
    w.finish();
    auto& model_teacher = static_cast<distill::ModelTeacher&>(*teacher);
    model_teacher.model().save(store_dir + "/teacher", DType::BF16);
    teacher.reset();  // the writer loads it again, as the CLI would
#ifdef MINIPUZZLE_WITH_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    TeacherLogitsOptions o;
    o.teacher = store_dir + "/teacher";
    o.data = store_dir + "/data";
    o.out_dir = store_dir + "/logits";
    o.top_k = offline_k;
    o.seq_len = seq;
    o.batch_size = batch;
    o.device = device.is_cuda() ? "cuda" : "cpu";
    const TeacherLogitsResult r = write_teacher_logits(o);
#ifdef MINIPUZZLE_WITH_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
    teacher = std::make_unique<distill::OfflineTeacher>(std::vector<std::string>{o.out_dir});
    distill::PackedWindows windows(std::make_shared<const TokenFile>(TokenFile::open(o.data)), seq);
    std::vector<int64_t> all;
    for (int64_t i = 0; i < batch; ++i) all.push_back(i);
    b = distill::make_batch(windows, all);
    offline = {{"top_k", offline_k}, {"bytes_per_token", r.bytes_per_token}, {"row_bytes", r.row_bytes},
               {"teacher_logits_tokens_per_s", r.tokens_per_s}, {"teacher_resident", false}};
  }

  std::vector<double> losses, times;
  auto one_step = [&] {
    auto t0 = std::chrono::steady_clock::now();
    distill::StepResult r = distill::train_step(student, teacher.get(), optimizer, sync, nullptr, {b}, 1e-4, 1.0, loss);
    bench::synchronize(device);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    losses.push_back(r.loss);
  };
  for (int i = 0; i < warmup; ++i) one_step();
  reset_peak(device);
  times.clear();
  for (int i = 0; i < steps; ++i) one_step();
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double step_s = sorted[sorted.size() / 2];
  json out{{"bench", "distill_step"}, {"implementation", "minipuzzle"}, {"device", device.str()},
           {"dtype", device.is_cuda() ? "bf16 params, fp32 masters + AdamW moments" : "float32"},
           {"loss_path", offline_k > 0 ? "sparse_kd_loss on logits (offline top-k)"
                         : device.is_cuda() && fused ? "linear_kd (fused lm_head + KD)" : "kd_loss on logits"},
           {"offline", offline},
           {"activation_checkpointing", loss.checkpoint_layers > 0 ? json(loss.checkpoint_layers) : json(false)},
           {"student_params", count_parameters(student_cfg)}, {"teacher_params", count_parameters(teacher_cfg)},
           {"batch", batch}, {"seq", seq}, {"tokens_per_step", batch * seq}, {"steps_timed", steps},
           {"step_s_median", step_s}, {"tokens_per_s", double(batch * seq) / step_s},
           {"peak_memory_gib", peak_gib(device)}, {"losses", losses}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
