// ATen twin of ssd_scan.cu: the same decomposition (acum, CB, M with dt folded in, Xw, chunk states, start
// states, y_off) and the same hand-derived backward, in float32. The CPU tests check this forward against the
// model's scan (src/model/ssd_scan.cpp) and this backward against autograd through it, which validates the
// derivation the CUDA kernels implement.
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "kernels/mamba_internal.h"

namespace mp::kernels::detail {
namespace {

at::Tensor pad_time(const at::Tensor& t, int64_t pad) {
  if (pad == 0) return t;
  std::vector<int64_t> spec(2 * (t.dim() - 2), 0);  // from the last dim backwards to dim 1 (time)
  spec.push_back(0);
  spec.push_back(pad);
  return at::constant_pad_nd(t, spec, 0.0);
}

// Everything the forward computes, kept for the backward (which recomputes it, as the CUDA backward does).
struct Chunks {
  int64_t batch, T, H, P, G, N, Q, nc, hpg, pad;
  at::Tensor xc;     // [B,nc,Q,H,P]
  at::Tensor dtc;    // [B,nc,Q,H]
  at::Tensor Bc, Cc;  // [B,nc,Q,G,N]
  at::Tensor Bh, Ch;  // [B,nc,Q,H,N]
  at::Tensor ach;    // acum [B,nc,H,Q]
  at::Tensor dts;    // dt   [B,nc,H,Q]
  at::Tensor CB;     // C B^T per group [B,nc,G,Q,Q]
  at::Tensor CBh;    // per head [B,nc,H,Q,Q]
  at::Tensor Lm;     // exp(acum[l] - acum[s]) masked to s <= l, [B,nc,H,Q,Q]
  at::Tensor M;      // CBh * Lm * dt[s]
  at::Tensor w;      // exp(acum[Q-1] - acum) [B,nc,H,Q]
  at::Tensor u;      // dt * w, as [B,nc,Q,H,1]
  at::Tensor Xw;     // [B,nc,Q,H,P]
  at::Tensor S;      // chunk states [B,nc,H,P,N]
  at::Tensor decay;  // exp(acum[Q-1]) [B,nc,H]
  at::Tensor Hs;     // start states [B,nc,H,P,N]
  at::Tensor Y2;     // C H^T [B,nc,Q,H,P]
  at::Tensor e;      // exp(acum) [B,nc,Q,H]
};

Chunks compute_chunks(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                      const at::Tensor& Cm, int64_t Q) {
  Chunks k;
  k.batch = x.size(0), k.T = x.size(1), k.H = x.size(2), k.P = x.size(3), k.G = Bm.size(2), k.N = Bm.size(3);
  k.Q = Q, k.hpg = k.H / k.G, k.pad = (Q - k.T % Q) % Q, k.nc = (k.T + k.pad) / Q;
  k.xc = pad_time(x.to(at::kFloat), k.pad).view({k.batch, k.nc, Q, k.H, k.P});
  k.dtc = pad_time(dt.to(at::kFloat), k.pad).view({k.batch, k.nc, Q, k.H});
  k.Bc = pad_time(Bm.to(at::kFloat), k.pad).view({k.batch, k.nc, Q, k.G, k.N});
  k.Cc = pad_time(Cm.to(at::kFloat), k.pad).view({k.batch, k.nc, Q, k.G, k.N});
  k.Bh = k.Bc.repeat_interleave(k.hpg, 3);
  k.Ch = k.Cc.repeat_interleave(k.hpg, 3);
  const at::Tensor acum = (A.to(at::kFloat).view({1, 1, 1, k.H}) * k.dtc).cumsum(2);  // [B,nc,Q,H]
  k.ach = acum.permute({0, 1, 3, 2});
  k.dts = k.dtc.permute({0, 1, 3, 2});
  k.CB = at::einsum("bclgn,bcsgn->bcgls", {k.Cc, k.Bc});
  k.CBh = k.CB.repeat_interleave(k.hpg, 2);
  const at::Tensor upper = at::ones({Q, Q}, x.options().dtype(at::kBool)).tril().logical_not();
  const at::Tensor seg = k.ach.unsqueeze(-1) - k.ach.unsqueeze(-2);
  k.Lm = at::exp(seg.masked_fill(upper, -std::numeric_limits<float>::infinity()));
  k.M = k.CBh * k.Lm * k.dts.unsqueeze(-2);
  k.w = at::exp(k.ach.narrow(-1, Q - 1, 1) - k.ach);
  k.u = (k.dts * k.w).permute({0, 1, 3, 2}).unsqueeze(-1);
  k.Xw = k.xc * k.u;
  k.S = at::einsum("bcshp,bcshn->bchpn", {k.Xw, k.Bh});
  k.decay = at::exp(k.ach.select(-1, Q - 1));
  std::vector<at::Tensor> starts;
  at::Tensor state = at::zeros({k.batch, k.H, k.P, k.N}, k.xc.options());
  for (int64_t c = 0; c < k.nc; ++c) {
    starts.push_back(state);
    state = k.decay.select(1, c).view({k.batch, k.H, 1, 1}) * state + k.S.select(1, c);
  }
  k.Hs = at::stack(starts, 1);
  k.Y2 = at::einsum("bclhn,bchpn->bclhp", {k.Ch, k.Hs});
  k.e = at::exp(acum);
  return k;
}

// [B,nc,Q,*] -> [B,T,*] without the padding.
at::Tensor unchunk(const at::Tensor& t, const Chunks& k) {
  std::vector<int64_t> sizes{k.batch, k.nc * k.Q};
  for (int64_t d = 3; d < t.dim(); ++d) sizes.push_back(t.size(d));
  at::Tensor flat = t.reshape(sizes);
  return k.pad ? flat.narrow(1, 0, k.T) : flat;
}

// Sum over the heads of each group: [..., H, X] (heads at dim `dim`) -> [..., G, X].
at::Tensor sum_heads_in_group(const at::Tensor& t, int64_t dim, const Chunks& k) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[dim] = k.hpg;
  sizes.insert(sizes.begin() + dim, k.G);
  return t.reshape(sizes).sum(dim + 1);
}

}  // namespace

at::Tensor ssd_forward_aten(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                            const at::Tensor& Cm, const at::Tensor& D, int64_t chunk) {
  const Chunks k = compute_chunks(x, dt, A, Bm, Cm, chunk);
  const at::Tensor y_diag = at::einsum("bchls,bcshp->bclhp", {k.M, k.xc});
  const at::Tensor y = y_diag + k.e.unsqueeze(-1) * k.Y2 + D.to(at::kFloat).view({1, 1, 1, k.H, 1}) * k.xc;
  return unchunk(y, k);
}

SsdGradsAten ssd_backward_aten(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                               const at::Tensor& Cm, const at::Tensor& D, int64_t chunk, const at::Tensor& dy,
                               std::map<std::string, at::Tensor>* stages) {
  const Chunks k = compute_chunks(x, dt, A, Bm, Cm, chunk);
  const at::Tensor dyc = pad_time(dy.to(at::kFloat), k.pad).view({k.batch, k.nc, k.Q, k.H, k.P});
  const at::Tensor Df = D.to(at::kFloat);

  // Off-diagonal term y_off = e * (C H^T).
  const at::Tensor dye = dyc * k.e.unsqueeze(-1);
  at::Tensor dC = sum_heads_in_group(at::einsum("bclhp,bchpn->bclhn", {dye, k.Hs}), 3, k);
  const at::Tensor direct = at::einsum("bclhp,bclhn->bchpn", {dye, k.Ch});

  // Across chunks, in reverse: dS_c = G_{c+1}, dL/d decay_c = sum(G_{c+1} H_c), G_c = direct_c + decay_c G_{c+1}.
  std::vector<at::Tensor> dS_list(k.nc), dd_list(k.nc);
  at::Tensor carry = at::zeros({k.batch, k.H, k.P, k.N}, k.xc.options());
  for (int64_t c = k.nc - 1; c >= 0; --c) {
    dS_list[c] = carry;
    dd_list[c] = (carry * k.Hs.select(1, c)).sum(at::IntArrayRef{-1, -2});
    carry = direct.select(1, c) + k.decay.select(1, c).view({k.batch, k.H, 1, 1}) * carry;
  }
  const at::Tensor dS = at::stack(dS_list, 1);  // [B,nc,H,P,N]
  const at::Tensor dd = at::stack(dd_list, 1);  // [B,nc,H]

  // Chunk states S = Xw^T B.
  const at::Tensor dXw = at::einsum("bcshn,bchpn->bcshp", {k.Bh, dS});
  at::Tensor dB = sum_heads_in_group(at::einsum("bcshp,bchpn->bcshn", {k.Xw, dS}), 3, k);

  // Within chunks: y_diag = M x.
  const at::Tensor dx_intra = at::einsum("bchls,bclhp->bcshp", {k.M, dyc});
  const at::Tensor causal = at::ones({k.Q, k.Q}, k.xc.options().dtype(at::kBool)).tril();
  const at::Tensor dM = at::einsum("bclhp,bcshp->bchls", {dyc, k.xc}) * causal;
  const at::Tensor dCB = sum_heads_in_group(dM * k.Lm * k.dts.unsqueeze(-2), 2, k);  // [B,nc,G,Q,Q]
  const at::Tensor R = dM * k.M;
  const at::Tensor dacum_intra = (R.sum(-1) - R.sum(-2)).permute({0, 1, 3, 2});           // [B,nc,Q,H]
  const at::Tensor ddt_intra = (dM * k.CBh * k.Lm).sum(-2).permute({0, 1, 3, 2});         // [B,nc,Q,H]
  dC = dC + at::einsum("bcgls,bcsgn->bclgn", {dCB, k.Bc});
  dB = dB + at::einsum("bcgls,bclgn->bcsgn", {dCB, k.Cc});

  // Per position.
  const at::Tensor dx = Df.view({1, 1, 1, k.H, 1}) * dyc + k.u * dXw + dx_intra;
  const at::Tensor du = (k.xc * dXw).sum(-1);                 // [B,nc,Q,H]
  const at::Tensor u = k.u.squeeze(-1);                       // [B,nc,Q,H]
  const at::Tensor dac_yoff = (dye * k.Y2).sum(-1);           // [B,nc,Q,H]
  at::Tensor dacum = dacum_intra + dac_yoff - du * u;
  const at::Tensor end = (du * u).sum(2) + dd * k.decay;      // [B,nc,H]
  dacum.select(2, k.Q - 1).add_(end);
  const at::Tensor da = dacum.flip(2).cumsum(2).flip(2);      // reverse cumsum within the chunk
  const at::Tensor ddt = ddt_intra + du * k.w.permute({0, 1, 3, 2}) + A.to(at::kFloat).view({1, 1, 1, k.H}) * da;

  if (stages) {
    // The CUDA buffers' layouts (ssd_scan_cuda.h), padded sequence included.
    const int64_t Tp = k.nc * k.Q;
    auto& m = *stages;
    m["acum"] = k.ach.permute({0, 2, 1, 3}).contiguous();  // [B,H,nc,Q]
    m["CB"] = k.CB;
    m["M"] = k.M;
    m["Xw"] = k.Xw.reshape({k.batch, Tp, k.H, k.P});
    m["chunk_states"] = k.S;
    m["start_states"] = k.Hs;
    m["y_off"] = k.Y2.reshape({k.batch, Tp, k.H, k.P});
    m["dstates_direct"] = direct;
    m["dstates"] = dS;
    m["dchunk_decay"] = dd.permute({0, 2, 1}).contiguous();  // [B,H,nc]
    m["dXw"] = dXw.reshape({k.batch, Tp, k.H, k.P});
    m["dx_intra"] = dx_intra.reshape({k.batch, Tp, k.H, k.P});
    m["dM"] = dM;
    m["dCB"] = dCB;
    m["dacum_intra"] = dacum_intra.permute({0, 3, 1, 2}).contiguous();  // [B,H,nc,Q]
    m["ddt_intra"] = ddt_intra.permute({0, 3, 1, 2}).contiguous();
  }
  SsdGradsAten g;
  g.dx = unchunk(dx, k);
  g.ddt = unchunk(ddt, k);
  g.dA = (k.dtc * da).sum(at::IntArrayRef{0, 1, 2});
  g.dB = unchunk(dB, k);
  g.dC = unchunk(dC, k);
  g.dD = (dyc * k.xc).sum(at::IntArrayRef{0, 1, 2, 4});
  return g;
}

}  // namespace mp::kernels::detail
