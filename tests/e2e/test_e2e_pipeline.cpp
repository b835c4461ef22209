// End to end: `minipuzzle data` + `minipuzzle pipeline` with the demo recipe at a tiny scale, then the claims
// the demo makes: pruning + distillation beats the same student trained from scratch on the same tokens, and
// distillation brings the pruned student closer to its teacher. The HTML report holds every stage's plots.
#include <fstream>
#include <map>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/json.h"
#include "run_command.h"

using namespace mp;

TEST_CASE("the demo pipeline at a tiny scale: distillation beats scratch and closes the gap", "[e2e]") {
  const std::string run = test::temp_dir("e2e_pipeline");
  const std::string bin = test::minipuzzle_binary();
  auto data = test::run_command(bin + " data " + test::shared_data("tinyshakespeare.txt") +
                                " --tokenizer byte --valid-fraction 0.05 -o " + run + "/corpus");
  INFO(data.output);
  REQUIRE(data.exit_code == 0);
  // The teacher is ~156k parameters; the search keeps students of 45-60% of it.
  std::string sets;
  for (const std::string& kv : std::vector<std::string>{"data=" + run + "/corpus", "device=cpu", "threads=1", "seq_len=128", "micro_batch=8",
                         "teacher_tokens=40960", "distill_tokens=16384", "calib_samples=16", "eval_tokens=16384",
                         "teacher_config=" + test::source_dir() + "/tests/e2e/tiny-teacher.json",
                         "min_params_b=0.00007", "max_params_b=0.000095", "hidden_range=32:64:16",
                         "ffn_range=64:192:32", "mamba_heads_range=4:8:2", "mamba_head_dim=16",
                         "attention_heads_range=2:4:2", "drop_total=0:1"})
    sets += " --set " + kv;
  auto r = test::run_command(bin + " pipeline --config " + test::source_dir() + "/configs/recipes/demo.json --run-dir " +
                             run + "/run" + sets);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  json report = read_json_file(run + "/run/report.json");
  std::map<std::string, json> rows;
  for (auto& row : report["rows"]) rows[row["label"].get<std::string>()] = row;
  REQUIRE(rows.size() == 5);
  double teacher = rows["teacher"]["perplexity"].get<double>();
  double pruned = rows["pruned, before distillation"]["perplexity"].get<double>();
  double distilled = rows["pruned + distilled"]["perplexity"].get<double>();
  double scratch_same = rows["scratch, distillation's tokens"]["perplexity"].get<double>();
  INFO("teacher " << teacher << " pruned " << pruned << " distilled " << distilled << " scratch " << scratch_same);
  CHECK(distilled < scratch_same);
  CHECK(std::abs(distilled - teacher) < std::abs(pruned - teacher));
  CHECK(rows["pruned + distilled"]["parameters"].get<double>() < 0.65 * rows["teacher"]["parameters"].get<double>());
  // Task accuracy beside perplexity: every row scored the next-line task made from the held-out split.
  for (auto& [label, row] : rows) {
    INFO(label);
    REQUIRE(row.contains("tasks"));
    CHECK(row["tasks"][0]["task"] == "nextline");
    CHECK(row["tasks"][0]["questions"] == 32);
    CHECK(row["tasks"][0]["acc"].get<double>() >= 0.0);
    CHECK(row["tasks"][0]["acc"].get<double>() <= 1.0);
  }
  // One self-contained page with the plots of every stage.
  std::ifstream html(run + "/run/report.html");
  std::stringstream ss;
  ss << html.rdbuf();
  std::string page = ss.str();
  size_t svgs = 0;
  for (size_t p = page.find("<svg"); p != std::string::npos; p = page.find("<svg", p + 1)) ++svgs;
  CHECK(svgs >= 5);
  CHECK(page.find("Architecture search") != std::string::npos);
  CHECK(page.find("Task accuracy") != std::string::npos);
  CHECK(page.find("<script") == std::string::npos);
}
