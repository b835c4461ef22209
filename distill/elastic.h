// Elastic distillation (issue 27; Nemotron Elastic, arXiv 2511.16664): one nested student (`minipuzzle nest`)
// trained at several budgets at once. Each micro-batch runs the teacher once; the student runs at every budget
// drawn for the step, each a slice of the same weights (mp::slice_model: index_select views whose gradients land
// in the shared tensors), with its own KD loss and backward; the step's loss is the mean over the drawn budgets.
// Memory: one student plus, transiently, the weights of one budget's slice and one budget's activations.
// The draw is a function of (seed, step), so a resumed run continues exactly; the budgets and the schedule are
// trainer settings (a resume with other budgets is refused).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "minipuzzle/distill.h"
#include "minipuzzle/elastic.h"

namespace mp::distill {

class ElasticTraining {
 public:
  // budgets: a budgets file or inline JSON (load_budgets); the student must be a nested checkpoint.
  ElasticTraining(const std::string& budgets, const std::string& student_dir, const ModelConfig& student, uint64_t seed);

  json settings() const;  // budgets + sampling, compared on resume
  StepResult train_step(const NemotronH& student, Teacher* teacher, AdamW& optimizer, GradientSync& sync,
                        Communicator* comm, const std::vector<Batch>& micro_batches, double lr, double clip,
                        const LossOptions& options, int64_t step);
  json last_step() const { return last_; }  // {"name": loss, ...} of the budgets the last step drew
  // Validation loss (and KL to the teacher) of every budget on the first `windows` windows of `valid`.
  json evaluate(const NemotronH& student, const PackedWindows& valid, int64_t windows, int64_t micro_batch,
                Teacher* teacher) const;
  // OUT/final/minipuzzle_elastic.json: the student's metadata with these budgets and a record of this run.
  void write_metadata(const std::string& final_dir, const json& run) const;

 private:
  ElasticInfo info_;
  ElasticBudgets budgets_;
  std::vector<PrunePlan> plans_;
  uint64_t seed_;
  json last_;
};

}  // namespace mp::distill
