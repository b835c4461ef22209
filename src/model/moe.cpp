// Nemotron-H mixture-of-experts layer ('E'), as transformers' NemotronHMoE: router, routed non-gated relu^2
// experts (optionally inside latent projections), and the shared expert, added.
//
// The routed experts run tokens sorted by expert: one stable sort of the (token, slot) assignments, one host read
// of the per-expert counts, then per expert a contiguous slice through its two GEMMs, and one index_add back. The
// same ATen code runs on CPU and CUDA (one device sync per layer for the counts), and autograd flows through
// index_select / index_add and the routing weights as in transformers. With --moe-kernel grouped
// (kernels::KernelOptions::moe), on CUDA without gradients (evaluation, scoring, the teacher) the two GEMMs of all
// experts run as two grouped launches instead (kernels::moe_grouped_linear: relu^2 fused into the first, the
// routing weight into the second).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <limits>

#include "minipuzzle/error.h"
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"

namespace mp {

MoeRouting moe_route(const ModelConfig& c, const at::Tensor& gate_weight, const at::Tensor& correction_bias,
                     const at::Tensor& x, const at::Tensor& expert_mask, int64_t top_k) {
  const int64_t E = c.n_routed_experts;
  const int64_t k = top_k > 0 ? top_k : c.num_experts_per_tok;
  MP_CHECK(gate_weight.dim() == 2 && gate_weight.size(0) == E, "moe: router weight has shape ", gate_weight.sizes(),
           ", expected [", E, ", hidden]");
  MP_CHECK(k >= 1 && k <= E, "moe: top_k ", k, " must be 1..", E);
  // transformers computes the router in float32 whatever the model dtype; float64 models stay float64.
  const at::ScalarType st = model::statistics_type(x.scalar_type());
  at::Tensor logits = at::linear(x.to(st), gate_weight.to(st));
  MoeRouting r;
  r.scores = at::sigmoid(logits);
  at::Tensor choice = r.scores.detach() + correction_bias.to(st);  // selection only: no gradient through indices
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (expert_mask.defined()) choice = choice.masked_fill(expert_mask.to(choice.device()).eq(0), neg_inf);
  if (c.n_group > 1) {
    const int64_t G = c.n_group, per = E / G, N = choice.size(0);
    at::Tensor group_scores = std::get<0>(choice.view({N, G, per}).topk(2, -1)).sum(-1);  // [N,G]
    at::Tensor group_idx = std::get<1>(group_scores.topk(c.topk_group, -1));
    at::Tensor keep = at::zeros_like(group_scores, group_scores.options().dtype(at::kBool));
    keep.scatter_(1, group_idx, true);
    choice = choice.masked_fill(~keep.unsqueeze(-1).expand({N, G, per}).reshape({N, E}), neg_inf);
  }
  r.indices = std::get<1>(choice.topk(k, -1));
  r.weights = r.scores.gather(1, r.indices);
  if (c.norm_topk_prob) r.weights = r.weights / (r.weights.sum(-1, true) + 1e-20);
  r.weights = r.weights * c.routed_scaling_factor;
  return r;
}

namespace model {

static at::Tensor relu2(const at::Tensor& x) {
  at::Tensor a = at::relu(x);
  return a * a;
}

at::Tensor moe_mixer(const LayerContext& ctx, const Params& p, const at::Tensor& h) {
  const ModelConfig& c = ctx.config;
  const int64_t E = c.n_routed_experts, H = c.hidden_size;
  const LayerMask* mask = ctx.mask;
  at::Tensor x = h.reshape({-1, H});
  const int64_t N = x.size(0);
  MoeRouting r = moe_route(c, p.get("gate.weight"), p.get("gate.e_score_correction_bias"), x,
                           mask ? mask->moe_experts : at::Tensor(), mask ? mask->moe_top_k : 0);
  const int64_t k = r.indices.size(1);
  if (ctx.wants(Tap::MoeRouting))
    ctx.tap(Tap::MoeRouting, at::zeros({N, E}, r.weights.options()).scatter_(1, r.indices, r.weights.detach()));

  at::Tensor xl = c.moe_latent_size > 0
                      ? at::linear(x, p.get("fc1_latent_proj.weight"), p.optional("fc1_latent_proj.bias"))
                      : x;
  // Assignments sorted by expert (stable: tokens ascending within an expert, so each token sums its experts in
  // ascending expert order, as transformers' loop does).
  at::Tensor flat = r.indices.reshape({-1});
  at::Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  at::Tensor token = at::div(order, k, "floor");
  at::Tensor w = r.weights.reshape({-1}).index_select(0, order);
  at::Tensor counts = at::bincount(flat, {}, E).cpu();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  at::Tensor xs = xl.index_select(0, token);

  at::Tensor channel_mask;
  if (mask && mask->moe_expert_channels.defined()) channel_mask = mask->moe_expert_channels.to(xl.scalar_type());
  const bool want_out = ctx.wants(Tap::MoeExpertOutput), want_channels = ctx.wants(Tap::MoeExpertChannels);
  at::Tensor out_norms, channel_sums;
  if (want_out) out_norms = at::zeros({N, E}, w.options());
  if (want_channels) channel_sums = at::zeros({E, c.moe_intermediate_size}, w.options());
  // Grouped path: nothing per expert is needed (no taps, no channel mask) and no gradient.
  const at::Tensor& up0 = p.get("experts.0.up_proj.weight");
  const bool grouped = kernels::moe_grouped_enabled() && kernels::moe_grouped_linear_uses_cuda(xs) &&
                       !channel_mask.defined() && !want_out && !want_channels &&
                       (!at::GradMode::is_enabled() || (!xs.requires_grad() && !up0.requires_grad() &&
                                                        !w.requires_grad()));
  std::vector<at::Tensor> ys;  // the experts' weighted outputs, rows in sorted order
  if (grouped) {
    std::vector<at::Tensor> up, down;
    up.reserve(static_cast<size_t>(E)), down.reserve(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      const std::string name = "experts." + std::to_string(e) + ".";
      up.push_back(p.get(name + "up_proj.weight"));
      down.push_back(p.get(name + "down_proj.weight"));
    }
    const std::vector<int64_t> counts(cnt, cnt + E);
    at::Tensor a = kernels::moe_grouped_linear(xs, up, counts, at::Tensor(), /*relu2=*/true);
    ys.push_back(kernels::moe_grouped_linear(a, down, counts, w.to(at::kFloat), /*relu2=*/false));
  }
  int64_t offset = 0;
  for (int64_t e = 0; e < E && !grouped; ++e) {
    const int64_t n = cnt[e];
    if (n == 0) continue;
    const std::string name = "experts." + std::to_string(e) + ".";
    at::Tensor a = relu2(at::linear(xs.narrow(0, offset, n), p.get(name + "up_proj.weight")));
    if (channel_mask.defined()) a = a * (channel_mask.dim() == 2 ? channel_mask[e] : channel_mask);
    if (want_channels) channel_sums[e] += a.detach().to(w.scalar_type()).square().sum(0);
    at::Tensor y = at::linear(a, p.get(name + "down_proj.weight")) * w.narrow(0, offset, n).unsqueeze(1);
    if (want_out) {
      at::Tensor tok = token.narrow(0, offset, n);
      out_norms.index_put_({tok, at::full({n}, e, tok.options())}, y.detach().norm(2, 1));
    }
    ys.push_back(y);
    offset += n;
  }
  if (want_out) ctx.tap(Tap::MoeExpertOutput, out_norms);
  if (want_channels) ctx.tap(Tap::MoeExpertChannels, channel_sums);
  // Accumulated in the routing weights' dtype (float32 for bf16 models), as transformers does.
  at::Tensor routed = at::zeros({N, xl.size(1)}, w.options());
  if (!ys.empty()) routed = routed.index_add(0, token, at::cat(ys, 0).to(w.scalar_type()));
  routed = routed.to(h.scalar_type());
  if (c.moe_latent_size > 0)
    routed = at::linear(routed, p.get("fc2_latent_proj.weight"), p.optional("fc2_latent_proj.bias"));

  at::Tensor s = relu2(at::linear(h, p.get("shared_experts.up_proj.weight"), p.optional("shared_experts.up_proj.bias")));
  if (mask && mask->moe_shared_channels.defined()) s = s * mask->moe_shared_channels.to(s.scalar_type());
  ctx.tap(Tap::MoeShared, s);
  at::Tensor shared = at::linear(s, p.get("shared_experts.down_proj.weight"), p.optional("shared_experts.down_proj.bias"));
  return routed.view(h.sizes()) + shared;
}

}  // namespace model
}  // namespace mp
