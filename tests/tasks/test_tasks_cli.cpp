// `minipuzzle eval --tasks` against transformers: every choice's log-likelihood of a small task on a tiny seeded
// NemotronH equals the one tests/reference/task_reference.py computes with transformers, one request at a time
// (ours are batched and right-padded), with the full input and with inputs cut to 48 tokens; acc and acc_norm
// agree. Also: --data and --tasks together give perplexity and accuracy in one JSON object.
#include <cmath>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/json.h"
#include "run_command.h"

using namespace mp;

TEST_CASE("eval --tasks: log-likelihoods, acc and acc_norm agree with transformers", "[tasks][cli]") {
  const std::string dir = test::temp_dir("tasks_cli");
  const std::string tasks = test::fixtures_dir() + "/tasks/tiny_tasks.jsonl";
  const json ref = read_json_file(test::fixtures_dir() + "/tasks/tiny_tasks_reference.json");
  for (const char* max_length : {"2048", "48"}) {
    INFO("max length " << max_length);
    const std::string details = dir + "/details_" + max_length + ".jsonl";
    auto r = test::run_command(test::minipuzzle_binary() + " eval " + test::reference_model("hybrid_g1") + " --tasks " +
                               tasks + " --tokenizer byte --task-batch-size 3 --device cpu --task-max-length " + max_length +
                               " --tasks-details " + details);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const json out = json::parse(r.output.substr(r.output.find('{')));
    const json& want = ref.at(max_length);
    REQUIRE(out.at("tasks").size() == 1);
    const json& task = out["tasks"][0];
    CHECK(task.at("task") == "tiny_tasks");
    CHECK(task.at("questions") == 10);
    CHECK(task.at("num_fewshot") == 2);
    CHECK(task.at("acc").get<double>() == want.at("acc").get<double>());
    CHECK(task.at("acc_norm").get<double>() == want.at("acc_norm").get<double>());
    std::istringstream lines(fs::read_file(details));
    size_t q = 0;
    for (std::string line; std::getline(lines, line); ++q) {
      const json row = json::parse(line);
      const json& choices = row.at("choices");
      REQUIRE(choices.size() == want["logliks"][q].size());
      for (size_t c = 0; c < choices.size(); ++c) {
        const double ours = choices[c]["loglik"].get<double>(), theirs = want["logliks"][q][c].get<double>();
        CHECK(std::abs(ours - theirs) <= 1e-4 * std::max(1.0, std::abs(theirs)));
      }
    }
    CHECK(q == 10);
  }
  // Both measures in one run.
  fs::write_file_atomic(dir + "/valid.txt", "THE CAT SAT ON THE MAT. THE DOG RAN TO THE PARK.\n");
  auto both = test::run_command(test::minipuzzle_binary() + " eval " + test::reference_model("hybrid_g1") + " --tasks " +
                                tasks + " --data " + dir + "/valid.txt --tokenizer byte --seq-len 16 --device cpu");
  INFO(both.output);
  REQUIRE(both.exit_code == 0);
  const json j = json::parse(both.output.substr(both.output.find('{')));
  CHECK(j.contains("perplexity"));
  CHECK(j.at("tasks").size() == 1);
  auto none = test::run_command(test::minipuzzle_binary() + " eval " + test::reference_model("hybrid_g1"));
  CHECK(none.exit_code == 2);
  CHECK(none.output.find("give --data") != std::string::npos);
}
