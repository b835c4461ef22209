// Multiple-choice scoring by log-likelihood (contract in include/minipuzzle/tasks.h). Requests are built exactly
// as lm-evaluation-harness builds them for a causal LM, so accuracies are comparable with its numbers for the
// same prompts; batches are formed longest first and right-padded, which a causal model cannot see.
#include "minipuzzle/tasks.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "minipuzzle/error.h"
#include "minipuzzle/model.h"
#include "minipuzzle/progress.h"

namespace mp {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string file_stem(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  for (const char* ext : {".jsonl", ".json", ".ndjson"}) {
    std::string e(ext);
    if (name.size() > e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0)
      return name.substr(0, name.size() - e.size());
  }
  return name;
}

struct Request {
  size_t question = 0, choice = 0;
  std::vector<int64_t> input;      // what the model reads
  std::vector<int64_t> target;     // the choice's tokens, predicted by the last target.size() positions
};

double stderr_of_mean(double p, int64_t n) { return n > 1 ? std::sqrt(p * (1 - p) / double(n - 1)) : 0.0; }

}  // namespace

TaskFile read_task_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MP_CHECK(in.good(), "--tasks ", path, ": cannot open the task file");
  TaskFile f;
  f.path = path;
  f.name = file_stem(path);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (std::all_of(line.begin(), line.end(), is_space)) continue;
    const std::string where = path + ":" + std::to_string(n);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      fail(where, ": not a JSON object (", e.what(), ")");
    }
    MP_CHECK(j.is_object(), where, ": each line must be a JSON object {\"context\", \"choices\", \"answer\"}");
    TaskQuestion q;
    MP_CHECK(j.contains("context") && j["context"].is_string(), where, ": \"context\" must be a string");
    q.context = j["context"].get<std::string>();
    MP_CHECK(j.contains("choices") && j["choices"].is_array() && j["choices"].size() >= 2, where,
             ": \"choices\" must be an array of at least 2 strings");
    for (const json& c : j["choices"]) {
      MP_CHECK(c.is_string() && !c.get<std::string>().empty(), where, ": every choice must be a non-empty string");
      q.choices.push_back(c.get<std::string>());
    }
    const json& a = j.contains("answer") ? j["answer"] : json();
    MP_CHECK(a.is_number_integer() && a.get<int64_t>() >= 0 && a.get<int64_t>() < int64_t(q.choices.size()), where,
             ": \"answer\" must be the index of the right choice (0 to ", q.choices.size() - 1, "), found ", a.dump());
    q.answer = a.get<int64_t>();
    const bool fewshot = j.value("fewshot", false);
    (fewshot ? f.fewshot : f.questions).push_back(std::move(q));
  }
  MP_CHECK(!f.questions.empty(), "--tasks ", path, ": no questions (lines without \"fewshot\": true)");
  return f;
}

json TaskResult::to_json() const {
  return json{{"task", name},          {"file", path},          {"questions", questions},
              {"num_fewshot", num_fewshot}, {"acc", acc},     {"acc_stderr", acc_stderr},
              {"acc_norm", acc_norm},  {"acc_norm_stderr", acc_norm_stderr}};
}

json TaskResult::details(const TaskFile& file) const {
  json out = json::array();
  for (size_t q = 0; q < scores.size(); ++q) {
    json choices = json::array();
    for (const ChoiceScore& s : scores[q])
      choices.push_back({{"loglik", s.loglik}, {"tokens", s.tokens}, {"greedy", s.greedy}});
    out.push_back({{"question", q}, {"answer", file.questions[q].answer}, {"pred", pred[q]},
                   {"pred_norm", pred_norm[q]}, {"choices", choices}});
  }
  return out;
}

TaskResult score_task(const TaskFile& file, const EncodeFn& encode, const LogitsFn& logits_fn,
                      const TaskOptions& o, std::optional<uint32_t> eos) {
  MP_CHECK(o.batch > 0 && o.max_length > 1, "tasks: need --batch-size > 0 and a maximum length > 1");
  const int64_t k = o.num_fewshot < 0 ? int64_t(file.fewshot.size()) : o.num_fewshot;
  MP_CHECK(k <= int64_t(file.fewshot.size()), file.path, ": --num-fewshot ", k, " but the file has ",
           file.fewshot.size(), " examples (lines with \"fewshot\": true)");
  std::string prefix;
  for (int64_t i = 0; i < k; ++i) {
    const TaskQuestion& ex = file.fewshot[i];
    prefix += ex.context + ex.choices[ex.answer] + "\n\n";
  }
  const size_t n = o.limit > 0 ? std::min<size_t>(size_t(o.limit), file.questions.size()) : file.questions.size();

  std::vector<Request> requests;
  for (size_t q = 0; q < n; ++q) {
    for (size_t c = 0; c < file.questions[q].choices.size(); ++c) {
      std::string context = prefix + file.questions[q].context, continuation = file.questions[q].choices[c];
      size_t keep = context.size();
      while (keep > 0 && is_space(context[keep - 1])) --keep;  // Python's rstrip(), as lm-eval moves them
      continuation = context.substr(keep) + continuation;
      context.resize(keep);
      std::vector<uint32_t> ctx, cont;
      if (context.empty()) {
        MP_CHECK(eos.has_value(), file.path, ": question ", q, " has an empty context and the tokenizer has no ",
                 "end-of-text token to stand for it");
        ctx = {*eos};
        cont = encode(continuation);
      } else {
        std::vector<uint32_t> whole = encode(context + continuation);
        ctx = encode(context);
        cont.assign(whole.begin() + std::min(ctx.size(), whole.size()), whole.end());
      }
      MP_CHECK(!cont.empty(), file.path, ": question ", q, " choice ", c, " encodes to no tokens after its context");
      MP_CHECK(int64_t(cont.size()) <= o.max_length, file.path, ": question ", q, " choice ", c, " is ", cont.size(),
               " tokens, longer than the maximum length ", o.max_length);
      std::vector<int64_t> all(ctx.begin(), ctx.end());
      all.insert(all.end(), cont.begin(), cont.end());
      const size_t len = std::min<size_t>(all.size(), size_t(o.max_length) + 1);
      Request r;
      r.question = q;
      r.choice = c;
      r.input.assign(all.end() - len, all.end() - 1);
      r.target.assign(cont.begin(), cont.end());
      requests.push_back(std::move(r));
    }
  }
  // Longest first, so each batch pads little; the order of equal lengths is the file's.
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return requests[a].input.size() > requests[b].input.size(); });

  TaskResult r;
  r.name = file.name;
  r.path = file.path;
  r.num_fewshot = k;
  r.questions = int64_t(n);
  r.scores.resize(n);
  for (size_t q = 0; q < n; ++q) r.scores[q].resize(file.questions[q].choices.size());
  Progress progress("tasks " + file.name, int64_t(requests.size()), "choice");
  for (size_t b0 = 0; b0 < order.size(); b0 += size_t(o.batch)) {
    const size_t b1 = std::min(order.size(), b0 + size_t(o.batch));
    const int64_t width = int64_t(requests[order[b0]].input.size());
    at::Tensor ids = at::zeros({int64_t(b1 - b0), width}, at::kLong);
    int64_t* dst = ids.data_ptr<int64_t>();
    for (size_t i = b0; i < b1; ++i) {
      const Request& q = requests[order[i]];
      std::copy(q.input.begin(), q.input.end(), dst + (i - b0) * width);
    }
    at::Tensor logits = logits_fn(ids);
    MP_CHECK(logits.dim() == 3 && logits.size(0) == ids.size(0) && logits.size(1) == width, "tasks: logits of shape ",
             logits.sizes(), " for ids of shape ", ids.sizes());
    for (size_t i = b0; i < b1; ++i) {
      const Request& q = requests[order[i]];
      const int64_t len = int64_t(q.input.size()), m = int64_t(q.target.size());
      at::Tensor lp = at::log_softmax(logits[int64_t(i - b0)].narrow(0, len - m, m).to(at::kFloat), -1).cpu();
      const float* row = lp.data_ptr<float>();
      const int64_t v = lp.size(1);
      ChoiceScore s;
      s.tokens = m;
      s.greedy = true;
      for (int64_t t = 0; t < m; ++t) {
        const float* p = row + t * v;
        MP_CHECK(q.target[t] < v, "tasks: token id ", q.target[t], " is outside the model's vocabulary (", v, ")");
        s.loglik += double(p[q.target[t]]);
        if (std::max_element(p, p + v) - p != q.target[t]) s.greedy = false;
      }
      r.scores[q.question][q.choice] = s;
    }
    progress.advance(int64_t(b1 - b0));
  }
  progress.finish();

  int64_t right = 0, right_norm = 0;
  for (size_t q = 0; q < n; ++q) {
    const TaskQuestion& tq = file.questions[q];
    int64_t best = 0, best_norm = 0;
    for (size_t c = 1; c < tq.choices.size(); ++c) {  // the first maximum wins ties, as numpy.argmax
      if (r.scores[q][c].loglik > r.scores[q][best].loglik) best = int64_t(c);
      if (r.scores[q][c].loglik / double(tq.choices[c].size()) >
          r.scores[q][best_norm].loglik / double(tq.choices[best_norm].size()))
        best_norm = int64_t(c);
    }
    r.pred.push_back(best);
    r.pred_norm.push_back(best_norm);
    right += best == tq.answer;
    right_norm += best_norm == tq.answer;
  }
  r.acc = double(right) / double(n);
  r.acc_norm = double(right_norm) / double(n);
  r.acc_stderr = stderr_of_mean(r.acc, int64_t(n));
  r.acc_norm_stderr = stderr_of_mean(r.acc_norm, int64_t(n));
  return r;
}

TaskResult score_task(const TaskFile& file, const EncodeFn& encode, const NemotronH& model, const TaskOptions& options,
                      std::optional<uint32_t> eos) {
  c10::AutoGradMode no_grad(false);
  return score_task(
      file, encode, [&](const at::Tensor& ids) { return model.forward(ids.to(model.device())); }, options, eos);
}

}  // namespace mp
