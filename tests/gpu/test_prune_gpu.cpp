// GPU host only (label "gpu", excluded from CPU CI): pruning in memory on CUDA cuts the same tensors as on the CPU
// (index_select on the device against the host; bit-identical bf16, since slicing does no arithmetic).
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <algorithm>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/model.h"
#include "minipuzzle/pruning.h"
#include "pruning/prune_test_util.h"

using namespace mp;

TEST_CASE("pruning in memory on CUDA cuts the same tensors as on the CPU", "[gpu][pruning]") {
  REQUIRE(at::hasCUDA());
  auto ck = Checkpoint::open(test::reference_model("hybrid_g4_sharded"));
  const ModelConfig& c = ck.config();
  Scores scores = test::make_random_scores(c, 5);
  // Every width axis but hidden, and two layers by depth score.
  PruneTarget t;
  t.origin = "everything but hidden";
  t.intermediate_size = c.intermediate_size / 2;
  t.num_attention_heads = c.num_key_value_heads * std::max<int64_t>(1, c.num_attention_heads / c.num_key_value_heads - 1);
  t.mamba_num_heads = c.n_groups * std::max<int64_t>(1, c.mamba_num_heads / c.n_groups - 1);
  t.mamba_head_dim = c.mamba_head_dim - 1;
  t.drop_count = 2;
  PrunePlan plan = make_plan(c, t, &scores);
  NemotronH cpu = prune_in_memory(NemotronH::load(ck, at::kCPU, at::kBFloat16), plan);
  NemotronH gpu = prune_in_memory(NemotronH::load(ck, at::kCUDA, at::kBFloat16), plan);
  REQUIRE(cpu.parameters().size() == gpu.parameters().size());
  for (auto& [name, w] : cpu.parameters()) {
    INFO(name);
    CHECK(gpu.parameters().at(name).is_cuda());
    CHECK(at::equal(gpu.parameters().at(name).cpu(), w));
  }
}
