// OfflineTeacher (issue 28): serves stored top-k teacher rows (minipuzzle/teacher_logits.h) through the Teacher
// interface, finding each batch row's window by the hash of its input ids.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"
#include "minipuzzle/teacher_logits.h"

namespace mp::distill {

at::Tensor TeacherOutput::lse_at(double temperature) const {
  MP_CHECK(topk_lse.defined(), "teacher: lse_at needs a sparse teacher output");
  for (size_t i = 0; i < lse_temperatures.size(); ++i)
    if (lse_temperatures[i] == temperature) return topk_lse.select(-1, int64_t(i));
  std::string have;
  for (double t : lse_temperatures) have += (have.empty() ? "" : ", ") + std::to_string(t);
  fail("distill: the teacher logits hold the full rows' log-sum-exp at temperature(s) ", have, " but the loss "
       "needs ", temperature, "; make them again with teacher-logits --temperature ", temperature);
}

OfflineTeacher::OfflineTeacher(const std::vector<std::string>& dirs) {
  MP_CHECK(!dirs.empty(), "distill: OfflineTeacher needs at least one teacher-logits directory");
  for (const std::string& d : dirs) {
    auto s = TeacherLogitsStore::open(d);
    if (!stores_.empty()) {
      const TeacherLogitsStore& a = *stores_.front();
      MP_CHECK(s->codec().vocab == a.codec().vocab && s->codec().k == a.codec().k && s->seq_len() == a.seq_len() &&
                   s->temperatures() == a.temperatures(),
               "distill: teacher logits in ", d, " (vocab ", s->codec().vocab, ", top-k ", s->codec().k, ", seq_len ",
               s->seq_len(), ") differ from those in ", a.dir(), " (vocab ", a.codec().vocab, ", top-k ",
               a.codec().k, ", seq_len ", a.seq_len(), ")");
    }
    stores_.push_back(std::move(s));
  }
}

OfflineTeacher::~OfflineTeacher() = default;

int64_t OfflineTeacher::vocab_size() const { return stores_.front()->codec().vocab; }
int64_t OfflineTeacher::seq_len() const { return stores_.front()->seq_len(); }
int64_t OfflineTeacher::training_windows() const { return stores_.front()->windows(); }
int64_t OfflineTeacher::top_k() const { return stores_.front()->codec().k; }
const std::vector<double>& OfflineTeacher::lse_temperatures() const { return stores_.front()->temperatures(); }

namespace {
// (store, window) of each row of ids [B, L], -1 window when absent.
std::vector<std::pair<const TeacherLogitsStore*, int64_t>> locate(
    const std::vector<std::shared_ptr<const TeacherLogitsStore>>& stores, const at::Tensor& input_ids) {
  const at::Tensor ids = input_ids.to(at::kCPU, at::kLong).contiguous();
  MP_CHECK(ids.dim() == 2, "distill: teacher input ids must be [batch, seq], got ", ids.sizes());
  std::vector<std::pair<const TeacherLogitsStore*, int64_t>> out;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    const uint64_t h = window_hash(ids.data_ptr<int64_t>() + b * ids.size(1), ids.size(1));
    std::pair<const TeacherLogitsStore*, int64_t> found{nullptr, -1};
    for (const auto& s : stores) {
      const int64_t w = s->seq_len() == ids.size(1) ? s->find(h) : -1;
      if (w >= 0) {
        found = {s.get(), w};
        break;
      }
    }
    out.push_back(found);
  }
  return out;
}
}  // namespace

bool OfflineTeacher::has_windows(const at::Tensor& input_ids) const {
  for (const auto& [store, w] : locate(stores_, input_ids))
    if (w < 0) return false;
  return true;
}

TeacherOutput OfflineTeacher::run(const at::Tensor& input_ids, bool /*want_hidden*/) {
  const auto where = locate(stores_, input_ids);
  const int64_t B = input_ids.size(0), L = input_ids.size(1), k = top_k();
  const int64_t nl = int64_t(lse_temperatures().size());
  for (int64_t b = 0; b < B; ++b) {
    if (where[size_t(b)].second >= 0) continue;
    std::string dirs;
    for (const auto& s : stores_) dirs += (dirs.empty() ? "" : ", ") + s->dir();
    fail("distill: a window of ", L, " tokens is not in the teacher logits (", dirs, ", seq_len ", seq_len(),
         "); make them with teacher-logits from the same data and --seq-len as distill");
  }
  at::Tensor ids = at::empty({B, L, k}, at::kInt), logits = at::empty({B, L, k}, at::kFloat);
  at::Tensor lse = at::empty({B, L, nl}, at::kFloat);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      where[size_t(b)].first->decode_window(where[size_t(b)].second, ids.data_ptr<int32_t>() + b * L * k,
                                            logits.data_ptr<float>() + b * L * k, lse.data_ptr<float>() + b * L * nl);
  });
  TeacherOutput out;
  const c10::Device device = input_ids.device();
  out.topk_ids = ids.to(device);
  out.topk_logits = logits.to(device);
  out.topk_lse = lse.to(device);
  out.lse_temperatures = lse_temperatures();
  return out;
}

}  // namespace mp::distill
