#include "minipuzzle/evaluate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>

#include "minipuzzle/error.h"
#include "minipuzzle/progress.h"

namespace mp {

EvalResult evaluate_lm(const NemotronH& model, const uint32_t* tokens, int64_t n, int64_t seq_len, int64_t batch,
                       int64_t max_tokens) {
  if (max_tokens > 0) n = std::min(n, max_tokens);
  MP_CHECK(n >= 2, "eval: need at least 2 tokens, found ", n);
  seq_len = std::min(seq_len, n);
  const int64_t windows = n / seq_len;
  c10::AutoGradMode no_grad(false);
  EvalResult r;
  double nll = 0;
  Progress progress("eval", windows, "seq");
  for (int64_t w = 0; w < windows; w += batch) {
    const int64_t b = std::min(batch, windows - w);
    at::Tensor ids = at::empty({b, seq_len}, at::kLong);
    int64_t* dst = ids.data_ptr<int64_t>();
    for (int64_t i = 0; i < b * seq_len; ++i) {
      const uint32_t id = tokens[w * seq_len + i];
      MP_CHECK(id < uint64_t(model.config().vocab_size), "eval: token id ", id, " is outside the model's vocabulary (",
               model.config().vocab_size, ")");
      dst[i] = id;
    }
    ids = ids.to(model.device());
    at::Tensor logits = model.forward(ids);
    at::Tensor lp = at::log_softmax(logits.narrow(1, 0, seq_len - 1), -1);
    nll += at::nll_loss(lp.reshape({-1, lp.size(-1)}), ids.narrow(1, 1, seq_len - 1).reshape({-1}), {},
                        at::Reduction::Sum)
               .item<double>();
    r.predicted_tokens += b * (seq_len - 1);
    r.sequences += b;
    progress.advance(b);
  }
  progress.finish();
  r.loss = nll / double(r.predicted_tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace mp
