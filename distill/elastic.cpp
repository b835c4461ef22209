// Elastic distillation: several nested budgets of one student trained from one teacher pass per micro-batch
// (distill/elastic.h). The trainer calls this in place of train_step when --elastic is given.
#include "distill/elastic.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/kd.h"
#include "minipuzzle/sparse_kd.h"

namespace mp::distill {

namespace {

// The teacher's output for one micro-batch, computed on the first request and served to every budget.
class OnceTeacher : public Teacher {
 public:
  explicit OnceTeacher(Teacher* inner) : inner_(inner) {}
  TeacherOutput run(const at::Tensor& input_ids, bool want_hidden) override {
    TeacherOutput& o = out_[want_hidden ? 1 : 0];
    if (!have_[want_hidden ? 1 : 0]) {
      o = inner_->run(input_ids, want_hidden);
      have_[want_hidden ? 1 : 0] = true;
    }
    return o;
  }
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  bool sparse() const override { return inner_->sparse(); }  // stored top-k rows (distill --teacher-logits)

 private:
  Teacher* inner_;
  TeacherOutput out_[2];
  bool have_[2] = {false, false};
};

}  // namespace

ElasticTraining::ElasticTraining(const std::string& budgets, const std::string& student_dir, const ModelConfig& student,
                                 uint64_t seed)
    : budgets_(load_budgets(budgets)), seed_(seed) {
  auto info = read_elastic_info(student_dir);
  MP_CHECK(info.has_value(), "distill --elastic: the student ", student_dir, " is not a nested checkpoint (no ",
           kElasticFile, "); nest it first: minipuzzle nest TEACHER --scores scores.json -o NESTED");
  info_ = *info;
  for (auto& b : budgets_.budgets)
    plans_.push_back(nested_plan(student, PruneTarget::from_json(b.shape, "budget \"" + b.name + "\""), info_.layer_ranking));
}

json ElasticTraining::settings() const {
  json b = json::array();
  for (auto& x : budgets_.budgets) b.push_back({{"name", x.name}, {"shape", x.shape}});
  return {{"budgets", b}, {"sampling", budgets_.sampling.to_json()}};
}

StepResult ElasticTraining::train_step(const NemotronH& student, Teacher* teacher, AdamW& optimizer, GradientSync& sync,
                                       Communicator* comm, const std::vector<Batch>& micro_batches, double lr,
                                       double clip, const LossOptions& options, int64_t step) {
  for (auto& p : optimizer.params()) p.mutable_grad() = at::Tensor();
  const std::vector<size_t> drawn = sample_budgets(budgets_.sampling, budgets_.budgets.size(), seed_, step);
  const int64_t count = int64_t(micro_batches.size()), nb = int64_t(drawn.size());
  at::Tensor sums = at::zeros({nb + 1}, at::kDouble);  // per budget, then the total
  for (int64_t k = 0; k < count; ++k) {
    OnceTeacher once(teacher);
    for (int64_t j = 0; j < nb; ++j) {
      const PrunePlan& plan = plans_[drawn[size_t(j)]];
      std::unique_ptr<NemotronH> slice;
      if (!plan.is_identity()) slice = std::make_unique<NemotronH>(slice_model(student, plan));
      const NemotronH& model = slice ? *slice : student;
      sync.begin_backward(k == count - 1 && j == nb - 1);  // gradients are complete after the last backward
      at::Tensor loss = micro_batch_loss(model, teacher ? &once : nullptr, micro_batches[size_t(k)], options) /
                        double(count * nb);
      loss.backward();
      const double v = loss.detach().to(at::kDouble).cpu().item<double>();
      sums[j] += v * double(nb);
      sums[nb] += v;
    }
  }
  sync.finish();
  all_reduce_sum(comm, sums);
  const double world = communicator_size(comm);
  StepResult r;
  r.loss = sums[nb].item<double>() / world;
  last_ = json::object();
  for (int64_t j = 0; j < nb; ++j) last_[budgets_.budgets[drawn[size_t(j)]].name] = sums[j].item<double>() / world;
  r.grad_norm = clip_grad_norm(optimizer.params(), clip);
  r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.applied) optimizer.step(lr);
  return r;
}

json ElasticTraining::evaluate(const NemotronH& student, const PackedWindows& valid, int64_t windows,
                               int64_t micro_batch, Teacher* teacher) const {
  at::NoGradGuard no_grad;
  const c10::Device device = student.device();
  const int64_t V = student.config().vocab_size;
  std::vector<Batch> batches;
  for (int64_t first = 0; first < windows; first += micro_batch) {
    std::vector<int64_t> ids;
    for (int64_t i = first; i < std::min(windows, first + micro_batch); ++i) ids.push_back(i);
    batches.push_back(make_batch(valid, ids));
  }
  // Dense logits [tokens, V], or a sparse teacher's stored top-k rows (distill --teacher-logits-valid).
  std::vector<TeacherOutput> teacher_out;
  if (teacher)
    for (auto& b : batches) teacher_out.push_back(teacher->run(b.input_ids.to(device), false));
  json out = json::object();
  for (size_t i = 0; i < plans_.size(); ++i) {
    std::unique_ptr<NemotronH> slice;
    if (!plans_[i].is_identity()) slice = std::make_unique<NemotronH>(slice_model(student, plans_[i]));
    const NemotronH& model = slice ? *slice : student;
    double ce = 0, kl = 0, tokens = 0;
    for (size_t k = 0; k < batches.size(); ++k) {
      at::Tensor logits = model.forward(batches[k].input_ids.to(device)).view({-1, V});
      at::Tensor labels = batches[k].labels.to(device).reshape(-1);
      ce += at::cross_entropy_loss(logits, labels, {}, at::Reduction::Sum).item<double>();
      if (teacher) {
        KdOptions o;
        o.reduction = KdReduction::sum;
        const TeacherOutput& t = teacher_out[k];
        if (t.sparse()) {  // top-k + tail at T = 1, as the trainer's own evaluation
          const int64_t K = t.topk_ids.size(-1);
          kl += sparse_kd_loss(logits, t.topk_ids.reshape({-1, K}), t.topk_logits.reshape({-1, K}),
                               t.lse_at(1.0).reshape({-1}), {}, o)
                    .item<double>();
        } else {
          kl += kd_loss(logits, t.logits.reshape({-1, V}), {}, o).item<double>();
        }
      }
      tokens += double(labels.numel());
    }
    json e{{"val_loss", ce / tokens}, {"val_ppl", std::exp(ce / tokens)}, {"parameters", count_parameters(plans_[i].target)}};
    if (teacher) e["val_kl"] = kl / tokens;
    out[budgets_.budgets[i].name] = e;
  }
  return out;
}

void ElasticTraining::write_metadata(const std::string& final_dir, const json& run) const {
  ElasticInfo info = info_;
  info.add_budgets(budgets_.budgets);
  json record = run;
  record["budgets"] = settings()["budgets"];
  record["sampling"] = budgets_.sampling.to_json();
  info.training.push_back(record);
  write_elastic_info(fs::join(final_dir, kElasticFile), info);
}

}  // namespace mp::distill
