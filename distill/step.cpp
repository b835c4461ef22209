// One training step: micro-batch losses (mp::kd_loss on CPU, mp::linear_kd on CUDA, cross-entropy from scratch),
// backward with gradient synchronisation on the last micro-batch, clipping and the AdamW update. With activation
// checkpointing the student's layers run through mp::distill::checkpointed (distill/recompute.cpp).
#include <ATen/ATen.h>

#include <cmath>

#include "minipuzzle/distill.h"
#include "minipuzzle/fsdp.h"
#include "minipuzzle/kd.h"
#include "minipuzzle/sparse_kd.h"

namespace mp::distill {

namespace {
// The student's final hidden state; with activation checkpointing its layers are recomputed in backward.
at::Tensor student_hidden(const NemotronH& student, const at::Tensor& ids, const LossOptions& o) {
  ForwardOptions fo;
  fo.observer = o.observer;
  if (o.sharded) return o.sharded->forward_hidden(ids, o.checkpoint_layers, fo);
  return o.checkpoint_layers > 0 ? checkpointed_forward_hidden(student, ids, o.checkpoint_layers, o.observer)
                                 : student.forward_hidden(ids, fo);
}
}  // namespace

at::Tensor micro_batch_loss(const NemotronH& student, Teacher* teacher, const Batch& batch, const LossOptions& o) {
  const c10::Device device = student.device();
  at::Tensor ids = batch.input_ids.to(device);
  at::Tensor labels = batch.labels.to(device).reshape(-1);
  const int64_t V = student.config().vocab_size;
  if (!teacher) return at::cross_entropy_loss(student.logits(student_hidden(student, ids, o)).view({-1, V}), labels);
  if (teacher->sparse()) {  // stored top-k rows (distill --teacher-logits): no teacher forward
    LinearKdOptions k;
    k.temperature = o.temperature;
    k.kd_weight = o.alpha;
    k.ce_weight = 1.0 - o.alpha;
    at::Tensor hs = student_hidden(student, ids, o);
    TeacherOutput t = teacher->run(ids, /*want_hidden=*/false);
    const int64_t K = t.topk_ids.size(-1);
    const at::Tensor t_ids = t.topk_ids.reshape({-1, K}), t_logits = t.topk_logits.reshape({-1, K});
    const at::Tensor t_lse = t.lse_at(o.temperature).reshape({-1});
    if (device.is_cuda() && o.fused_lm_head)  // no [tokens, vocab] logits
      return linear_sparse_kd(hs.reshape({-1, hs.size(-1)}), student.lm_head_weight(), t_ids, t_logits, t_lse, labels, k);
    return sparse_kd_loss(student.logits(hs).view({-1, V}), t_ids, t_logits, t_lse, labels, k);
  }
  if (device.is_cuda() && o.fused_lm_head) {
    LinearKdOptions k;
    k.temperature = o.temperature;
    k.kd_weight = o.alpha;
    k.ce_weight = 1.0 - o.alpha;
    at::Tensor hs = student_hidden(student, ids, o);
    hs = hs.reshape({-1, hs.size(-1)});
    TeacherOutput t = teacher->run(ids, /*want_hidden=*/true);
    if (t.logits.defined())
      return linear_kd_from_teacher_logits(hs, student.lm_head_weight(), t.logits.reshape({-1, V}), labels, k);
    return linear_kd(hs, student.lm_head_weight(), t.hidden.reshape({-1, t.hidden.size(-1)}), t.lm_head, labels, k);
  }
  KdOptions k;
  k.temperature = o.temperature;
  k.kd_weight = o.alpha;
  k.ce_weight = 1.0 - o.alpha;
  at::Tensor s = student.logits(student_hidden(student, ids, o));
  TeacherOutput t = teacher->run(ids, /*want_hidden=*/false);
  return kd_loss(s.view({-1, V}), t.logits.reshape({-1, V}), labels, k);
}

StepResult train_step(const NemotronH& student, Teacher* teacher, AdamW& optimizer, GradientSync& sync,
                      Communicator* comm, const std::vector<Batch>& micro_batches, double lr, double clip,
                      const LossOptions& options) {
  for (auto& p : optimizer.params()) p.mutable_grad() = at::Tensor();
  const int64_t count = int64_t(micro_batches.size());
  at::Tensor loss_sum = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(student.device()));
  for (int64_t k = 0; k < count; ++k) {
    sync.begin_backward(k == count - 1);
    at::Tensor loss = micro_batch_loss(student, teacher, micro_batches[k], options) / double(count);
    loss.backward();
    loss_sum += loss.detach().to(at::kDouble);
  }
  sync.finish();
  at::Tensor loss_cpu = loss_sum.cpu();
  all_reduce_sum(comm, loss_cpu);
  StepResult r;
  r.loss = loss_cpu.item<double>() / communicator_size(comm);
  r.grad_norm = clip_grad_norm(optimizer.params(), clip);
  r.applied = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.applied) optimizer.step(lr);
  return r;
}

}  // namespace mp::distill
