// Mamba-2's state-space-duality (SSD) scan in chunks, written with ATen ops: the CPU path, the autograd path,
// and the reference the CUDA kernels are tested against.
//
// Within a chunk of Q steps the recurrence h_t = exp(a_t) h_{t-1} + B_t x_t dt_t, y_t = C_t h_t is a masked
// "attention" y = (C B^T * L) x with L[l,s] = exp(sum_{s<r<=l} a_r); across chunks only the state at each chunk
// boundary is carried, which is a short sequential loop over T/Q chunks.
#include "src/model/layers.h"

namespace mp::model {

at::Tensor ssd_chunk_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                          const at::Tensor& Cm, const at::Tensor& D, int64_t Q) {
  const int64_t batch = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3);
  const int64_t G = Bm.size(2), N = Bm.size(3);
  const int64_t heads_per_group = H / G;
  const int64_t pad = (Q - T % Q) % Q, Tp = T + pad, chunks = Tp / Q;

  const at::ScalarType stat = statistics_type(x.scalar_type());
  at::Tensor xf = x.to(stat);
  at::Tensor dtf = dt.to(stat);
  at::Tensor skip = D.to(stat).view({1, 1, H, 1}) * xf;  // the D x_t term

  auto pad_time = [&](const at::Tensor& t) {
    if (pad == 0) return t;
    std::vector<int64_t> p(2 * (t.dim() - 2), 0);  // pad spec runs from the last dim backwards to dim 1
    p.push_back(0);
    p.push_back(pad);
    return at::constant_pad_nd(t, p, 0.0);
  };
  at::Tensor xc = pad_time(xf * dtf.unsqueeze(-1)).view({batch, chunks, Q, H, P});
  at::Tensor a = pad_time(A.to(stat).view({1, 1, H}) * dtf).view({batch, chunks, Q, H}).permute({0, 3, 1, 2});
  at::Tensor Bc = pad_time(Bm.to(stat)).view({batch, chunks, Q, G, N});
  at::Tensor Cc = pad_time(Cm.to(stat)).view({batch, chunks, Q, G, N});

  at::Tensor a_cum = a.cumsum(-1);  // [B,H,c,Q]
  // 1. Within chunks: L[l,s] = exp(a_cum[l] - a_cum[s]) for s <= l, else 0.
  at::Tensor seg = a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2);
  at::Tensor causal = at::ones({Q, Q}, x.options().dtype(at::kBool)).tril();
  at::Tensor L = at::exp(seg.masked_fill(causal.logical_not(), -std::numeric_limits<float>::infinity()));
  at::Tensor CB = at::einsum("bclgn,bcsgn->bcgls", {Cc, Bc}).repeat_interleave(heads_per_group, 2);  // [B,c,H,Q,Q]
  at::Tensor y_diag = at::einsum("bchls,bcshp->bclhp", {CB * L.permute({0, 2, 1, 3, 4}), xc});

  // 2. Each chunk's contribution to the state at its end.
  at::Tensor decay_to_end = at::exp(a_cum.narrow(-1, Q - 1, 1) - a_cum);  // [B,H,c,Q]
  at::Tensor Bh = Bc.repeat_interleave(heads_per_group, 3);                // [B,c,Q,H,N]
  at::Tensor chunk_states = at::einsum("bclhn,bhcl,bclhp->bchpn", {Bh, decay_to_end, xc});

  // 3. Carry states across chunk boundaries.
  at::Tensor chunk_decay = at::exp(a_cum.select(-1, Q - 1));  // [B,H,c]
  std::vector<at::Tensor> starts;
  starts.reserve(chunks);
  at::Tensor state = at::zeros({batch, H, P, N}, xf.options());
  for (int64_t c = 0; c < chunks; ++c) {
    starts.push_back(state);
    state = state * chunk_decay.select(2, c).view({batch, H, 1, 1}) + chunk_states.select(1, c);
  }
  at::Tensor start_states = at::stack(starts, 1);  // [B,c,H,P,N]

  // 4. Each position reads the state at its chunk's start, decayed to that position.
  at::Tensor Ch = Cc.repeat_interleave(heads_per_group, 3);
  at::Tensor y_off = at::einsum("bclhn,bchpn->bclhp", {Ch, start_states}) *
                     at::exp(a_cum).permute({0, 2, 3, 1}).unsqueeze(-1);

  at::Tensor y = (y_diag + y_off).reshape({batch, Tp, H, P});
  if (pad) y = y.narrow(1, 0, T);
  return y + skip;
}

}  // namespace mp::model
