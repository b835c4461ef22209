// Units of the distillation trainer, each against an independent value: the schedules against hand-derived
// points, AdamW against the update written out element by element in double precision, the data order and
// packing against the token file itself, top-k logits against a dense construction.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <set>

#include "minipuzzle/distill.h"
#include "tests/catch.h"

using namespace mp;
using namespace mp::distill;

TEST_CASE("cosine schedule: warm-up, peak, midpoint, floor") {
  ScheduleOptions s;
  s.kind = LrSchedule::cosine;
  s.lr = 1.0;
  s.min_lr = 0.1;
  s.warmup_steps = 4;
  s.total_steps = 14;  // decay over steps 4..13 (9 intervals)
  CHECK(learning_rate(s, 0) == Approx(0.25));
  CHECK(learning_rate(s, 3) == Approx(1.0));
  CHECK(learning_rate(s, 4) == Approx(1.0));
  // progress 4.5/9 = 0.5 is between steps; check step 7: progress 3/9, lr = 0.1 + 0.9 * (1 + cos(pi/3)) / 2
  CHECK(learning_rate(s, 7) == Approx(0.1 + 0.9 * 0.75));
  CHECK(learning_rate(s, 13) == Approx(0.1));
}

TEST_CASE("WSD schedule: stable then linear decay over the last fraction") {
  ScheduleOptions s;
  s.kind = LrSchedule::wsd;
  s.lr = 2.0;
  s.min_lr = 0.0;
  s.warmup_steps = 2;
  s.total_steps = 20;
  s.wsd_decay_fraction = 0.25;  // 5 decay steps: 15..19
  CHECK(learning_rate(s, 0) == Approx(1.0));
  CHECK(learning_rate(s, 2) == Approx(2.0));
  CHECK(learning_rate(s, 14) == Approx(2.0));
  CHECK(learning_rate(s, 15) == Approx(2.0));
  CHECK(learning_rate(s, 17) == Approx(1.0));
  CHECK(learning_rate(s, 19) == Approx(0.0).margin(1e-12));
  CHECK_THROWS(lr_schedule_from_name("linear"));
}

TEST_CASE("AdamW matches the decoupled-weight-decay update written out by hand, fp32 and bf16 masters") {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(3);
    std::map<std::string, at::Tensor> params{{"w.weight", at::randn({3, 4}).to(dtype)},
                                             {"n.bias", at::randn({4}).to(dtype)}};
    std::map<std::string, at::Tensor> ref;  // double-precision reference: master, m, v
    for (auto& [k, p] : params) ref[k] = p.to(at::kDouble).clone();
    std::map<std::string, at::Tensor> m, v;
    for (auto& [k, p] : params) {
      m[k] = at::zeros_like(ref[k]);
      v[k] = at::zeros_like(ref[k]);
    }
    AdamWOptions o;
    o.weight_decay = 0.1;
    AdamW opt(params, o);
    for (int step = 1; step <= 3; ++step) {
      const double lr = 0.01 * step;
      for (auto& [k, p] : params) {
        at::Tensor g = at::randn(p.sizes());
        p.mutable_grad() = g.to(dtype);
        at::Tensor gd = g.to(dtype).to(at::kDouble);
        const double wd = k == "w.weight" ? o.weight_decay : 0.0;  // matrices decay, vectors do not
        ref[k] = ref[k] * (1 - lr * wd);
        m[k] = o.beta1 * m[k] + (1 - o.beta1) * gd;
        v[k] = o.beta2 * v[k] + (1 - o.beta2) * gd * gd;
        at::Tensor mh = m[k] / (1 - std::pow(o.beta1, step)), vh = v[k] / (1 - std::pow(o.beta2, step));
        ref[k] = ref[k] - lr * mh / (vh.sqrt() + o.eps);
      }
      opt.step(lr);
    }
    auto state = opt.state_tensors();
    for (auto& [k, p] : params) {
      // fp32: the parameter is the master; bf16: the master is fp32 and the parameter its rounding.
      at::Tensor master = dtype == at::kFloat ? p : state.at("master/" + k);
      CHECK(master.scalar_type() == at::kFloat);
      CHECK(at::allclose(master.to(at::kDouble), ref[k], 1e-5, 1e-6));
      CHECK(at::equal(p, master.to(dtype)));
      CHECK(at::allclose(state.at("exp_avg/" + k).to(at::kDouble), m[k], 1e-5, 1e-7));
    }
  }
}

TEST_CASE("AdamW treats tied parameters (one tensor, two names) as one") {
  at::Tensor shared = at::randn({5, 2});
  std::map<std::string, at::Tensor> params{{"backbone.embeddings.weight", shared}, {"lm_head.weight", shared}};
  AdamW opt(params, {});
  CHECK(opt.params().size() == 1);
}

TEST_CASE("clip_grad_norm returns the global norm and scales to max_norm") {
  at::Tensor a = at::zeros({2}), b = at::zeros({1});
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  CHECK(clip_grad_norm({a, b}, 1.0) == Approx(5.0));
  CHECK(a.grad()[0].item<float>() == Approx(0.6f).epsilon(1e-5));
  CHECK(b.grad()[0].item<float>() == Approx(0.8f).epsilon(1e-5));
  b.mutable_grad() = at::tensor({NAN});
  CHECK(std::isnan(clip_grad_norm({a, b}, 1.0)));
}

static std::shared_ptr<const TokenFile> counting_file(int64_t n) {
  std::vector<uint32_t> doc1, doc2;
  for (int64_t i = 0; i < n / 2; ++i) doc1.push_back(uint32_t(i % 97));
  for (int64_t i = n / 2; i < n; ++i) doc2.push_back(uint32_t(i % 97));
  TokenFileMetadata meta;
  meta.tokenizer_kind = "byte_level";
  meta.vocab_size = 97;
  return std::make_shared<const TokenFile>(TokenFile::from_documents({doc1, doc2}, meta));
}

TEST_CASE("packed windows: stride seq_len, seq_len + 1 tokens, spanning documents") {
  auto file = counting_file(1001);
  PackedWindows w(file, 10);
  CHECK(w.size() == 100);  // (1001 - 1) / 10
  for (int64_t i : {0, 49, 50, 99}) {
    at::Tensor t = w.window(i);
    REQUIRE(t.size(0) == 11);
    for (int64_t k = 0; k <= 10; ++k) CHECK(t[k].item<int64_t>() == int64_t(file->data()[i * 10 + k]));
  }
  Batch b = make_batch(w, {3, 7});
  CHECK(at::equal(b.input_ids[1], w.window(7).narrow(0, 0, 10)));
  CHECK(at::equal(b.labels[1], w.window(7).narrow(0, 1, 10)));
  CHECK_THROWS(PackedWindows(counting_file(10), 10));
}

TEST_CASE("window order: a seeded permutation per epoch, reproducible from the cursor alone") {
  WindowOrder a(50, 7), b(50, 7), c(50, 8);
  std::set<int64_t> epoch0, epoch1;
  std::vector<int64_t> first, first_c;
  for (int64_t i = 0; i < 50; ++i) {
    epoch0.insert(a.window_at(i));
    first.push_back(a.window_at(i));
    first_c.push_back(c.window_at(i));
  }
  for (int64_t i = 50; i < 100; ++i) epoch1.insert(a.window_at(i));
  CHECK(epoch0.size() == 50);
  CHECK(epoch1.size() == 50);
  CHECK(first != first_c);
  // Random access (a resumed run starts mid-epoch) gives the same windows as sequential access.
  CHECK(b.window_at(73) == a.window_at(73));
  CHECK(b.window_at(12) == first[12]);
  std::vector<int64_t> second;
  for (int64_t i = 50; i < 100; ++i) second.push_back(a.window_at(i));
  CHECK(second != first);
}

TEST_CASE("top-k teacher logits expand to -inf elsewhere") {
  at::Tensor values = at::tensor({2.0f, 1.0f, 0.5f, -1.0f}).view({2, 2});
  at::Tensor idx = at::tensor({4, 0, 1, 3}, at::kLong).view({2, 2});
  at::Tensor full = logits_from_topk(values, idx, 5);
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor expected = at::tensor({1.0f, -inf, -inf, -inf, 2.0f, -inf, 0.5f, -inf, -1.0f, -inf}).view({2, 5});
  CHECK(at::equal(full, expected));
}

TEST_CASE("GradientSync with one process leaves gradients exactly as backward made them") {
  at::manual_seed(0);
  at::Tensor w = at::randn({4, 3}).set_requires_grad(true), b = at::randn({4}).set_requires_grad(true);
  at::Tensor x = at::randn({5, 3});
  auto loss_of = [&] { return (at::linear(x, w, b).pow(2)).sum(); };
  loss_of().backward();
  at::Tensor gw = w.grad().clone(), gb = b.grad().clone();
  w.mutable_grad() = at::Tensor();
  b.mutable_grad() = at::Tensor();
  GradientSync sync(nullptr, {w, b}, 16);  // tiny buckets: one per parameter
  sync.begin_backward(true);
  loss_of().backward();
  sync.finish();
  CHECK(at::equal(w.grad(), gw));
  CHECK(at::equal(b.grad(), gb));
}

TEST_CASE("activation checkpointing: same output and gradients as the plain function, fewer saved tensors") {
  at::manual_seed(1);
  at::Tensor w1 = at::randn({16, 8}).set_requires_grad(true), w2 = at::randn({8, 16}).set_requires_grad(true);
  at::Tensor x0 = at::randn({4, 8});
  auto layer = [&](const at::Tensor& h) { return h + at::linear(at::relu(at::linear(h, w1)).pow(2), w2); };
  at::Tensor a = x0.clone().set_requires_grad(true);
  at::Tensor plain = layer(layer(a));
  plain.pow(2).sum().backward();
  at::Tensor ga = a.grad().clone(), g1 = w1.grad().clone(), g2 = w2.grad().clone();
  w1.mutable_grad() = at::Tensor();
  w2.mutable_grad() = at::Tensor();
  at::Tensor b = x0.clone().set_requires_grad(true);
  at::Tensor h = checkpointed(layer, b, {w1, w2});
  h = checkpointed(layer, h, {w1, w2});
  CHECK(at::allclose(h, plain));
  h.pow(2).sum().backward();
  CHECK(at::allclose(b.grad(), ga, 1e-5, 1e-6));
  CHECK(at::allclose(w1.grad(), g1, 1e-5, 1e-6));
  CHECK(at::allclose(w2.grad(), g2, 1e-5, 1e-6));
  // Parameters only: an input that needs no gradient still gives the weights theirs.
  w1.mutable_grad() = at::Tensor();
  checkpointed(layer, x0, {w1, w2}).sum().backward();
  CHECK(w1.grad().defined());
}

TEST_CASE("--device: cuda takes GPU LOCAL_RANK, cuda:N GPU N for one process only, other spellings refused") {
  mp::distill::DistributedEnv one;
  CHECK(one.device_for("cpu") == c10::Device(c10::kCPU));
  CHECK(one.device_for("cuda") == c10::Device(c10::kCUDA, 0));
  // search stage 3 passes the device stage 2 ran on; "cuda:1" must not become GPU 0 (issue 26).
  CHECK(one.device_for("cuda:1") == c10::Device(c10::kCUDA, 1));
  CHECK(one.device_for(c10::Device(c10::kCUDA, 3).str()) == c10::Device(c10::kCUDA, 3));
  mp::distill::DistributedEnv ranks;
  ranks.world_size = 4, ranks.rank = 2, ranks.local_rank = 2;
  CHECK(ranks.device_for("cuda") == c10::Device(c10::kCUDA, 2));
  CHECK_THROWS_WITH(ranks.device_for("cuda:1"), MP_CONTAINS("4 processes"));
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CUDA", ""})
    CHECK_THROWS_WITH(one.device_for(bad), MP_CONTAINS("cpu, cuda or cuda:N"));
}

// Options of different features that cannot work together are refused by run_distillation before anything loads
// (the paths below do not exist: the refusal must come first).
TEST_CASE("distill: option combinations that cannot work together are refused with one clear line") {
  DistillOptions base;
  base.teacher = "/nonexistent/teacher";
  base.student = "/nonexistent/student";
  base.train_data = base.valid_data = "/nonexistent/data";
  base.out_dir = "/nonexistent/out";
  base.tokens = 1024;
  {
    DistillOptions o = base;
    o.shard = "zero3";
    o.router_bias_update = 1e-3;
    CHECK_THROWS_WITH(run_distillation(o), MP_CONTAINS("--router-bias-update cannot be combined with --shard zero3"));
    o.shard = "zero2";
    CHECK_THROWS_WITH(run_distillation(o), MP_CONTAINS("--router-bias-update cannot be combined with --shard zero2"));
  }
}

TEST_CASE("distill: --elastic is refused with --shard and with --router-bias-update") {
  DistillOptions o;
  o.teacher = "/nonexistent/teacher";
  o.student = "/nonexistent/student";
  o.train_data = o.valid_data = "/nonexistent/data";
  o.out_dir = "/nonexistent/out";
  o.tokens = 1024;
  o.elastic = "/nonexistent/budgets.json";
  o.shard = "zero3";
  CHECK_THROWS_WITH(run_distillation(o), MP_CONTAINS("--elastic cannot be combined with --shard zero3"));
  o.shard = "none";
  o.router_bias_update = 1e-3;
  CHECK_THROWS_WITH(run_distillation(o), MP_CONTAINS("--elastic cannot be combined with --router-bias-update"));
}
