// MoE in the memory and throughput model: memory counts every expert, throughput the active ones.
#include <cmath>

#include "catch.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/search.h"

using namespace mp;
using namespace mp::search;

TEST_CASE("Nemotron 3 Nano 30B-A3B: total and active parameters from the published config", "[search][memory][moe]") {
  ModelConfig c = load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/nemotron-3-nano-30b-a3b.json");
  CHECK(c.num_layers() == 52);
  CHECK(c.count(LayerType::Mamba) == 23);
  CHECK(c.count(LayerType::Moe) == 23);
  CHECK(c.count(LayerType::Attention) == 6);
  CHECK(c.hidden_size == 2688);
  CHECK(c.mamba_num_heads == 64);
  CHECK(c.mamba_head_dim == 64);
  CHECK(c.n_routed_experts == 128);
  CHECK(c.moe_intermediate_size == 1856);
  CHECK(c.num_experts_per_tok == 6);
  CHECK(c.moe_shared_expert_intermediate_size == 3712);
  // By hand: embeddings + lm_head 2 x 131072 x 2688; per Mamba layer in_proj 2688 x (2x4096 + 2x8x128 + 64), conv
  // (4096 + 2048) x 4 + bias, A/D/dt 3 x 64, norm 4096, out_proj 4096 x 2688; per attention layer
  // 2 x 32x128x2688 + 2 x 2x128x2688; per MoE layer 128 experts x 2 x 1856 x 2688 (6 of them active), router
  // 128 x 2688 + 128, shared 2 x 3712 x 2688; a norm per layer and the final norm.
  const double H = 2688, V = 131072;
  const double mamba = H * (2 * 4096 + 2 * 8 * 128 + 64) + 6144 * 4 + 6144 + 3 * 64 + 4096 + 4096 * H;
  const double attn = 2 * 32 * 128 * H + 2 * 2 * 128 * H;
  const double fixed = 128 * H + 128 + 2 * 3712 * H, expert = 2 * 1856 * H;
  const double base = 2 * V * H + H + 52 * H + 23 * mamba + 6 * attn + 23 * fixed;
  ParamCounts p = count_params(Shape::of(c));
  CHECK(static_cast<double>(p.total()) == base + 23 * 128 * expert);
  CHECK(static_cast<double>(p.active()) == base + 23 * 6 * expert);
  CHECK(p.total() == count_parameters(c));  // the same from the checkpoint's tensor list
  // The published sizes: 31.6B total (ModelOpt's "31.6B/A3.6B"), about 3.6B active.
  CHECK(std::fabs(p.total() / 1e9 - 31.6) < 0.05);
  CHECK(std::fabs(p.active() / 1e9 - 3.6) < 0.05);
  // Memory holds every expert: bf16 weights 2 bytes x total (58.8 GiB; ModelOpt reports 58.9).
  InferenceSetup one;
  one.context = 1;
  one.prefill_chunk = 0;
  CHECK(estimate_memory(c, one).weights == 2.0 * static_cast<double>(p.total()));
  // Decode at batch 1 reads only the 6 routed experts per layer (plus everything dense); a batch of 64 touches
  // E (1 - (1 - 6/128)^64) = 122.07 experts per layer on average.
  InferenceSetup b1;
  b1.batch = 1;
  StepCost one_token = decode_step_cost(Shape::of(c), b1, 0);
  CHECK(one_token.stream_bytes == Approx(2.0 * (p.active() - p.embeddings) + 2.0 * H).epsilon(1e-9));
  CHECK(one_token.gemm_flops == Approx(2.0 * p.matmul()).epsilon(1e-12));
  CHECK(p.matmul() == p.lm_head + p.mamba + p.attention + p.moe_active);
  CHECK(moe_experts_touched(Shape::of(c), 64) == Approx(128 * (1 - std::pow(1 - 6.0 / 128, 64))));
  CHECK(moe_experts_touched(Shape::of(c), 64) == Approx(122.07).margin(0.01));
}

TEST_CASE("the search's parameter count equals the checkpoint's for every published config", "[search][memory]") {
  // Two implementations: the search's from widths (search/memory_model.cpp) and the loader's over the tensor list
  // it expects (io/checkpoint.cpp). Dense, MoE, tied and untied, with and without biases.
  for (const char* name : {"nemotron-h-8b", "nemotron-h-47b", "nemotron-h-56b", "nemotron-nano-12b-v2",
                           "nemotron-nano-9b-v2", "nemotron-3-nano-30b-a3b", "demo-teacher"}) {
    INFO(name);
    ModelConfig c = load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/" + name + ".json");
    CHECK(count_params(Shape::of(c)).total() == count_parameters(c));
  }
}
