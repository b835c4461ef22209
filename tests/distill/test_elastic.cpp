// Elastic distillation (issue 27).
//   - One step's gradients on the shared weights equal the sum over budgets of the gradients of separate copies
//     of each budget (prune_in_memory: tensors copied, no graph back to the shared ones), each scattered back to
//     the units it came from, / (micro-batches x budgets): slices share weights exactly and nothing else leaks.
//   - The step's loss is the mean of the budgets' losses; the teacher runs once per micro-batch.
//   - Through the CLI: score, nest, distill --elastic; stopped and resumed equals the uninterrupted run bit for bit;
//     per-budget evaluations; the final checkpoint records its budgets and slices by name.
#include <ATen/ATen.h>

#include <fstream>
#include <sstream>
#include <tuple>

#include "distill/elastic.h"
#include "minipuzzle/checkpoint.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/token_file.h"
#include "tests/catch.h"
#include "tests/fixtures.h"
#include "tests/run_command.h"

using namespace mp;
using namespace mp::distill;

namespace {

ModelConfig tiny_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 128}, {"hidden_size", hidden},
         {"intermediate_size", 4 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 2}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 16}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

Batch batch_of(int64_t batch, int64_t seq, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Batch b;
  at::Tensor w = at::randint(0, 128, {batch, seq + 1}, gen, at::kLong);
  b.input_ids = w.narrow(1, 0, seq).contiguous();
  b.labels = w.narrow(1, 1, seq).contiguous();
  return b;
}

// Counts teacher passes.
class CountingTeacher : public Teacher {
 public:
  explicit CountingTeacher(ModelTeacher& t) : t_(t) {}
  TeacherOutput run(const at::Tensor& ids, bool want_hidden) override {
    ++calls;
    return t_.run(ids, want_hidden);
  }
  int64_t vocab_size() const override { return t_.vocab_size(); }
  int calls = 0;

 private:
  ModelTeacher& t_;
};

// A gradient of a budget's tensor, put back at the shared tensor's units.
at::Tensor scatter_back(const at::Tensor& grad, const TensorCut& cut, const at::Tensor& like) {
  at::Tensor g = grad;
  if (!cut.cols.empty()) {
    auto shape = g.sizes().vec();
    shape[1] = like.size(1);
    g = at::zeros(shape, g.options()).index_add_(1, at::tensor(cut.cols, at::kLong), g);
  }
  if (!cut.rows.empty()) g = at::zeros(like.sizes(), g.options()).index_add_(0, at::tensor(cut.rows, at::kLong), g);
  return g;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("elastic step: shared-weight gradients are the budgets' separate gradients put back", "[distill][elastic]") {
  const ModelConfig c = tiny_config(32, "M*-M-M*-");
  const std::string dir = test::temp_dir("elastic_step");
  NemotronH::random_init(c, 11, c10::kCPU, at::kFloat).save(dir + "/student", DType::F32);
  ElasticInfo info;
  for (int64_t i = 0; i < c.num_layers(); ++i) info.layer_ranking.push_back((i * 5) % c.num_layers());  // 8 layers
  write_elastic_info(dir + "/student/" + kElasticFile, info);
  const std::string budgets = R"({"budgets": [{"name": "full", "shape": {}},
      {"name": "mid", "shape": {"intermediate_size": 96, "mamba_num_heads": 2, "num_attention_heads": 2}},
      {"name": "small", "shape": {"hidden_size": 16, "intermediate_size": 64, "mamba_num_heads": 2, "drop_count": 2}}],
      "sampling": {"schedule": "all"}})";

  NemotronH student = NemotronH::load(Checkpoint::open(dir + "/student"), c10::kCPU, at::kFloat);
  std::map<std::string, at::Tensor> before;
  for (auto& [n, t] : student.parameters()) before[n] = t.clone();
  student.set_requires_grad(true);
  ModelTeacher teacher(NemotronH::random_init(tiny_config(48, "M*M-"), 12, c10::kCPU, at::kFloat));
  CountingTeacher counting(teacher);
  ElasticTraining elastic(budgets, dir + "/student", c, 3);
  AdamW opt(student.parameters(), {});
  GradientSync sync(nullptr, opt.params(), 1 << 12);
  LossOptions o;
  o.alpha = 0.7;
  const std::vector<Batch> micro{batch_of(2, 24, 100), batch_of(2, 24, 101)};
  StepResult r = elastic.train_step(student, &counting, opt, sync, nullptr, micro, 1e-3, 0.0, o, 0);
  REQUIRE(r.applied);
  CHECK(counting.calls == 2);  // once per micro-batch, not once per budget
  json last = elastic.last_step();
  REQUIRE(last.size() == 3);
  CHECK(std::abs((last["full"].get<double>() + last["mid"].get<double>() + last["small"].get<double>()) / 3 - r.loss) < 1e-6);

  // Reference: each budget as its own copy, its gradients scattered back.
  std::map<std::string, at::Tensor> expected;
  for (auto& [n, t] : before) expected[n] = at::zeros_like(t);
  for (const char* name : {"full", "mid", "small"}) {
    ElasticBudgets b = load_budgets(budgets);
    json shape;
    for (auto& x : b.budgets)
      if (x.name == name) shape = x.shape;
    PrunePlan plan = nested_plan(c, PruneTarget::from_json(shape, name), info.layer_ranking);
    NemotronH copy = prune_in_memory(NemotronH(c, before), plan);
    copy.set_requires_grad(true);
    double loss_sum = 0;
    for (auto& mb : micro) {
      at::Tensor loss = micro_batch_loss(copy, &teacher, mb, o) / 6.0;  // 2 micro-batches x 3 budgets
      loss.backward();
      loss_sum += loss.item<double>() * 3.0;
    }
    CHECK(std::abs(loss_sum - last[name].get<double>()) < 1e-5);
    for (auto& cut : plan_tensor_cuts(plan)) {
      at::Tensor g = copy.parameters().at(cut.out.name).grad();
      REQUIRE(g.defined());
      expected[cut.source_name] += scatter_back(g, cut, before.at(cut.source_name));
    }
  }
  double worst = 0;
  std::string worst_name;
  for (auto& [n, g] : expected) {
    at::Tensor got = student.parameters().at(n).grad();
    REQUIRE(got.defined());
    const double d = (got - g).abs().max().item<double>() / std::max(1e-12, g.abs().max().item<double>());
    if (d > worst) worst = d, worst_name = n;
  }
  INFO("worst relative gradient difference " << worst << " at " << worst_name);
  CHECK(worst < 1e-5);  // measured 2.2e-7 (fp32 sums in another order)
  // Units outside every budget but the full one: the "full" budget alone reaches them, so they have gradient;
  // without the full budget they would not. The weights moved (the step was applied).
  CHECK_FALSE(at::equal(student.parameters().at("backbone.embeddings.weight"), before.at("backbone.embeddings.weight")));
}

TEST_CASE("distill --elastic end to end: resume is exact, budgets recorded, slices by name", "[distill][elastic][e2e]") {
  const std::string dir = test::temp_dir("elastic_cli");
  const std::string bin = test::minipuzzle_binary();
  std::string text = read_text(test::shared_data("tinyshakespeare.txt"));
  REQUIRE(text.size() > 200000);
  auto write = [&](const std::string& name, size_t begin, size_t size) {
    std::vector<uint32_t> ids;
    for (size_t i = begin; i < begin + size; ++i) ids.push_back(uint8_t(text[i]));
    TokenFileMetadata meta;
    meta.tokenizer_kind = "byte_level";
    meta.vocab_size = 256;
    TokenFileWriter w(dir + "/" + name, meta);
    w.add_document(ids);
    w.finish();
    return dir + "/" + name;
  };
  const std::string train = write("train", 0, 120000), valid = write("valid", 150000, 12000);
  ModelConfig tc = tiny_config(32, "M*-M-");
  tc.vocab_size = 256;
  const std::string teacher_cfg = dir + "/teacher.json";
  std::ofstream(teacher_cfg) << tc.to_json().dump(2);
  auto r = test::run_command(bin + " distill --from-scratch --student " + teacher_cfg + " --data " + train + " --valid " +
                             valid + " --tokens 10240 --seq-len 64 --micro-batch 8 --lr 3e-3 --warmup 3 --eval-every 1000"
                             " --eval-tokens 2048 --threads 1 --seed 1 -o " + dir + "/teacher");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const std::string teacher = dir + "/teacher/final";
  r = test::run_command(bin + " score " + teacher + " --calib " + train + " --samples 8 --seq-len 64 --device cpu -o " +
                        dir + "/scores.json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  r = test::run_command(bin + " nest " + teacher + " --scores " + dir + "/scores.json -o " + dir + "/nested");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const std::string budgets = dir + "/budgets.json";
  write_json_file(budgets, json::parse(R"({"budgets": {"large": {"intermediate_size": 96, "hidden_size": 24},
      "small": {"hidden_size": 16, "intermediate_size": 64, "mamba_num_heads": 2, "drop_count": 1}},
      "sampling": {"schedule": "uniform", "per_step": 1}})"));
  auto distill = [&](const std::string& out, const std::string& extra, const std::string& budgets_file = "") {
    return test::run_command(bin + " distill --teacher " + teacher + " --student " + dir + "/nested --data " + train +
                             " --valid " + valid + " --elastic " + (budgets_file.empty() ? budgets : budgets_file) + " --tokens 6144 --seq-len 64 --micro-batch 4"
                             " --grad-accum 2 --lr 2e-3 --warmup 2 --eval-every 6 --eval-tokens 1024 --save-every 4"
                             " --threads 1 --seed 4 -o " + out + " " + extra);
  };
  r = distill(dir + "/a", "");  // 12 steps
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  r = distill(dir + "/b", "--stop-after-steps 5");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  r = distill(dir + "/b", "--resume");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json ja = read_json_file(dir + "/a/checkpoint/trainer.json"), jb = read_json_file(dir + "/b/checkpoint/trainer.json");
  REQUIRE(ja["train_loss"].size() == 12);
  CHECK(ja["train_loss"].dump() == jb["train_loss"].dump());
  CHECK(ja["evals"].dump() == jb["evals"].dump());
  CHECK(read_text(dir + "/a/final/model.safetensors") == read_text(dir + "/b/final/model.safetensors"));
  // Per-budget evaluations; both budgets' loss falls (the teacher is better than the nested slices at step 0).
  auto& evals = ja["evals"];
  REQUIRE(evals.size() >= 2);
  for (const char* b : {"large", "small"}) {
    INFO(b << ": " << evals.front()["budgets"][b].dump() << " -> " << evals.back()["budgets"][b].dump());
    CHECK(evals.back()["budgets"][b]["val_kl"].get<double>() < evals.front()["budgets"][b]["val_kl"].get<double>());
  }
  // Both budgets were drawn (uniform, one per step).
  const std::string log = read_text(dir + "/a/log.jsonl");
  CHECK(log.find("\"budgets\":{\"large\"") != std::string::npos);
  CHECK(log.find("\"budgets\":{\"small\"") != std::string::npos);
  // A resume with other budgets is refused.
  write_json_file(dir + "/other.json", json::parse(R"({"budgets": {"large": {"intermediate_size": 64}}})"));
  r = distill(dir + "/b", "--resume", dir + "/other.json");
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("elastic") != std::string::npos);
  // The final checkpoint is nested, records its budgets and the run, and slices by name.
  auto info = read_elastic_info(dir + "/a/final");
  REQUIRE(info.has_value());
  CHECK(info->find("small") != nullptr);
  CHECK(info->training.size() == 1);
  r = test::run_command(bin + " slice " + dir + "/a/final --budget small -o " + dir + "/small");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  auto small = Checkpoint::open(dir + "/small");
  CHECK(small.config().hidden_size == 16);
  CHECK(small.config().num_layers() == tc.num_layers() - 1);

  // --elastic with stored teacher logits (issue 28): at k = V in f32 the stored rows are the teacher's, so the run
  // equals the one with the teacher itself (a smaller training file keeps the store small; evaluation reads the
  // validation store's first 16 windows = --eval-tokens 1024).
  const std::string train_small = write("train_small", 0, 64 * 40 + 1);
  for (const auto& [data, store, extra] : {std::tuple{train_small, dir + "/store_train", std::string()},
                                          std::tuple{valid, dir + "/store_valid", std::string(" --max-windows 16")}}) {
    r = test::run_command("MINIPUZZLE_PROGRESS=off " + bin + " teacher-logits " + teacher + " --data " + data + " -o " +
                          store + " --top-k 256 --seq-len 64 --logit-encoding f32 --threads 1" + extra + " 2>&1");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
  }
  auto elastic_run = [&](const std::string& out, const std::string& teacher_args) {
    return test::run_command(bin + " distill " + teacher_args + " --student " + dir + "/nested --data " + train_small +
                             " --valid " + valid + " --elastic " + budgets + " --tokens 3072 --seq-len 64 --micro-batch 4"
                             " --grad-accum 2 --lr 2e-3 --warmup 2 --eval-every 3 --eval-tokens 1024 --threads 1 --seed 4"
                             " --no-save -o " + out + " 2>&1");
  };
  r = elastic_run(dir + "/online_small", "--teacher " + teacher);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  r = elastic_run(dir + "/offline_small", "--teacher-logits " + dir + "/store_train --teacher-logits-valid " + dir +
                                              "/store_valid");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  auto read_log = [&](const std::string& out) {
    std::vector<json> lines;
    std::istringstream in(read_text(out + "/log.jsonl"));
    for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
    return lines;
  };
  const std::vector<json> on = read_log(dir + "/online_small"), off = read_log(dir + "/offline_small");
  REQUIRE(on.size() == off.size());
  int steps = 0, n_evals = 0;
  auto near = [](double a, double b) { return std::abs(a - b) <= 1e-4 * std::max(1.0, std::abs(b)); };
  for (size_t i = 0; i < on.size(); ++i) {
    INFO(on[i].dump() << " / " << off[i].dump());
    if (!on[i].contains("event") && on[i].contains("loss")) {  // a step's line
      ++steps;
      CHECK(near(off[i]["loss"].get<double>(), on[i]["loss"].get<double>()));
      for (auto& [name, loss] : on[i]["budgets"].items()) CHECK(near(off[i]["budgets"][name].get<double>(), loss.get<double>()));
    } else if (on[i].value("event", "") == "eval") {
      ++n_evals;
      for (const char* b : {"large", "small"}) {
        CHECK(near(off[i]["budgets"][b]["val_loss"].get<double>(), on[i]["budgets"][b]["val_loss"].get<double>()));
        CHECK(near(off[i]["budgets"][b]["val_kl"].get<double>(), on[i]["budgets"][b]["val_kl"].get<double>()));
      }
    }
  }
  CHECK(steps == 6);
  CHECK(n_evals >= 2);
}
