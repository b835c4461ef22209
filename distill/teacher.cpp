// The frozen teacher: one NemotronH on one device, run without autograd.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

ModelTeacher::ModelTeacher(NemotronH model) : model_(std::move(model)) { model_.set_requires_grad(false); }

TeacherOutput ModelTeacher::run(const at::Tensor& input_ids, bool want_hidden) {
  at::NoGradGuard no_grad;
  TeacherOutput out;
  if (want_hidden) {
    out.hidden = model_.forward_hidden(input_ids);
    out.lm_head = model_.lm_head_weight();
  } else {
    out.logits = model_.forward(input_ids);
  }
  return out;
}

at::Tensor logits_from_topk(const at::Tensor& values, const at::Tensor& indices, int64_t vocab_size) {
  MP_CHECK(values.sizes() == indices.sizes() && values.dim() >= 1, "distill: top-k values ", values.sizes(),
           " and indices ", indices.sizes(), " must have the same shape [*, k]");
  auto shape = values.sizes().vec();
  shape.back() = vocab_size;
  at::Tensor full = at::full(shape, -std::numeric_limits<double>::infinity(), values.options());
  return full.scatter_(-1, indices.to(at::kLong), values);
}

}  // namespace mp::distill
