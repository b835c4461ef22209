// minipuzzle inspect CKPT [--json]: architecture, parameters per layer type, and memory per token/sequence.
#include <cstdio>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/report.h"
#include "minipuzzle/search.h"
#include "src/cli/command.h"

namespace mp::cli {
namespace {

struct InspectArgs {
  std::string checkpoint;
  bool json_out = false;
};

json describe(const Checkpoint& ck) {
  const ModelConfig& c = ck.config();
  search::Shape shape = search::Shape::of(c);
  search::ParamCounts params = search::count_params(shape);
  search::InferenceSetup one_token;
  one_token.context = 1;
  one_token.prefill_chunk = 0;
  search::MemoryBreakdown m = search::estimate_memory(shape, one_token);
  json j;
  j["checkpoint"] = ck.dir();
  j["pattern"] = c.pattern();
  j["layers"] = {{"total", c.num_layers()}, {"mamba", c.count(LayerType::Mamba)},
                 {"attention", c.count(LayerType::Attention)}, {"mlp", c.count(LayerType::Mlp)},
                 {"moe", c.count(LayerType::Moe)}};
  if (c.count(LayerType::Moe))
    j["moe"] = {{"n_routed_experts", c.n_routed_experts}, {"num_experts_per_tok", c.num_experts_per_tok},
                {"moe_intermediate_size", c.moe_intermediate_size},
                {"moe_shared_expert_intermediate_size", c.moe_shared_expert_intermediate_size},
                {"moe_latent_size", c.moe_latent_size}, {"n_group", c.n_group}, {"topk_group", c.topk_group},
                {"routed_scaling_factor", c.routed_scaling_factor}, {"norm_topk_prob", c.norm_topk_prob}};
  // MTP layers: not part of the model's forward pass, but carried by prune and save (never silently lost).
  const auto mtp = ck.mtp_tensor_names();
  if (!mtp.empty() || c.num_nextn_predict_layers > 0) {
    int64_t n = 0;
    for (const auto& name : mtp) {
      int64_t k = 1;
      for (auto d : ck.info(name).shape) k *= d;
      n += k;
    }
    j["mtp"] = {{"num_nextn_predict_layers", c.num_nextn_predict_layers}, {"tensors", mtp.size()}, {"parameters", n}};
  }
  j["shape"] = {{"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                {"attention_heads", c.num_attention_heads}, {"kv_heads", c.num_key_value_heads},
                {"head_dim", c.head_dim}, {"mamba_heads", c.mamba_num_heads}, {"mamba_head_dim", c.mamba_head_dim},
                {"n_groups", c.n_groups}, {"ssm_state_size", c.ssm_state_size}, {"conv_kernel", c.conv_kernel},
                {"tie_word_embeddings", c.tie_word_embeddings}};
  j["parameters"] = params.to_json();
  j["stored_bytes"] = ck.total_bytes();
  j["storage_dtype"] = dtype_name(ck.storage_dtype());
  j["weights_bf16_bytes"] = params.total() * 2.0;
  j["kv_cache_bytes_per_token_bf16"] = m.kv_cache;
  j["mamba_state_bytes_per_sequence"] = {{"conv_bf16", m.conv_state}, {"ssm_fp32", m.ssm_state},
                                         {"total", m.conv_state + m.ssm_state}};
  return j;
}

void run(const InspectArgs& a) {
  auto ck = Checkpoint::open(a.checkpoint);
  json j = describe(ck);
  if (a.json_out) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  using report::format_number;
  report::Table t;
  t.header = {"quantity", "value"};
  t.right_align = {false, true};
  auto row = [&](const std::string& k, const std::string& v) { t.rows.push_back({k, v}); };
  row("pattern", j["pattern"].get<std::string>());
  row("layers (M / * / - / E)", std::to_string(j["layers"]["mamba"].get<int64_t>()) + " / " +
                                    std::to_string(j["layers"]["attention"].get<int64_t>()) + " / " +
                                    std::to_string(j["layers"]["mlp"].get<int64_t>()) + " / " +
                                    std::to_string(j["layers"]["moe"].get<int64_t>()));
  if (j.contains("moe"))
    row("experts (routed x width, active, shared)",
        std::to_string(j["moe"]["n_routed_experts"].get<int64_t>()) + " x " +
            std::to_string(j["moe"]["moe_intermediate_size"].get<int64_t>()) + ", " +
            std::to_string(j["moe"]["num_experts_per_tok"].get<int64_t>()) + ", " +
            std::to_string(j["moe"]["moe_shared_expert_intermediate_size"].get<int64_t>()));
  if (j.contains("mtp"))
    row("MTP layers (tensors, parameters; kept by prune)",
        std::to_string(j["mtp"]["num_nextn_predict_layers"].get<int64_t>()) + " (" +
            std::to_string(j["mtp"]["tensors"].get<int64_t>()) + ", " +
            format_number(j["mtp"]["parameters"].get<double>(), true) + ")");
  for (auto& [k, v] : j["parameters"].items()) row("parameters: " + k, format_number(v.get<double>(), true));
  row("weights in bf16", format_number(j["weights_bf16_bytes"].get<double>(), true) + "B");
  row("KV cache per token (bf16)", format_number(j["kv_cache_bytes_per_token_bf16"].get<double>(), true) + "B");
  row("Mamba state per sequence", format_number(j["mamba_state_bytes_per_sequence"]["total"].get<double>(), true) + "B");
  std::printf("%s", t.markdown().c_str());
}

void add(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* c = app.add_subcommand("inspect", "Describe a checkpoint: layers, parameters, memory per token");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_flag("--json", args->json_out, "print JSON instead of a table");
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(inspect, mp::cli::add);
