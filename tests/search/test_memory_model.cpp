// The memory model against figures computed independently here: parameter counts summed tensor by tensor from
// the published dimensions (and the rounded counts NVIDIA publishes), and the GiB figures of the reference
// page (12B at 128k: ~22.9 weights + 3.0 KV + 0.07 state; 9B: 16.6 + 2.0 + 0.07), which use NVIDIA's formula.
#include <cmath>
#include <map>
#include <string>

#include "catch.h"
#include "minipuzzle/config.h"
#include "minipuzzle/error.h"
#include "minipuzzle/search.h"

using namespace mp;
using namespace mp::search;

static ModelConfig published(const std::string& name) {
  return load_config(std::string(MINIPUZZLE_SOURCE_DIR) + "/configs/models/" + name + ".json");
}

// Sum of tensor sizes, written out per tensor name as they appear in a Hugging Face checkpoint.
struct HandCount {
  std::map<std::string, double> tensors;
  double total() const {
    double t = 0;
    for (auto& [k, v] : tensors) t += v;
    return t;
  }
};

static HandCount hand_count(const std::string& pattern, double H, double F, double heads, double head_dim, double N,
                            double attn_heads) {
  const double V = 131072, G = 8, kv = 8, ahd = 128, K = 4;
  const double d_inner = heads * head_dim, conv_channels = d_inner + 2 * G * N;
  HandCount c;
  c.tensors["backbone.embeddings.weight"] = V * H;
  c.tensors["lm_head.weight"] = V * H;
  c.tensors["backbone.norm_f.weight"] = H;
  int i = 0;
  for (char t : pattern) {
    std::string p = "backbone.layers." + std::to_string(i++) + ".";
    c.tensors[p + "norm.weight"] = H;
    if (t == 'M') {
      c.tensors[p + "mixer.in_proj.weight"] = (d_inner /*z*/ + d_inner /*x*/ + G * N /*B*/ + G * N /*C*/ + heads /*dt*/) * H;
      c.tensors[p + "mixer.conv1d.weight"] = conv_channels * 1 * K;
      c.tensors[p + "mixer.conv1d.bias"] = conv_channels;
      c.tensors[p + "mixer.A_log"] = heads;
      c.tensors[p + "mixer.D"] = heads;
      c.tensors[p + "mixer.dt_bias"] = heads;
      c.tensors[p + "mixer.norm.weight"] = d_inner;
      c.tensors[p + "mixer.out_proj.weight"] = H * d_inner;
    } else if (t == '*') {
      c.tensors[p + "mixer.q_proj.weight"] = attn_heads * ahd * H;
      c.tensors[p + "mixer.k_proj.weight"] = kv * ahd * H;
      c.tensors[p + "mixer.v_proj.weight"] = kv * ahd * H;
      c.tensors[p + "mixer.o_proj.weight"] = H * attn_heads * ahd;
    } else {
      c.tensors[p + "mixer.up_proj.weight"] = F * H;
      c.tensors[p + "mixer.down_proj.weight"] = H * F;
    }
  }
  return c;
}

struct Published {
  const char* file;
  double billions;  // as published / on the reference page
  double H, F, heads, head_dim, N, attn_heads;
};

static const Published kModels[] = {
    {"nemotron-h-8b", 8.10, 4096, 21504, 128, 64, 128, 32},
    {"nemotron-h-47b", 46.8, 8192, 30720, 256, 64, 256, 64},
    {"nemotron-h-56b", 56.3, 8192, 32768, 256, 64, 256, 64},
    {"nemotron-nano-12b-v2", 12.31, 5120, 20480, 128, 80, 128, 40},
    {"nemotron-nano-9b-v2", 8.89, 4480, 15680, 128, 80, 128, 40},
};

TEST_CASE("parameter counts of the published configs", "[search][memory]") {
  for (auto& m : kModels) {
    INFO(m.file);
    ModelConfig c = published(m.file);
    HandCount hand = hand_count(c.pattern(), m.H, m.F, m.heads, m.head_dim, m.N, m.attn_heads);
    ParamCounts p = count_params(Shape::of(c));
    CHECK(static_cast<double>(p.total()) == hand.total());
    // Published rounding: two decimals for the Nano models, one or two for Nemotron-H.
    CHECK(std::fabs(static_cast<double>(p.total()) / 1e9 - m.billions) < 0.05);
  }
  CHECK(count_params(Shape::of(published("nemotron-nano-12b-v2"))).total() == 12310001152);
  CHECK(count_params(Shape::of(published("nemotron-nano-9b-v2"))).total() == 8888227328);
}

TEST_CASE("published layer patterns count as documented", "[search][memory]") {
  struct Counts {
    const char* file;
    int m, a, f;
  } counts[] = {{"nemotron-h-8b", 24, 4, 24},
                {"nemotron-h-47b", 45, 5, 48},
                {"nemotron-h-56b", 54, 10, 54},
                {"nemotron-nano-12b-v2", 28, 6, 28},
                {"nemotron-nano-9b-v2", 27, 4, 25}};
  for (auto& k : counts) {
    INFO(k.file);
    ModelConfig c = published(k.file);
    CHECK(c.count(LayerType::Mamba) == k.m);
    CHECK(c.count(LayerType::Attention) == k.a);
    CHECK(c.count(LayerType::Mlp) == k.f);
  }
}

TEST_CASE("memory terms match NVIDIA's formula at 128k (reference page figures)", "[search][memory]") {
  InferenceSetup u;
  u.context = 131072;
  u.batch = 1;
  u.weights = u.kv_cache = u.conv_state = u.ssm_state = DType::BF16;  // NVIDIA's formula: one dtype for all
  u.prefill_chunk = 0;
  struct Expect {
    const char* file;
    double weights, kv, state;  // GiB, rounded as on the reference page
  } expect[] = {{"nemotron-nano-12b-v2", 22.9, 3.0, 0.07}, {"nemotron-nano-9b-v2", 16.6, 2.0, 0.07}};
  for (auto& e : expect) {
    INFO(e.file);
    ModelConfig c = published(e.file);
    MemoryBreakdown m = estimate_memory(c, u);
    CHECK(m.weights / kGiB == Approx(e.weights).margin(0.05));
    CHECK(m.kv_cache / kGiB == Approx(e.kv).margin(1e-9));
    CHECK((m.conv_state + m.ssm_state) / kGiB == Approx(e.state).margin(0.005));
    CHECK(m.activations == 0);
    // Exact: KV = attention layers x 2 (K, V) x context x KV heads x head_dim x 2 bytes.
    CHECK(m.kv_cache == double(c.count(LayerType::Attention)) * 2 * 131072 * 8 * 128 * 2);
    // Exact: state = Mamba layers x ((conv channels) x (d_conv - 1) + heads x head_dim x state) x 2 bytes.
    double conv_channels = 128 * 80 + 2 * 8 * 128;
    CHECK(m.conv_state + m.ssm_state ==
          double(c.count(LayerType::Mamba)) * (conv_channels * 3 + 128.0 * 80 * 128) * 2);
  }
}

TEST_CASE("each state term follows its own dtype; batch and context scale what they should", "[search][memory]") {
  ModelConfig c = published("nemotron-nano-9b-v2");
  InferenceSetup u;
  u.context = 4096;
  u.prefill_chunk = 0;
  u.conv_state = DType::BF16;
  u.ssm_state = DType::F32;
  MemoryBreakdown a = estimate_memory(c, u);
  CHECK(a.ssm_state == 27.0 * 128 * 80 * 128 * 4);
  CHECK(a.conv_state == 27.0 * 3 * (128 * 80 + 2 * 8 * 128) * 2);
  u.batch = 3;
  u.context = 8192;
  MemoryBreakdown b = estimate_memory(c, u);
  CHECK(b.weights == a.weights);
  CHECK(b.kv_cache == a.kv_cache * 6);
  CHECK(b.ssm_state == a.ssm_state * 3);
  u.kv_cache = DType::FP8;
  CHECK(estimate_memory(c, u).kv_cache == b.kv_cache / 2);
  u.weights = DType::FP4;
  CHECK(estimate_memory(c, u).weights == a.weights / 4);
}

TEST_CASE("prefill activation term: hand count for one chunk", "[search][memory]") {
  ModelConfig c = published("nemotron-nano-9b-v2");
  const double T = 2048, H = 4480, a = 2;
  const double in_proj = 2 * 10240 + 2 * 8 * 128 + 128, conv = 10240 + 2048, d_inner = 10240;
  const double mamba = T * in_proj * a + T * conv * a + (2048 / 128) * 128 * 80 * 128 * 4.0 + 2 * T * d_inner * a;
  const double mlp = 2 * T * 15680 * a, attn = T * (40 + 16) * 128 * a + T * 40 * 128 * a, logits = 131072 * 4.0;
  const double expected = T * H * (4 + a) + std::max(std::max(mamba, mlp), std::max(attn, logits));
  CHECK(prefill_activation_bytes(Shape::of(c), 2048, 1, DType::BF16) == Approx(expected).epsilon(1e-12));
  InferenceSetup u;
  u.context = 131072;
  u.prefill_chunk = 2048;
  CHECK(estimate_memory(c, u).activations == Approx(expected).epsilon(1e-12));
}

TEST_CASE("reservations and budgets", "[search][hardware]") {
  HardwareProfile a10g = load_hardware("a10g");
  CHECK(a10g.memory_bytes / kGiB == Approx(22.06));
  // Nano 2: 22.06 GiB minus a 5% framework buffer (in the profile) minus 1.3 GiB for the vision encoder.
  Budget b = make_budget(a10g, parse_reservations("vision=1.3GiB"), std::nullopt);
  CHECK(b.usable_bytes() / kGiB == Approx(22.06 * 0.95 - 1.3).margin(1e-9));
  CHECK(b.usable_bytes() / kGiB == Approx(19.66).margin(0.005));
  HardwareProfile nano2 = load_hardware("a10g-nano2");
  CHECK(make_budget(nano2, {}, std::nullopt).usable_bytes() == Approx(b.usable_bytes()));
  auto r = parse_reservations("framework=10%,512MiB,vision=1.3GiB");
  REQUIRE(r.size() == 3);
  CHECK(r[0].fraction == Approx(0.10));
  CHECK(r[1].bytes == 512.0 * 1024 * 1024);
  CHECK(r[2].name == "vision");
  CHECK(make_budget(a10g, {}, 31.7).usable_bytes() / kGiB == Approx(31.7));
  CHECK_THROWS_AS(parse_reservations("1.3parsecs"), mp::Error);
  CHECK(parse_token_count("128k") == 131072);
  CHECK(parse_token_count("1000000") == 1000000);
  CHECK(parse_token_count("1M") == 1048576);
  for (const char* name : {"a10g", "a10g-nano2", "l4", "rtx4090", "rtx5090", "a100-40gb", "a100-80gb", "h100-80gb", "h200"}) {
    INFO(name);
    HardwareProfile h = load_hardware(name);
    CHECK(h.bandwidth_bytes_per_s > 1e11);
    CHECK(h.bf16_flops > 1e13);
    CHECK(!h.source.empty());
  }
}
