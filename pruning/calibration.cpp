// Calibration sequences: fixed-length windows drawn from a token file at seeded random offsets.
#include <ATen/ATen.h>

#include <algorithm>
#include <random>

#include "minipuzzle/error.h"
#include "minipuzzle/importance.h"
#include "minipuzzle/token_file.h"

namespace mp {

at::Tensor sample_calibration(const TokenFile& tokens, int64_t samples, int64_t seq_len, uint64_t seed) {
  MP_CHECK(samples > 0 && seq_len > 1, "calibration: need samples > 0 and seq_len > 1");
  const uint64_t n = tokens.num_tokens();
  MP_CHECK(n >= uint64_t(seq_len), tokens.path(), ": holds ", n, " tokens, fewer than one sequence of ", seq_len,
           " (use a shorter --seq-len or more calibration text)");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint64_t> start(0, n - seq_len);
  std::vector<uint64_t> offsets(samples);
  for (auto& o : offsets) o = start(rng);
  std::sort(offsets.begin(), offsets.end());  // sequential reads of the mapped file
  at::Tensor out = at::empty({samples, seq_len}, at::kLong);
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t s = 0; s < samples; ++s)
    for (int64_t t = 0; t < seq_len; ++t) dst[s * seq_len + t] = tokens.data()[offsets[s] + t];
  return out;
}

}  // namespace mp
