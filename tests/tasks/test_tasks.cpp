// Multiple-choice scoring (minipuzzle/tasks.h) on a constructed "model" whose log-likelihoods are known by hand:
// at every position it puts probability 1/2 on the byte after the current one and spreads 1/2 evenly over the
// other V - 1 ids. A choice's log-likelihood is then (hits) ln(1/2) + (misses) ln(1/(2(V-1))), counted by hand.
// Also: the few-shot prefix and lm-eval's whitespace move reach the model as documented, left truncation,
// batching does not change a score, and bad task files are refused with file and line.
#include <cmath>

#include "catch.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/tasks.h"

using namespace mp;

namespace {

constexpr int64_t V = 128;
const double kHit = std::log(0.5), kMiss = std::log(0.5 / double(V - 1));

std::vector<uint32_t> bytes(std::string_view s) { return std::vector<uint32_t>(s.begin(), s.end()); }

// Logits whose softmax is exactly the distribution above, and a log of every input it saw.
struct NextByteModel {
  std::vector<std::vector<int64_t>> seen;
  at::Tensor operator()(const at::Tensor& ids) {
    const int64_t b = ids.size(0), l = ids.size(1);
    at::Tensor logits = at::full({b, l, V}, float(kMiss), at::kFloat);
    for (int64_t i = 0; i < b; ++i) {
      std::vector<int64_t> row(ids[i].data_ptr<int64_t>(), ids[i].data_ptr<int64_t>() + l);
      seen.push_back(row);
      for (int64_t t = 0; t < l; ++t) logits[i][t][(row[t] + 1) % V] = float(kHit);
    }
    return logits;
  }
};

std::string write_tasks(const std::string& name, const std::string& text) {
  const std::string dir = std::string(MINIPUZZLE_BINARY_DIR) + "/test_scratch/tasks";
  fs::create_directories(dir);
  fs::write_file_atomic(dir + "/" + name, text);
  return dir + "/" + name;
}

}  // namespace

TEST_CASE("tasks: log-likelihoods, acc and acc_norm of a hand-computable model", "[tasks]") {
  // Context "AB" (ends before 'C'). Choices:
  //   "Q"          1 miss                        -> sum kMiss,          per byte kMiss       (acc picks it)
  //   "CDEFGHIJQ"  'C'..'J' 8 hits, then 1 miss  -> 8 kHit + kMiss,    per byte /9          (acc_norm picks it)
  //   "CX"         1 hit, 1 miss                 -> kHit + kMiss,      per byte /2
  const std::string path = write_tasks("hand.jsonl",
                                       "{\"context\": \"AB\", \"choices\": [\"Q\", \"CDEFGHIJQ\", \"CX\"], \"answer\": 1}\n"
                                       "\n"
                                       "{\"context\": \"AB\", \"choices\": [\"CD\", \"QQ\"], \"answer\": 0}\n");
  TaskFile f = read_task_file(path);
  REQUIRE(f.questions.size() == 2);
  CHECK(f.name == "hand");
  NextByteModel model;
  TaskResult r = score_task(f, bytes, std::ref(model), TaskOptions{});
  REQUIRE(r.scores.size() == 2);
  CHECK(r.scores[0][0].loglik == Approx(kMiss).epsilon(1e-6));
  CHECK(r.scores[0][1].loglik == Approx(8 * kHit + kMiss).epsilon(1e-6));
  CHECK(r.scores[0][2].loglik == Approx(kHit + kMiss).epsilon(1e-6));
  CHECK(r.scores[1][0].loglik == Approx(2 * kHit).epsilon(1e-6));
  CHECK(r.scores[1][1].loglik == Approx(2 * kMiss).epsilon(1e-6));
  CHECK(r.scores[1][0].greedy);
  CHECK(!r.scores[0][1].greedy);
  CHECK(r.scores[0][1].tokens == 9);
  CHECK(r.pred == std::vector<int64_t>{0, 0});
  CHECK(r.pred_norm == std::vector<int64_t>{1, 0});
  CHECK(r.acc == 0.5);
  CHECK(r.acc_norm == 1.0);
  CHECK(r.acc_stderr == Approx(std::sqrt(0.25 / 1)));  // sample standard error of the mean, as lm-eval
  CHECK(r.acc_norm_stderr == 0.0);
}

TEST_CASE("tasks: the few-shot prefix and the whitespace move reach the model as documented", "[tasks]") {
  const std::string path = write_tasks("shots.jsonl",
                                       "{\"context\": \"X\", \"choices\": [\"Y\", \"Z\"], \"answer\": 1, \"fewshot\": true}\n"
                                       "{\"context\": \"K\", \"choices\": [\"L\", \"M\"], \"answer\": 0, \"fewshot\": true}\n"
                                       "{\"context\": \"AB \", \"choices\": [\"C\", \"D\"], \"answer\": 0}\n");
  TaskFile f = read_task_file(path);
  REQUIRE(f.fewshot.size() == 2);
  NextByteModel model;
  TaskOptions o;
  o.num_fewshot = 1;
  TaskResult r = score_task(f, bytes, std::ref(model), o);
  // Input: "XZ\n\nAB" + " C" minus its last token (the space moved from the context to the choice).
  std::vector<int64_t> want;
  for (char c : std::string("XZ\n\nAB ")) want.push_back(c);
  REQUIRE(model.seen.size() == 2);
  CHECK(model.seen[0] == want);
  // " C": ' ' after 'B' is a miss, 'C' after ' ' is a miss; " D" the same.
  CHECK(r.scores[0][0].loglik == Approx(2 * kMiss).epsilon(1e-6));
  CHECK(r.scores[0][0].tokens == 2);
  CHECK(r.num_fewshot == 1);
  o.num_fewshot = 3;
  CHECK_THROWS_WITH(score_task(f, bytes, std::ref(model), o), Catch::Contains("has 2 examples"));
}

TEST_CASE("tasks: left truncation and batching", "[tasks]") {
  const std::string path = write_tasks("long.jsonl",
                                       "{\"context\": \"ABCDEFGHIJKLMNOP\", \"choices\": [\"QR\", \"QZ\", \"S\"], \"answer\": 0}\n"
                                       "{\"context\": \"AB\", \"choices\": [\"CD\", \"C\"], \"answer\": 1}\n");
  TaskFile f = read_task_file(path);
  NextByteModel one, many;
  TaskOptions o;
  o.batch = 1;
  TaskResult a = score_task(f, bytes, std::ref(one), o);
  o.batch = 5;
  TaskResult b = score_task(f, bytes, std::ref(many), o);
  for (size_t q = 0; q < 2; ++q)
    for (size_t c = 0; c < a.scores[q].size(); ++c) CHECK(a.scores[q][c].loglik == b.scores[q][c].loglik);
  o.max_length = 4;
  NextByteModel short_model;
  TaskResult t = score_task(f, bytes, std::ref(short_model), o);
  // "ABCDEFGHIJKLMNOP" + "QR" keeps its last 5 tokens "OPQR" minus the last: "NOPQ"... the model reads 4.
  std::vector<int64_t> want = {'N', 'O', 'P', 'Q'};
  bool found = false;
  for (auto& row : short_model.seen) found = found || std::vector<int64_t>(row.begin(), row.begin() + 4) == want;
  CHECK(found);
  CHECK(t.scores[0][0].loglik == Approx(2 * kHit).epsilon(1e-6));
}

TEST_CASE("tasks: bad task files are refused with file and line", "[tasks]") {
  auto refused = [](const std::string& text, const std::string& fragment) {
    CHECK_THROWS_WITH(read_task_file(write_tasks("bad.jsonl", text)), Catch::Contains(fragment));
  };
  refused("{\"context\": \"A\", \"choices\": [\"B\"], \"answer\": 0}\n", "bad.jsonl:1: \"choices\" must be an array of at least 2");
  refused("\n{\"context\": \"A\", \"choices\": [\"B\", \"C\"], \"answer\": 2}\n", "bad.jsonl:2: \"answer\" must be the index");
  refused("{\"context\": 3, \"choices\": [\"B\", \"C\"], \"answer\": 0}\n", "\"context\" must be a string");
  refused("not json\n", "bad.jsonl:1: not a JSON object");
  refused("{\"context\": \"A\", \"choices\": [\"B\", \"C\"], \"answer\": 0, \"fewshot\": true}\n", "no questions");
}
