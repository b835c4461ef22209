// Every kind of pruned output loads in transformers (no missing / unexpected / mismatched tensors) and its logits
// equal the C++ model's on the same checkpoint (tests/reference/check_pruned_hf.py, fp32, 1e-4 of the logit scale
// max(1, max |logit|); measured up to 1.2e-4 absolute on logits of magnitude ~5 over 130 tokens). Covers hidden-channel pruning, which has no masked equivalent, whole Mamba groups, whole KV groups,
// head_dim, depth, tied embeddings, sharded parents, and one output written by the CLI from a scores file.
#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/safetensors.h"
#include "prune_test_util.h"
#include "run_command.h"

using namespace mp;

namespace {

std::vector<std::pair<std::string, PruneTarget>> hf_targets(const ModelConfig& c) {
  std::vector<std::pair<std::string, PruneTarget>> out;
  const int64_t attn_per_group = c.num_attention_heads / c.num_key_value_heads;
  const int64_t mamba_per_group = c.mamba_num_heads / c.n_groups;
  PruneTarget hidden;
  hidden.hidden_size = c.hidden_size - 8;
  out.push_back({"hidden", hidden});
  PruneTarget all;
  all.hidden_size = c.hidden_size * 3 / 4;
  all.intermediate_size = c.intermediate_size / 2;
  all.num_attention_heads = c.num_key_value_heads * std::max<int64_t>(1, attn_per_group - 1);
  all.mamba_num_heads = c.n_groups * std::max<int64_t>(1, mamba_per_group - 1);
  all.mamba_head_dim = c.mamba_head_dim - 2;
  all.drop_layers = {0, 3};
  out.push_back({"all axes + depth", all});
  if (c.n_groups > 1) {
    PruneTarget groups;
    groups.mamba_num_heads = c.mamba_num_heads / 2;
    groups.mamba_group_removal = true;
    groups.hidden_size = c.hidden_size - 4;
    out.push_back({"whole mamba groups", groups});
  }
  if (c.num_key_value_heads > 1) {
    PruneTarget kv;
    kv.num_key_value_heads = 1;
    kv.num_attention_heads = attn_per_group;
    out.push_back({"one KV group", kv});
  }
  return out;
}

void write_cpp_reference(const std::string& ckpt, const std::string& ref_path, int64_t vocab) {
  auto model = NemotronH::load(Checkpoint::open(ckpt), at::kCPU, at::kFloat);
  std::map<std::string, at::Tensor> ref;
  at::manual_seed(5);
  for (int64_t L : {7, 130}) {
    at::Tensor ids = at::randint(0, vocab, {2, L}, at::kLong);
    ref["input_ids_" + std::to_string(L)] = ids;
    ref["logits_" + std::to_string(L)] = test::logits_of(model, ids).contiguous();
  }
  save_safetensors(ref_path, ref);
}

}  // namespace

TEST_CASE("pruned checkpoints load in transformers with the C++ model's logits", "[pruning][transformers]") {
  const std::string dir = test::temp_dir("prune_hf");
  std::string pairs;
  int n = 0;
  for (const auto& model_name : test::reference_model_names()) {
    auto ck = Checkpoint::open(test::reference_model(model_name));
    Scores scores = test::make_random_scores(ck.config(), 21);
    for (auto& [label, target] : hf_targets(ck.config())) {
      PrunePlan plan = make_plan(ck.config(), target, &scores);
      const std::string out = dir + "/" + model_name + "_" + std::to_string(n++);
      PruneOptions options;
      options.max_shard_bytes = 16 << 10;  // several shards: the index must be right too
      prune_checkpoint(ck, plan, out, options);
      write_cpp_reference(out, out + ".reference.safetensors", ck.config().vocab_size);
      pairs += " '" + out + "=" + out + ".reference.safetensors'";
    }
  }
  // One output through the CLI: scores read from a file, a target given as inline JSON.
  {
    auto ck = Checkpoint::open(test::reference_model("hybrid_g2_tied"));
    const std::string scores_path = dir + "/scores_g2.json";
    write_scores(scores_path, test::make_random_scores(ck.config(), 4));
    const std::string out = dir + "/cli_g2";
    auto r = test::run_command(test::minipuzzle_binary() + " prune " + test::reference_model("hybrid_g2_tied") +
                               " --scores " + scores_path +
                               " --target '{\"hidden_size\": 48, \"mamba_num_heads\": 4, \"ffn\": 64}'"
                               " --drop-count 1 --depth-criterion block_influence -o " + out +
                               " --summary-json " + dir + "/cli_summary.json");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    auto summary = read_json_file(dir + "/cli_summary.json");
    CHECK(summary["after"]["hidden_size"] == 48);
    CHECK(summary["after"]["layers"] == ck.config().num_layers() - 1);
    CHECK(summary["parameters"]["after"] == count_parameters(Checkpoint::open(out).config()));
    write_cpp_reference(out, out + ".reference.safetensors", ck.config().vocab_size);
    pairs += " '" + out + "=" + out + ".reference.safetensors'";
  }
  auto r = test::run_command(test::python() + " " + test::source_dir() + "/tests/reference/check_pruned_hf.py --tol 1e-4" + pairs);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("\"ok\": false") == std::string::npos);
}
