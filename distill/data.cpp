// Training batches from a token file: packed windows in a seeded order that depends on nothing but
// (seed, epoch), so a resumed or data-parallel run sees exactly the windows an uninterrupted one would.
#include <ATen/ATen.h>

#include "minipuzzle/distill.h"
#include "minipuzzle/error.h"

namespace mp::distill {

PackedWindows::PackedWindows(std::shared_ptr<const TokenFile> file, int64_t seq_len)
    : file_(std::move(file)), seq_len_(seq_len) {
  MP_CHECK(seq_len_ > 0, "distill: seq_len must be positive, found ", seq_len_);
  const int64_t n = int64_t(file_->num_tokens());
  count_ = n > seq_len_ ? (n - 1) / seq_len_ : 0;
  MP_CHECK(count_ > 0, "distill: token file ", file_->path(), " holds ", n, " tokens, fewer than one window of ",
           seq_len_ + 1, "; use a shorter --seq-len or more data");
}

at::Tensor PackedWindows::window(int64_t i) const {
  MP_CHECK(i >= 0 && i < count_, "distill: window ", i, " out of range [0, ", count_, ")");
  const uint32_t* src = file_->data() + i * seq_len_;
  at::Tensor out = at::empty({seq_len_ + 1}, at::kLong);
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t t = 0; t <= seq_len_; ++t) dst[t] = int64_t(src[t]);
  return out;
}

// SplitMix64: a tiny generator whose output is fixed by its definition (std:: distributions are not portable).
static uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t WindowOrder::window_at(int64_t cursor) {
  MP_CHECK(cursor >= 0, "distill: negative data cursor ", cursor);
  const int64_t epoch = cursor / n_;
  if (epoch != epoch_) {
    perm_.resize(n_);
    for (int64_t i = 0; i < n_; ++i) perm_[i] = i;
    uint64_t state = seed_ * 0x2545F4914F6CDD1Dull + uint64_t(epoch) + 1;
    for (int64_t i = n_ - 1; i > 0; --i) {  // Fisher-Yates
      const int64_t j = int64_t(splitmix64(state) % uint64_t(i + 1));
      std::swap(perm_[i], perm_[j]);
    }
    epoch_ = epoch;
  }
  return perm_[cursor % n_];
}

Batch make_batch(const PackedWindows& windows, const std::vector<int64_t>& window_ids) {
  std::vector<at::Tensor> rows;
  rows.reserve(window_ids.size());
  for (int64_t id : window_ids) rows.push_back(windows.window(id));
  at::Tensor all = at::stack(rows);  // [B, L + 1]
  const int64_t L = windows.seq_len();
  return {all.narrow(1, 0, L).contiguous(), all.narrow(1, 1, L).contiguous()};
}

}  // namespace mp::distill
