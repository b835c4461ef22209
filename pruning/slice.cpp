// Which rows and columns of which parent tensor make each tensor of the pruned model.
//
// Mamba in_proj rows are [z (d_inner) | x (d_inner) | B (G*N) | C (G*N) | dt (heads)]; conv1d channels are
// [x | B | C]. A kept head keeps its z, x and dt rows, its x conv channels, A_log, D, dt_bias, gated-norm weights
// and out_proj columns; B and C stay whole for every kept group (and go whole with a removed group).
// Hidden channels cut the embedding columns, every norm, the columns of every input projection and the rows of
// every output projection, and lm_head's columns.
#include <ATen/ATen.h>

#include "minipuzzle/error.h"
#include "minipuzzle/pruning.h"

namespace mp {

namespace {

// Empty when `kept` is every index of `n` in order (the cut leaves that dimension whole).
std::vector<int64_t> or_all(std::vector<int64_t> kept, int64_t n) {
  if (static_cast<int64_t>(kept.size()) != n) return kept;
  for (int64_t i = 0; i < n; ++i)
    if (kept[static_cast<size_t>(i)] != i) return kept;
  return {};
}

// Blocks of `width` consecutive indices starting at `offset + unit * width`, for each kept unit.
void append_blocks(std::vector<int64_t>& out, const std::vector<int64_t>& units, int64_t width, int64_t offset) {
  for (int64_t u : units)
    for (int64_t k = 0; k < width; ++k) out.push_back(offset + u * width + k);
}

std::string source_layer(int64_t i) { return "backbone.layers." + std::to_string(i) + "."; }

// MoE: routed expert K of the pruned layer is parent expert moe_experts[K] with its kept channels; the router keeps
// the kept experts' rows (weight and e_score_correction_bias); the shared expert keeps its kept channels. Hidden
// channels cut the router, the shared expert, the latent projections, or (without latent projections) the experts.
void cut_moe_tensor(TensorCut& cut, const LayerPlan& lp, const ModelConfig& s, const std::vector<int64_t>& hidden,
                    const std::string& rest) {
  const std::vector<int64_t> experts = or_all(lp.moe_experts, s.n_routed_experts);
  const std::vector<int64_t> shared = or_all(lp.moe_shared, s.moe_shared_expert_intermediate_size);
  const std::vector<int64_t> expert_io = s.moe_latent_size > 0 ? std::vector<int64_t>() : hidden;
  const std::string ex = "mixer.experts.";
  if (rest.rfind(ex, 0) == 0) {
    size_t dot = rest.find('.', ex.size());
    const size_t k = static_cast<size_t>(std::stoll(rest.substr(ex.size(), dot - ex.size())));
    const int64_t parent_expert = lp.moe_experts.at(k);
    const std::string what = rest.substr(dot + 1);
    cut.source_name = cut.source_name.substr(0, cut.source_name.size() - rest.size()) + ex +
                      std::to_string(parent_expert) + "." + what;
    const std::vector<int64_t> channels = or_all(lp.moe_channels.at(k), s.moe_intermediate_size);
    if (what == "up_proj.weight") cut.rows = channels, cut.cols = expert_io;
    else if (what == "down_proj.weight") cut.rows = expert_io, cut.cols = channels;
    else fail("pruning: unexpected MoE expert tensor ", rest);
    return;
  }
  if (rest == "mixer.gate.weight") cut.rows = experts, cut.cols = hidden;
  else if (rest == "mixer.gate.e_score_correction_bias") cut.rows = experts;
  else if (rest == "mixer.shared_experts.up_proj.weight") cut.rows = shared, cut.cols = hidden;
  else if (rest == "mixer.shared_experts.up_proj.bias") cut.rows = shared;
  else if (rest == "mixer.shared_experts.down_proj.weight") cut.rows = hidden, cut.cols = shared;
  else if (rest == "mixer.shared_experts.down_proj.bias") cut.rows = hidden;
  else if (rest == "mixer.fc1_latent_proj.weight") cut.cols = hidden;
  else if (rest == "mixer.fc1_latent_proj.bias") {}
  else if (rest == "mixer.fc2_latent_proj.weight" || rest == "mixer.fc2_latent_proj.bias") cut.rows = hidden;
  else fail("pruning: unexpected MoE tensor ", rest);
}

}  // namespace

std::vector<TensorCut> plan_tensor_cuts(const PrunePlan& plan) {
  const ModelConfig& s = plan.source;
  const ModelConfig& t = plan.target;
  const std::vector<int64_t> hidden = or_all(plan.hidden, s.hidden_size);
  std::vector<TensorCut> cuts;
  for (auto& spec : expected_tensors(t)) {
    TensorCut cut;
    cut.out = spec;
    const std::string& n = spec.name;
    if (n == "backbone.embeddings.weight" || n == "lm_head.weight") {
      cut.source_name = n;
      cut.cols = hidden;
    } else if (n == "backbone.norm_f.weight") {
      cut.source_name = n;
      cut.rows = hidden;
    } else {
      // backbone.layers.<i>.<rest>: renumbered from the parent layer the plan maps it to.
      const std::string prefix = "backbone.layers.";
      MP_CHECK(n.rfind(prefix, 0) == 0, "pruning: unexpected tensor name ", n);
      size_t dot = n.find('.', prefix.size());
      const int64_t i = std::stoll(n.substr(prefix.size(), dot - prefix.size()));
      const std::string rest = n.substr(dot + 1);
      const LayerPlan& lp = plan.layers.at(static_cast<size_t>(i));
      cut.source_name = source_layer(lp.source) + rest;

      if (rest == "norm.weight") {
        cut.rows = hidden;
      } else if (lp.type == LayerType::Mlp) {
        const auto neurons = or_all(lp.mlp_neurons, s.intermediate_size);
        if (rest == "mixer.up_proj.weight") cut.rows = neurons, cut.cols = hidden;
        else if (rest == "mixer.up_proj.bias") cut.rows = neurons;
        else if (rest == "mixer.down_proj.weight") cut.rows = hidden, cut.cols = neurons;
        else if (rest == "mixer.down_proj.bias") cut.rows = hidden;
        else fail("pruning: unexpected MLP tensor ", n);
      } else if (lp.type == LayerType::Attention) {
        std::vector<int64_t> q, kv;
        append_blocks(q, lp.attn_heads, s.head_dim, 0);
        append_blocks(kv, lp.attn_kv_heads, s.head_dim, 0);
        q = or_all(q, s.num_attention_heads * s.head_dim);
        kv = or_all(kv, s.num_key_value_heads * s.head_dim);
        if (rest == "mixer.q_proj.weight") cut.rows = q, cut.cols = hidden;
        else if (rest == "mixer.k_proj.weight" || rest == "mixer.v_proj.weight") cut.rows = kv, cut.cols = hidden;
        else if (rest == "mixer.o_proj.weight") cut.rows = hidden, cut.cols = q;
        else fail("pruning: unexpected attention tensor ", n);
      } else if (lp.type == LayerType::Mamba) {
        const int64_t d_inner = s.mamba_d_inner(), GN = s.n_groups * s.ssm_state_size;
        const std::vector<int64_t> channels = lp.mamba_channels(s.mamba_head_dim);
        std::vector<int64_t> in_rows, conv, heads = or_all(lp.mamba_heads, s.mamba_num_heads);
        for (int64_t c : channels) in_rows.push_back(c);                  // z
        for (int64_t c : channels) in_rows.push_back(d_inner + c);        // x
        append_blocks(in_rows, lp.mamba_groups, s.ssm_state_size, 2 * d_inner);       // B
        append_blocks(in_rows, lp.mamba_groups, s.ssm_state_size, 2 * d_inner + GN);  // C
        for (int64_t h : lp.mamba_heads) in_rows.push_back(2 * d_inner + 2 * GN + h);  // dt
        for (int64_t c : channels) conv.push_back(c);
        append_blocks(conv, lp.mamba_groups, s.ssm_state_size, d_inner);
        append_blocks(conv, lp.mamba_groups, s.ssm_state_size, d_inner + GN);
        in_rows = or_all(in_rows, s.mamba_in_proj_dim());
        conv = or_all(conv, s.mamba_conv_dim());
        const auto inner = or_all(channels, d_inner);
        if (rest == "mixer.in_proj.weight") cut.rows = in_rows, cut.cols = hidden;
        else if (rest == "mixer.in_proj.bias") cut.rows = in_rows;
        else if (rest == "mixer.conv1d.weight" || rest == "mixer.conv1d.bias") cut.rows = conv;
        else if (rest == "mixer.A_log" || rest == "mixer.D" || rest == "mixer.dt_bias") cut.rows = heads;
        else if (rest == "mixer.norm.weight") cut.rows = inner;
        else if (rest == "mixer.out_proj.weight") cut.rows = hidden, cut.cols = inner;
        else if (rest == "mixer.out_proj.bias") cut.rows = hidden;
        else fail("pruning: unexpected Mamba tensor ", n);
      } else if (lp.type == LayerType::Moe) {
        cut_moe_tensor(cut, lp, s, hidden, rest);
      }
    }
    // Every cut must produce exactly the shape the pruned config implies.
    std::vector<int64_t> expect = spec.shape;
    auto check_dim = [&](const std::vector<int64_t>& idx, size_t d) {
      if (!idx.empty())
        MP_CHECK(static_cast<int64_t>(idx.size()) == expect[d], "pruning: internal error, ", n, " dim ", d, " keeps ",
                 idx.size(), " of the parent's rows but the pruned config implies ", expect[d]);
    };
    check_dim(cut.rows, 0);
    if (expect.size() > 1) check_dim(cut.cols, 1);
    cuts.push_back(std::move(cut));
  }
  return cuts;
}

at::Tensor cut_tensor(const at::Tensor& source, const TensorCut& cut) {
  at::Tensor t = source;
  auto index = [&](const std::vector<int64_t>& idx) {
    return at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(source.device());
  };
  if (!cut.rows.empty()) t = t.index_select(0, index(cut.rows));
  if (!cut.cols.empty()) t = t.index_select(1, index(cut.cols));
  if (cut.identity()) t = t.clone();
  t = t.contiguous();
  MP_CHECK(t.sizes().vec() == cut.out.shape, "pruning: ", cut.out.name, " came out with shape ", t.sizes(),
           " instead of ", at::IntArrayRef(cut.out.shape), " (does the parent match the plan?)");
  return t;
}

}  // namespace mp
