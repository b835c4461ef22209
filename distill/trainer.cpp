// The distillation loop: wires student, teacher, data, optimizer, gradient sync, checkpoints, log and report.
// Every rank runs this same code; rank 0 alone writes files. See include/minipuzzle/distill.h for the step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <sys/resource.h>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>

#include "distill/elastic.h"
#include "distill/report.h"
#include "distill/router_bias.h"
#include "distill/router_load.h"
#include "distill/trainer_state.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/data_input.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/fsdp.h"
#include "minipuzzle/interrupt.h"
#include "minipuzzle/kd.h"
#include "minipuzzle/progress.h"
#include "minipuzzle/report.h"
#include "minipuzzle/sparse_kd.h"
#include "minipuzzle/tokenizer.h"
#include "minipuzzle/train_memory.h"


namespace mp::distill {
namespace {

void check_options(const DistillOptions& o) {
  MP_CHECK(!o.student.empty(), "distill: --student is required");
  MP_CHECK(o.from_scratch || !o.teacher.empty() || !o.teacher_logits.empty(),
           "distill: --teacher or --teacher-logits is required (or --from-scratch)");
  MP_CHECK(o.teacher.empty() || o.teacher_logits.empty(), "distill: give --teacher or --teacher-logits, not both");
  MP_CHECK(o.teacher_logits_valid.empty() || !o.teacher_logits.empty(),
           "distill: --teacher-logits-valid needs --teacher-logits");
  MP_CHECK(!o.train_data.empty() && !o.valid_data.empty(), "distill: --data and --valid are required");
  MP_CHECK(!o.out_dir.empty(), "distill: -o OUT is required");
  MP_CHECK(o.tokens > 0, "distill: --tokens must be positive, found ", o.tokens);
  MP_CHECK(o.micro_batch > 0 && o.grad_accum > 0, "distill: --micro-batch and --grad-accum must be positive");
  MP_CHECK(o.alpha >= 0 && o.alpha <= 1, "distill: --alpha must lie in [0, 1], found ", o.alpha);
  MP_CHECK(o.temperature > 0, "distill: --temperature must be positive, found ", o.temperature);
  MP_CHECK(o.schedule.lr > 0 && o.schedule.min_lr >= 0 && o.schedule.min_lr <= o.schedule.lr,
           "distill: need 0 <= --min-lr <= --lr and --lr > 0, found lr ", o.schedule.lr, ", min-lr ", o.schedule.min_lr);
  (void)DistributedEnv().device_for(o.device);  // the spelling (cpu, cuda, cuda:N), checked before any work
  MP_CHECK(o.max_nonfinite > 0, "distill: --max-nonfinite must be positive");
  MP_CHECK(o.checkpoint_layers > 0, "distill: --checkpoint-layers must be positive, found ", o.checkpoint_layers);
  MP_CHECK(!o.shard_teacher || o.plan_only, "distill: --shard-teacher is planned (--plan) but not implemented in "
           "training yet; the teacher is replicated on every rank");
  MP_CHECK(o.shard_group_size >= 0, "distill: --shard-group-size must be positive, found ", o.shard_group_size);
  MP_CHECK(shard_mode_from_name(o.shard) != ShardMode::none || o.shard_group_size == 0,
           "distill: --shard-group-size needs --shard zero2 or zero3");
  // The router correction biases live inside the sharded flat units (in the model dtype, owned shard by shard, with
  // fp32 masters for bf16 weights) where RouterBiasUpdate's in-place update of the full tensors cannot reach them.
  MP_CHECK(o.router_bias_update <= 0 || shard_mode_from_name(o.shard) == ShardMode::none,
           "distill: --router-bias-update cannot be combined with --shard ", o.shard, " (the router biases are held in "
           "the sharded flat units, which the update does not write); use --shard none for MoE router balancing");
  // Elastic training slices the student's full tensors per budget (index_select views whose gradients land in them),
  // which a sharded student does not hold; and its slices drop experts and layers, so their router loads do not
  // line up with the full model's routers.
  MP_CHECK(o.elastic.empty() || shard_mode_from_name(o.shard) == ShardMode::none,
           "distill: --elastic cannot be combined with --shard ", o.shard, " (each budget is a slice of the full "
           "student's tensors, which sharding does not keep); use plain data parallelism (--shard none)");
  MP_CHECK(o.elastic.empty() || o.router_bias_update <= 0,
           "distill: --elastic cannot be combined with --router-bias-update (the budgets' slices route over subsets "
           "of the experts and layers, so their loads do not map onto the full model's router biases)");
}

DType save_dtype(const DistillOptions& o, const Checkpoint* student_ck) {
  if (o.save_dtype == "float32") return DType::F32;
  if (o.save_dtype == "bfloat16") return DType::BF16;
  MP_CHECK(o.save_dtype.empty(), "distill: --save-dtype must be float32 or bfloat16, found \"", o.save_dtype, "\"");
  return student_ck ? student_ck->storage_dtype() : DType::F32;
}

// The log keeps the lines of steps up to the checkpoint: a resumed run rewrites what the killed one logged after.
void truncate_log(const std::string& path, int64_t last_step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > last_step)
      continue;
    kept += line + "\n";
  }
  in.close();
  fs::write_file_atomic(path, kept);
}

// Peak bytes the CUDA caching allocator handed out on `device` since the start (0 on CPU), and the process's
// peak resident set: what the memory plan predicts.
double gpu_peak_allocated(c10::Device device) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return double(stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak);
  }
#endif
  (void)device;
  return 0;
}
double host_peak_rss() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) * 1024.0;
}

class Job {
 public:
  explicit Job(const DistillOptions& o) : o_(o) {}
  // The memory plan: chooses (fit auto) or checks (fit check) micro-batch, checkpointing and offload; prints it
  // (rank 0) and writes OUT/plan.json. Throws mp::Error with the plan's one-line reason when it does not fit.
  json plan_memory();
  DistillResult run();

 private:
  json evaluate();
  void log(const json& j);
  std::vector<int64_t> window_ids(int64_t first, int64_t count);

  DistillOptions o_;  // a copy: the memory plan may change micro-batch, checkpointing and offload
  double offload_fraction_ = 0;
  std::shared_ptr<Communicator> comm_;
  int rank_ = 0, world_ = 1;
  c10::Device device_{c10::kCPU};
  std::unique_ptr<NemotronH> student_;
  std::unique_ptr<ShardedStudent> sharded_;  // --shard zero2|zero3
  std::unique_ptr<Teacher> teacher_;
  std::unique_ptr<ElasticTraining> elastic_;  // --elastic: nested budgets (distill/elastic.h)
  Teacher* eval_teacher_ = nullptr;  // teacher_, or null for offline logits without a validation store
  std::unique_ptr<PackedWindows> train_, valid_;
  std::unique_ptr<WindowOrder> order_;
  TrainerState st_;
  std::ofstream log_;
};

std::vector<int64_t> Job::window_ids(int64_t first, int64_t count) {
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < count; ++b) ids.push_back(order_->window_at(first + b));
  return ids;
}

constexpr int64_t kEvalTokenChunk = 1024;  // keep in step with the memory plan's evaluation term

// Sum over rows r0 .. r0+m of the sparse teacher's forward KL at T = 1 (top-k + tail, mp::sparse_kd_loss) against
// student logits [m, V].
double sparse_kl_sum(const at::Tensor& student_logits, const TeacherOutput& t, int64_t r0, int64_t m) {
  const int64_t K = t.topk_ids.size(-1);
  KdOptions k;
  k.reduction = KdReduction::sum;
  return sparse_kd_loss(student_logits, t.topk_ids.reshape({-1, K}).narrow(0, r0, m),
                        t.topk_logits.reshape({-1, K}).narrow(0, r0, m), t.lse_at(1.0).reshape({-1}).narrow(0, r0, m),
                        {}, k)
      .item<double>();
}

// Validation: the first eval windows of the valid file in order, split over ranks; sums reduced over ranks.
json Job::evaluate() {
  at::NoGradGuard no_grad;
  const int64_t n = std::min(valid_->size(), std::max<int64_t>(1, (o_.eval_tokens + o_.seq_len - 1) / o_.seq_len));
  const int64_t V = student_->config().vocab_size;
  at::Tensor sums = at::zeros({3}, at::kDouble);  // CE sum, KL sum, tokens
  const bool moe = student_->config().count(LayerType::Moe) > 0;
  RouterLoad load(student_->config());
  ForwardOptions fo;
  if (moe) fo.observer = &load;
  std::vector<int64_t> mine;
  for (int64_t i = rank_; i < n; i += world_) mine.push_back(i);
  for (size_t first = 0; first < mine.size(); first += size_t(o_.micro_batch)) {
    std::vector<int64_t> ids(mine.begin() + first, mine.begin() + std::min(mine.size(), first + size_t(o_.micro_batch)));
    Batch b = make_batch(*valid_, ids);
    at::Tensor input = b.input_ids.to(device_);
    at::Tensor labels = b.labels.to(device_).reshape(-1);
    if (device_.is_cuda()) {
      // Logits a chunk of tokens at a time, so that evaluation needs no [tokens, vocab] buffers beside the
      // optimizer state (the memory plan's "evaluation chunks" transient).
      const int64_t chunk = kEvalTokenChunk;
      at::Tensor hs = sharded_ ? sharded_->forward_hidden(input, 0, fo) : student_->forward_hidden(input, fo);
      hs = hs.reshape({-1, hs.size(-1)});
      TeacherOutput t;
      if (eval_teacher_) t = eval_teacher_->run(input, /*want_hidden=*/true);
      for (int64_t r0 = 0; r0 < hs.size(0); r0 += chunk) {
        const int64_t m = std::min(chunk, hs.size(0) - r0);
        at::Tensor s = student_->logits(hs.narrow(0, r0, m));
        at::Tensor lab = labels.narrow(0, r0, m);
        sums[0] += at::cross_entropy_loss(s, lab, {}, at::Reduction::Sum).item<double>();
        if (eval_teacher_ && t.sparse()) {
          sums[1] += sparse_kl_sum(s, t, r0, m);
        } else if (eval_teacher_) {
          KdOptions k;
          k.reduction = KdReduction::sum;
          at::Tensor tl = t.logits.defined()
                              ? t.logits.reshape({-1, V}).narrow(0, r0, m)
                              : at::linear(t.hidden.reshape({-1, t.hidden.size(-1)}).narrow(0, r0, m), t.lm_head).to(at::kFloat);
          sums[1] += kd_loss(s, tl, {}, k).item<double>();
        }
      }
      sums[2] += double(labels.numel());
      continue;
    }
    at::Tensor logits = sharded_ ? student_->logits(sharded_->forward_hidden(input, 0, fo)).view({-1, V})
                                 : student_->forward(input, fo).view({-1, V});
    sums[0] += at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum).item<double>();
    if (eval_teacher_) {
      KdOptions k;  // plain KL(teacher || student) at T = 1
      k.reduction = KdReduction::sum;
      TeacherOutput to = eval_teacher_->run(input, false);
      sums[1] += to.sparse() ? sparse_kl_sum(logits, to, 0, logits.size(0))
                             : kd_loss(logits, to.logits.reshape({-1, V}), {}, k).item<double>();
    }
    sums[2] += double(labels.numel());
  }
  if (sharded_) {
    // Sharded forwards are collectives (a gather per layer): every rank runs as many as the rank with the most
    // windows, ranks with fewer on a discarded window.
    const int64_t per_rank = (n + world_ - 1) / world_;
    const int64_t rounds = (per_rank + o_.micro_batch - 1) / o_.micro_batch;
    const int64_t done = (int64_t(mine.size()) + o_.micro_batch - 1) / o_.micro_batch;
    for (int64_t k = done; k < rounds; ++k) sharded_->forward_hidden(make_batch(*valid_, {0}).input_ids.to(device_), 0);
  }
  all_reduce_sum(comm_.get(), sums);
  const double tokens = sums[2].item<double>();
  json j{{"event", "eval"}, {"step", st_.step}, {"tokens", st_.tokens}, {"val_tokens", int64_t(tokens)}};
  j["val_loss"] = sums[0].item<double>() / tokens;
  j["val_ppl"] = std::exp(j["val_loss"].get<double>());
  if (eval_teacher_) j["val_kl"] = sums[1].item<double>() / tokens;
  if (moe) {  // every rank observed its share of the windows: sum the counts (every rank takes part)
    at::Tensor counts = load.packed();
    all_reduce_sum(comm_.get(), counts);
    j["router_load"] = load.summary(counts);
  }
  if (elastic_) j["budgets"] = elastic_->evaluate(*student_, *valid_, n, o_.micro_batch, eval_teacher_);
  return j;
}

void Job::log(const json& j) {
  if (rank_ != 0) return;
  log_ << j.dump() << "\n";
  log_.flush();
}

json Job::plan_memory() {
  MP_CHECK(o_.fit == "auto" || o_.fit == "check" || o_.fit == "off", "distill: --fit must be auto, check or off, found \"",
           o_.fit, "\"");
  const bool auto_offload = o_.offload_optimizer == "auto";
  double fraction = 0;
  if (!o_.offload_optimizer.empty() && !auto_offload) {
    try {
      size_t used = 0;
      fraction = std::stod(o_.offload_optimizer, &used);
      MP_CHECK(used == o_.offload_optimizer.size(), "");
    } catch (...) {
      fail("distill: --offload-optimizer takes auto or a fraction in [0, 1], found \"", o_.offload_optimizer, "\"");
    }
    MP_CHECK(fraction >= 0 && fraction <= 1, "distill: --offload-optimizer fraction must lie in [0, 1], found ", fraction);
  }
  offload_fraction_ = fraction;
  if (o_.fit == "off" && !o_.plan_only && !auto_offload) return json();

  const ModelConfig student = load_config(o_.student);
  std::optional<ModelConfig> teacher;
  if (!o_.from_scratch && o_.teacher_logits.empty()) teacher = load_config(o_.teacher);
  if (student.count(LayerType::Moe) > 0 || (teacher && teacher->count(LayerType::Moe) > 0)) {
    // The plan's activation terms cover Mamba, attention and MLP layers; MoE layers train without a plan.
    MP_CHECK(!o_.plan_only && o_.fit != "auto", "distill: the memory plan does not model mixture-of-experts layers "
             "('E' in the pattern); run without --plan and --fit auto");
    if (rank_ == 0) log_warning("distill: mixture-of-experts layers are not in the memory plan; training without one");
    return json();
  }
  // Planned as the CUDA trainer holds the models (bf16, kernels, fused KD) on a GPU or with --gpu-memory.
  const bool gpu = device_.is_cuda() || !o_.gpu_memory.empty();
  PlanRequest r;
  r.setup.seq_len = o_.seq_len;
  r.setup.micro_batch = o_.micro_batch;
  r.setup.grad_accum = o_.grad_accum;
  r.setup.weight_bytes = gpu ? 2 : 4;
  r.setup.mamba_kernels = gpu;
  r.setup.fused_lm_head = gpu && o_.fused_lm_head;
  r.setup.checkpoint_layers = o_.activation_checkpointing ? o_.checkpoint_layers : 0;
  r.setup.offload_fraction = fraction;
  r.setup.has_teacher = !o_.from_scratch;
  r.setup.world_size = o_.plan_world_size > 0 ? o_.plan_world_size : world_;
  r.setup.shard = o_.shard;
  r.setup.shard_group_size = o_.shard_group_size;
  r.setup.shard_teacher = o_.shard_teacher;
  r.device_bytes = !o_.gpu_memory.empty() ? parse_memory_size(o_.gpu_memory)
                                          : device_.is_cuda() ? cuda_free_bytes(device_.index()) : 0.0;
  r.host_bytes = !o_.host_memory.empty() ? parse_memory_size(o_.host_memory) : host_available_bytes();
  if (world_ > 1) {
    // Every rank must choose the same setup: plan for the smallest GPU and host of the job.
    at::Tensor mine = at::zeros({2 * world_}, at::kDouble);
    mine[2 * rank_] = r.device_bytes;
    mine[2 * rank_ + 1] = r.host_bytes;
    all_reduce_sum(comm_.get(), mine);
    at::Tensor all = mine.view({world_, 2});
    r.device_bytes = all.select(1, 0).min().item<double>();
    r.host_bytes = all.select(1, 1).min().item<double>();
  }
  const bool choose = o_.fit == "auto";
  r.choose_micro_batch = choose;
  r.choose_checkpointing = choose && !o_.activation_checkpointing;
  r.choose_offload = (choose && o_.offload_optimizer.empty()) || auto_offload;
  const Plan plan = make_plan(student, teacher, r);
  json j = plan.to_json();
  j["fit"] = o_.fit;
  j["device"] = gpu ? "cuda" : "cpu";
  j["student_parameters"] = trainable_parameters(student);
  if (teacher) j["teacher_parameters"] = trainable_parameters(*teacher);
  if (rank_ == 0) {
    std::string text = "memory plan (" + std::string(gpu ? "GPU " + format_gib(plan.device_budget) + " usable" : "CPU") +
                       ", host " + format_gib(plan.host_budget) + "): micro-batch " +
                       std::to_string(plan.setup.micro_batch) + " x grad-accum " + std::to_string(plan.setup.grad_accum) +
                       ", activation checkpointing " + (plan.setup.checkpoint_layers > 0 ? "on" : "off") +
                       ", optimizer state on the host " + std::to_string(int(std::lround(plan.setup.offload_fraction * 100))) +
                       "%" + (plan.setup.world_size > 1 || plan.setup.shard != "none"
                                  ? ", " + std::to_string(plan.setup.world_size) + " ranks, shard " + plan.setup.shard +
                                        (plan.setup.shard != "none" ? " over " + std::to_string(plan.setup.shard_group()) : "") +
                                        (plan.setup.shard_teacher ? ", teacher sharded" : "") + " (per GPU)"
                                  : "") +
                       (plan.fits ? "" : " -- DOES NOT FIT") + "\n" + plan.memory.table();
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    fs::create_directories(o_.out_dir);
    report::write_text_file(fs::join(o_.out_dir, "plan.json"), j.dump(1) + "\n");
  }
  if (!plan.fits && (o_.fit != "off" || o_.plan_only)) fail("distill: ", plan.reason);
  if (plan.fits) {
    o_.micro_batch = plan.setup.micro_batch;
    o_.grad_accum = plan.setup.grad_accum;
    o_.activation_checkpointing = plan.setup.checkpoint_layers > 0;
    if (o_.activation_checkpointing) o_.checkpoint_layers = plan.setup.checkpoint_layers;
    offload_fraction_ = plan.setup.offload_fraction;
  }
  return j;
}

DistillResult Job::run() {
  check_options(o_);
  if (o_.threads > 0) at::set_num_threads(o_.threads);
  const DistributedEnv env = DistributedEnv::from_environment();
  device_ = env.device_for(o_.device);
  const at::ScalarType dtype = device_.is_cuda() ? at::kBFloat16 : at::kFloat;
#ifdef MINIPUZZLE_WITH_CUDA
  // Kernels launch on the current device's stream: make it this rank's GPU before anything touches CUDA.
  if (device_.is_cuda()) c10::cuda::set_device(device_.index());
#else
  MP_CHECK(!device_.is_cuda(), "distill: --device cuda needs a build with CUDA (MINIPUZZLE_CUDA=ON)");
#endif
  comm_ = make_communicator(env, device_);
  rank_ = env.rank;
  world_ = env.world_size;
  const json plan = plan_memory();
  if (o_.plan_only) {
    DistillResult r;
    r.exit_code = 0;
    return r;
  }

  const std::string& out = o_.out_dir;
  if (rank_ == 0) {
    fs::create_directories(out);
    MP_CHECK(o_.resume || !fs::exists(checkpoint_dir(o_.out_dir)), "distill: ", o_.out_dir,
             " already holds a training checkpoint; pass --resume to continue it or choose another -o");
  }
  barrier(comm_.get());

  // Models.
  std::unique_ptr<Checkpoint> student_ck;
  if (o_.from_scratch) {
    student_ = std::make_unique<NemotronH>(NemotronH::random_init(load_config(o_.student), o_.seed, device_, dtype));
  } else if (!o_.teacher_logits.empty()) {  // stored top-k teacher rows instead of a teacher (issue 28)
    student_ck = std::make_unique<Checkpoint>(Checkpoint::open(o_.student));
    student_ = std::make_unique<NemotronH>(NemotronH::load(*student_ck, device_, dtype));
    std::vector<std::string> dirs{o_.teacher_logits};
    if (!o_.teacher_logits_valid.empty()) dirs.push_back(o_.teacher_logits_valid);
    auto offline = std::make_unique<OfflineTeacher>(dirs);
    MP_CHECK(offline->vocab_size() == student_->config().vocab_size, "distill: teacher logits in ", o_.teacher_logits,
             " have vocabulary ", offline->vocab_size(), ", the student ", student_->config().vocab_size);
    MP_CHECK(offline->seq_len() == o_.seq_len, "distill: teacher logits in ", o_.teacher_logits, " were made with "
             "--seq-len ", offline->seq_len(), "; distill with the same --seq-len (given ", o_.seq_len, ")");
    const auto& temps = offline->lse_temperatures();
    MP_CHECK(std::find(temps.begin(), temps.end(), o_.temperature) != temps.end(), "distill: teacher logits in ",
             o_.teacher_logits, " hold the rows' log-sum-exp at other temperatures than --temperature ", o_.temperature,
             "; make them with teacher-logits --temperature ", o_.temperature);
    teacher_ = std::move(offline);
  } else {
    student_ck = std::make_unique<Checkpoint>(Checkpoint::open(o_.student));
    student_ = std::make_unique<NemotronH>(NemotronH::load(*student_ck, device_, dtype));
    auto teacher_ck = Checkpoint::open(o_.teacher);
    teacher_ = std::make_unique<ModelTeacher>(NemotronH::load(teacher_ck, device_, dtype));
    MP_CHECK(teacher_->vocab_size() == student_->config().vocab_size, "distill: teacher vocabulary ",
             teacher_->vocab_size(), " differs from the student's ", student_->config().vocab_size,
             "; logit distillation needs one shared tokenizer");
  }
  student_->set_requires_grad(true);
  eval_teacher_ = (o_.teacher_logits.empty() || !o_.teacher_logits_valid.empty()) ? teacher_.get() : nullptr;

  // Data.
  // Through the one data resolver (token files, Megatron, .npy, text, raw ids with data_format, blends).
  std::unique_ptr<Tokenizer> tokenizer = tokenizer_for_data(
      o_.tokenizer, {o_.teacher, o_.from_scratch ? parent_directory(o_.student) : o_.student});
  auto open_input = [&](const std::string& path, const char* option) {
    DataInputOptions d;
    d.format = o_.data_format;
    d.tokenizer = tokenizer.get();
    d.vocab_size = uint64_t(student_->config().vocab_size);
    d.option = option;
    return std::make_shared<const TokenFile>(open_data(path, d));
  };
  auto train_file = open_input(o_.train_data, "--data");
  auto valid_file = open_input(o_.valid_data, "--valid");
  for (auto* f : {train_file.get(), valid_file.get()})
    MP_CHECK(int64_t(f->vocab_size()) <= student_->config().vocab_size, "distill: token file ", f->path(),
             " has vocab_size ", f->vocab_size(), ", larger than the model's ", student_->config().vocab_size);
  train_ = std::make_unique<PackedWindows>(train_file, o_.seq_len);
  valid_ = std::make_unique<PackedWindows>(valid_file, o_.seq_len);
  int64_t train_windows = train_->size();
  if (auto* offline = dynamic_cast<OfflineTeacher*>(teacher_.get());
      offline && offline->training_windows() < train_windows) {
    // Stored logits of the first N windows only (teacher-logits --max-windows): draw from those.
    train_windows = offline->training_windows();
    if (rank_ == 0)
      log_info("distill: the teacher logits hold the first " + std::to_string(train_windows) + " of " +
               std::to_string(train_->size()) + " training windows; training draws from those");
  }
  order_ = std::make_unique<WindowOrder>(train_windows, o_.seed);

  const int64_t global_batch = o_.micro_batch * o_.grad_accum * world_;
  const int64_t tokens_per_step = global_batch * o_.seq_len;
  const int64_t total_steps = (o_.tokens + tokens_per_step - 1) / tokens_per_step;
  ScheduleOptions sched = o_.schedule;
  sched.total_steps = total_steps;

  const ShardMode shard = shard_mode_from_name(o_.shard);
  std::unique_ptr<AdamW> plain_optimizer;
  if (shard != ShardMode::none)
    sharded_ = std::make_unique<ShardedStudent>(*student_, comm_, shard, o_.shard_group_size, o_.adamw, offload_fraction_);
  else
    plain_optimizer = std::make_unique<AdamW>(student_->parameters(), o_.adamw, offload_fraction_);
  AdamW& optimizer = sharded_ ? sharded_->optimizer() : *plain_optimizer;
  st_.settings = {{"seq_len", o_.seq_len}, {"micro_batch", o_.micro_batch}, {"grad_accum", o_.grad_accum},
                  {"world_size", world_}, {"seed", o_.seed}, {"tokens", o_.tokens},
                  {"from_scratch", o_.from_scratch}, {"alpha", o_.alpha}, {"temperature", o_.temperature},
                  {"lr", sched.lr}, {"min_lr", sched.min_lr}, {"warmup", sched.warmup_steps},
                  {"schedule", lr_schedule_name(sched.kind)}, {"device", o_.device}};
  if (sharded_) {
    // A sharded checkpoint reshards on load: the world size (and its split into micro-batches) may change as long
    // as the global batch, which fixes the step sequence, does not.
    for (const char* k : {"micro_batch", "grad_accum", "world_size"}) st_.settings.erase(k);
    st_.settings["global_batch"] = global_batch;
  }
  if (!o_.elastic.empty()) {
    elastic_ = std::make_unique<ElasticTraining>(o_.elastic, o_.student, student_->config(), o_.seed);
    st_.settings["elastic"] = elastic_->settings();
  }
  if (!o_.teacher_logits.empty()) st_.settings["teacher_logits"] = fs::absolute(o_.teacher_logits);
  bool resumed = false;
  if (o_.resume)
    resumed = sharded_ ? load_sharded_trainer_state(o_.out_dir, st_, *sharded_) : load_trainer_state(o_.out_dir, st_, optimizer);
  if (rank_ == 0) {
    if (resumed) truncate_log(fs::join(out, "log.jsonl"), st_.step);
    log_.open(fs::join(out, "log.jsonl"), resumed ? std::ios::app : std::ios::trunc);
    MP_CHECK(log_.good(), "distill: cannot write ", fs::join(out, "log.jsonl"));
  }
  log({{"event", resumed ? "resume" : "start"}, {"total_steps", total_steps}, {"tokens_per_step", tokens_per_step},
       {"world_size", world_}, {"student_parameters", student_->num_parameters()}, {"settings", st_.settings},
       {"resumed_at_step", st_.step}, {"shard", o_.shard},
       // Not a setting: checkpointing changes memory and time, not the step sequence, so a resume may switch it.
       {"activation_checkpointing", o_.activation_checkpointing ? json(o_.checkpoint_layers) : json(false)},
       // Placement, like checkpointing, changes memory and time but not the values: a resume may change it.
       {"offload_optimizer", double(optimizer.offloaded_elements()) / double(std::max<int64_t>(1, optimizer.total_elements()))},
       {"memory_plan", plan.is_null() ? json() : plan["memory"]}});
  if (o_.resume && !resumed && rank_ == 0) log_warning("distill: --resume given but " + o_.out_dir + " has no checkpoint; starting fresh");

  std::unique_ptr<GradientSync> sync;
  if (!sharded_) sync = std::make_unique<GradientSync>(comm_, optimizer.params(), o_.bucket_bytes);
  LossOptions loss;
  loss.alpha = o_.alpha;
  loss.temperature = o_.temperature;
  loss.fused_lm_head = o_.fused_lm_head;
  loss.checkpoint_layers = o_.activation_checkpointing ? o_.checkpoint_layers : 0;
  std::unique_ptr<RouterBiasUpdate> router_bias;  // aux-loss-free load balancing (MoE students, opt-in)
  if (o_.router_bias_update > 0) {
    router_bias = std::make_unique<RouterBiasUpdate>(student_->config(), o_.router_bias_update);
    loss.observer = router_bias.get();
  }
  Progress progress("distill", (total_steps - st_.step) * tokens_per_step, "tok",
                    rank_ == 0 ? ProgressMode::Auto : ProgressMode::Off);
  auto save = [&] {
    if (o_.no_save) return;
    if (sharded_) {
      save_sharded_trainer_state(o_.out_dir, st_, *sharded_, comm_.get());
      return;
    }
    if (rank_ == 0) save_trainer_state(o_.out_dir, st_, optimizer);
    barrier(comm_.get());
  };
  auto do_eval = [&] {
    json e = evaluate();
    st_.evals.push_back(e);
    log(e);
    std::string text = "step " + std::to_string(st_.step) + ": val_loss " + std::to_string(e["val_loss"].get<double>());
    if (e.contains("val_kl")) text += ", val_kl " + std::to_string(e["val_kl"].get<double>());
    if (rank_ == 0) progress.message(text);
  };
  if (st_.evals.empty()) do_eval();

  DistillResult result;
  result.total_steps = total_steps;
  bool stopped_early = false;
  while (st_.step < total_steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = learning_rate(sched, st_.step);
    std::vector<Batch> micro_batches;
    for (int64_t k = 0; k < o_.grad_accum; ++k)
      micro_batches.push_back(make_batch(*train_, window_ids(st_.cursor + (k * world_ + rank_) * o_.micro_batch, o_.micro_batch)));
    const StepResult r =
        sharded_   ? sharded_->train_step(teacher_.get(), micro_batches, lr, o_.clip, loss)
        : elastic_ ? elastic_->train_step(*student_, teacher_.get(), optimizer, *sync, comm_.get(), micro_batches, lr, o_.clip, loss, st_.step)
                   : train_step(*student_, teacher_.get(), optimizer, *sync, comm_.get(), micro_batches, lr, o_.clip, loss);
    const double step_loss = r.loss, grad_norm = r.grad_norm;
    const bool finite = r.applied;
    json router_bias_line;  // after the update, as the optimizer's; a skipped step moves no bias either
    if (router_bias) {
      if (finite) router_bias_line = router_bias->apply(*student_, comm_.get());
      else router_bias->clear();
    }
    if (finite) {
      st_.nonfinite_in_a_row = 0;
    } else {
      ++st_.nonfinite_in_a_row;
      ++st_.skipped_steps;
      if (rank_ == 0)
        log_warning("distill: step " + std::to_string(st_.step + 1) + " has a non-finite loss (" +
                    std::to_string(step_loss) + ") or gradient norm (" + std::to_string(grad_norm) + "); step skipped");
    }
    st_.step += 1;
    st_.cursor += global_batch;
    st_.tokens += tokens_per_step;
    st_.train_loss.push_back(finite ? step_loss : NAN);
    st_.learning_rates.push_back(lr);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json line{{"step", st_.step}, {"tokens", st_.tokens}, {"lr", lr}, {"step_s", seconds},
              {"tokens_per_s", tokens_per_step / seconds}, {"optimizer_s", optimizer.last_step_seconds()},
              {"host_update_s", optimizer.last_host_seconds()}, {"host_peak_rss_bytes", host_peak_rss()}};
    if (device_.is_cuda()) line["gpu_peak_bytes"] = gpu_peak_allocated(device_);
    line["loss"] = finite ? json(step_loss) : json(nullptr);
    line["grad_norm"] = std::isfinite(grad_norm) ? json(grad_norm) : json(nullptr);
    if (!finite) line["skipped"] = true;
    if (!router_bias_line.is_null()) line["router_bias"] = router_bias_line;
    if (elastic_) line["budgets"] = elastic_->last_step();
    log(line);
    progress.advance(tokens_per_step, {{"loss", finite ? step_loss : NAN}, {"lr", lr}});

    if (st_.nonfinite_in_a_row >= o_.max_nonfinite) {
      save();  // the skipped steps left the weights at the last good update
      if (rank_ == 0)
        log_warning("distill: " + std::to_string(st_.nonfinite_in_a_row) +
                    " non-finite steps in a row; stopped with a checkpoint of the last good state in " +
                    checkpoint_dir(o_.out_dir) + " (lower --lr or check the data)");
      result.exit_code = kExitNonFinite;
      break;
    }
    if (st_.step % o_.eval_every == 0 || st_.step == total_steps) do_eval();
    at::Tensor stop = at::full({1}, interrupted() ? 1.0 : 0.0, at::kFloat);
    all_reduce_sum(comm_.get(), stop);  // every rank stops at the same step
    if (stop.item<float>() > 0) {
      save();
      if (rank_ == 0)
        progress.message("distill: interrupted; checkpoint at step " + std::to_string(st_.step) + " in " +
                         checkpoint_dir(o_.out_dir) + " (continue with --resume)");
      result.exit_code = kExitInterrupted;
      break;
    }
    if (o_.save_every > 0 && st_.step % o_.save_every == 0 && st_.step < total_steps) save();
    if (o_.stop_after_steps > 0 && st_.step >= o_.stop_after_steps && st_.step < total_steps) {
      save();
      if (rank_ == 0)
        progress.message("distill: stopped after step " + std::to_string(st_.step) + " (--stop-after-steps); continue with --resume");
      stopped_early = true;
      break;
    }
  }
  const json memory{{"event", "memory"}, {"gpu_peak_bytes", gpu_peak_allocated(device_)},
                    {"host_peak_rss_bytes", host_peak_rss()},
                    {"predicted_gpu_bytes", plan.is_null() ? json() : plan["memory"]["device_total_bytes"]},
                    {"predicted_host_bytes", plan.is_null() ? json() : plan["memory"]["host_total_bytes"]}};
  log(memory);

  if (result.exit_code == 0 && !stopped_early) {
    progress.finish({{"loss", st_.train_loss.empty() ? NAN : st_.train_loss.back()}});
    save();
    if (sharded_ && !o_.no_save) {
      // The full parameters, gathered unit by unit (every rank takes part), replace the student's on rank 0.
      std::map<std::string, at::Tensor> full = sharded_->full_parameters_cpu();
      if (rank_ == 0) student_ = std::make_unique<NemotronH>(student_->config(), std::move(full));
    }
    if (rank_ == 0) {
      std::vector<std::string> copy;
      if (student_ck)
        for (auto& f : student_ck->extra_files()) copy.push_back(f);
      if (!o_.no_save) student_->save(fs::join(out, "final"), save_dtype(o_, student_ck.get()), copy, /*overwrite=*/true);
      if (elastic_ && !o_.no_save)
        elastic_->write_metadata(fs::join(out, "final"), {{"teacher", o_.teacher_logits.empty() ? o_.teacher : o_.teacher_logits},
                                                          {"tokens", st_.tokens}, {"steps", st_.step}});
    }
  }
  if (rank_ == 0) write_training_report(o_, st_, total_steps, tokens_per_step, result.exit_code);
  barrier(comm_.get());
  result.steps_done = st_.step;
  result.train_loss = st_.train_loss;
  result.last_eval = st_.evals.empty() ? json() : st_.evals.back();
  return result;
}

}  // namespace

DistillResult run_distillation(const DistillOptions& options) { return Job(options).run(); }

}  // namespace mp::distill
