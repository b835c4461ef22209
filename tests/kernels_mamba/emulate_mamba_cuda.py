#!/usr/bin/env python3
"""Host emulation of ssd_scan.cu's (and causal_conv1d.cu's) launch arithmetic, for machines without a GPU.

Replays the CUDA pipeline (src/kernels/ssd_scan.cu) in float64 NumPy on flat buffers: the same buffer layouts,
the same per-kernel index expressions, and the cuBLAS calls as cuBLAS defines them (column-major, the operand
swap, pointer arrays built from the Operand descriptors of `Layouts`). It then checks the outputs and gradients
against autograd through a plain PyTorch chunked scan. What it validates is the part a GPU run cannot localise
cheaply: the GEMM operand descriptors (offsets, leading dimensions, transposes, group sums through K = hpg*P) and
the buffer indexing. It does not model bf16 rounding or thread scheduling.

The conv kernels are replayed the same way (tiles, register windows, per-tile partial sums).

usage: emulate_mamba_cuda.py   (exit 0: every tensor within 1e-9 relative; needs numpy and torch)
"""
import sys

import numpy as np
import torch


class Operand:
    def __init__(self, buf, sb, sc, sk, div, ld):
        self.buf, self.sb, self.sc, self.sk, self.div, self.ld = buf, sb, sc, sk, div, ld

    def offset(self, b, c, k):
        return b * self.sb + c * self.sc + (k // self.div) * self.sk


def cublas_gemm(transa, transb, m, n, k, A, lda, a_off, B, ldb, b_off, C, ldc, c_off, beta):
    """C(m x n) = op(A) op(B) + beta C, column-major, one batch entry (offsets in elements)."""
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    acc = np.zeros((m, n))
    for l in range(k):
        a = A[a_off + (i + l * lda if not transa else l + i * lda)]
        b = B[b_off + (l + j * ldb if not transb else j + l * ldb)]
        acc += a * b
    idx = c_off + i + j * ldc
    C[idx] = acc + (beta * C[idx] if beta != 0 else 0)


def gemm(s, trans_a, trans_b, m, n, k, A, B, C, beta, kdim):
    # GemmRunner: row-major C = op(A) op(B) as column-major C^T = op(B)^T op(A)^T (operands swapped).
    for bb in range(s["batch"]):
        for ch in range(s["nc"]):
            for kk in range(kdim):
                cublas_gemm(trans_b, trans_a, n, m, k, B.buf, B.ld, B.offset(bb, ch, kk), A.buf, A.ld,
                            A.offset(bb, ch, kk), C.buf, C.ld, C.offset(bb, ch, kk), beta)


def run(batch, T, H, P, G, N, Q, seed):
    assert T % Q == 0
    nc, hpg = T // Q, H // G
    rng = np.random.default_rng(seed)
    d_inner = H * P
    conv_dim = d_inner + 2 * G * N
    width = conv_dim + 7  # x, B, C are strided slices of a wider buffer, as the model's conv output
    xbc = rng.standard_normal(batch * T * width) * 0.5
    x_st, x_sb = width, T * width
    x_base, B_base, C_base = 0, d_inner, d_inner + G * N
    dt = np.log1p(np.exp(rng.standard_normal(batch * T * H) - 2)) + 1e-3
    A = -np.exp(rng.random(H) * np.log(16))
    D = rng.standard_normal(H)
    dy = rng.standard_normal(batch * T * H * P)
    s = dict(batch=batch, nc=nc)

    def xval(b, t, h, p):
        return xbc[x_base + b * x_sb + t * x_st + h * P + p]

    # Layouts (ssd_scan.cu), with the base offsets of x, B, C inside the shared buffer folded into a view.
    class View:
        def __init__(self, base):
            self.base = base

        def __getitem__(self, i):
            return xbc[self.base + i]

        def __setitem__(self, i, v):
            raise AssertionError("inputs are read-only")

    xin, Bin, Cin = View(x_base), View(B_base), View(C_base)

    def head_rows(buf):
        return Operand(buf, T * H * P, Q * H * P, P, 1, H * P)

    def group_rows(buf):
        return Operand(buf, T * H * P, Q * H * P, hpg * P, 1, H * P)

    def input_heads(buf):
        return Operand(buf, x_sb, Q * x_st, P, 1, x_st)

    def input_groups(buf, div):
        return Operand(buf, x_sb, Q * x_st, N, div, x_st)

    def square(buf, K):
        return Operand(buf, nc * K * Q * Q, K * Q * Q, Q * Q, 1, Q)

    def states(buf):
        return Operand(buf, nc * H * P * N, H * P * N, P * N, 1, N)

    def group_states(buf):
        return Operand(buf, nc * H * P * N, H * P * N, hpg * P * N, 1, N)

    def group_grad(buf):
        return Operand(buf, T * G * N, Q * G * N, N, 1, G * N)

    z = np.zeros
    acum, CB, M = z(batch * H * T), z(batch * nc * G * Q * Q), z(batch * nc * H * Q * Q)
    Xw, S, Hs, y_off, y = z(batch * T * H * P), z(batch * nc * H * P * N), z(batch * nc * H * P * N), \
        z(batch * T * H * P), z(batch * T * H * P)

    def recompute():
        for i in range(batch * nc * H):  # chunk_cumsum_kernel
            h, c, b = i % H, (i // H) % nc, i // (H * nc)
            run_ = 0.0
            for l in range(Q):
                run_ += A[h] * dt[(b * T + c * Q) * H + h + l * H]
                acum[((b * H + h) * nc + c) * Q + l] = run_
        gemm(s, False, True, Q, Q, N, input_groups(Cin, 1), input_groups(Bin, 1), square(CB, G), 0, G)
        for blk in range(batch * nc * H):  # build_decayed_cb_kernel
            h, c, b = blk % H, (blk // H) % nc, blk // (H * nc)
            ac = [acum[((b * H + h) * nc + c) * Q + l] for l in range(Q)]
            dts = [dt[(b * T + c * Q + l) * H + h] for l in range(Q)]
            cb0 = ((b * nc + c) * G + h // hpg) * Q * Q
            m0 = ((b * nc + c) * H + h) * Q * Q
            for e in range(Q * Q):
                l, j = e // Q, e % Q
                M[m0 + e] = CB[cb0 + e] * np.exp(ac[l] - ac[j]) * dts[j] if j <= l else 0.0
        for i in range(batch * T * H * P):  # weighted_x_kernel
            p, h, t, b = i % P, (i // P) % H, (i // (P * H)) % T, i // (P * H * T)
            c, l = t // Q, t % Q
            row = ((b * H + h) * nc + c) * Q
            Xw[i] = xval(b, t, h, p) * dt[(b * T + t) * H + h] * np.exp(acum[row + Q - 1] - acum[row + l])
        gemm(s, True, False, P, N, Q, head_rows(Xw), input_groups(Bin, hpg), states(S), 0, H)
        PN = P * N
        for i in range(batch * H * PN):  # state_recurrence_kernel
            e, h, b = i % PN, (i // PN) % H, i // (PN * H)
            st = 0.0
            for c in range(nc):
                off = ((b * nc + c) * H + h) * PN + e
                Hs[off] = st
                st = np.exp(acum[((b * H + h) * nc + c) * Q + Q - 1]) * st + S[off]
        gemm(s, False, True, Q, P, N, input_groups(Cin, hpg), states(Hs), head_rows(y_off), 0, H)

    # ---- forward
    recompute()
    gemm(s, False, False, Q, P, Q, square(M, H), input_heads(xin), head_rows(y), 0, H)
    for i in range(batch * T * H * P):  # output_epilogue_kernel
        p, h, t, b = i % P, (i // P) % H, (i // (P * H)) % T, i // (P * H * T)
        c, l = t // Q, t % Q
        y[i] += np.exp(acum[((b * H + h) * nc + c) * Q + l]) * y_off[i] + D[h] * xval(b, t, h, p)

    # ---- backward
    recompute()
    dyb, dye = z(batch * T * H * P), z(batch * T * H * P)
    for i in range(batch * T * H * P):  # grad_output_prep_kernel
        h, t, b = (i // P) % H, (i // (P * H)) % T, i // (P * H * T)
        c, l = t // Q, t % Q
        dyb[i] = dy[i]
        dye[i] = dy[i] * np.exp(acum[((b * H + h) * nc + c) * Q + l])
    dC, dB = z(batch * T * G * N), z(batch * T * G * N)
    gemm(s, False, False, Q, N, hpg * P, group_rows(dye), group_states(Hs), group_grad(dC), 0, G)
    gemm(s, True, False, P, N, Q, head_rows(dye), input_groups(Cin, hpg), states(S), 0, H)  # S := direct
    dS, dchunk = z(batch * nc * H * P * N), z(batch * H * nc)
    PN = P * N
    for bh in range(batch * H):  # state_recurrence_backward_kernel (all tiles of one (b, h) at once)
        h, b = bh % H, bh // H
        carry = np.zeros(PN)
        for c in range(nc - 1, -1, -1):
            off = ((b * nc + c) * H + h) * PN + np.arange(PN)
            dS[off] = carry
            idx = (b * H + h) * nc + c
            dchunk[idx] += np.sum(carry * Hs[off])
            carry = S[off] + np.exp(acum[idx * Q + Q - 1]) * carry
    dXw, dx_intra, dM = z(batch * T * H * P), z(batch * T * H * P), z(batch * nc * H * Q * Q)
    gemm(s, False, True, Q, P, N, input_groups(Bin, hpg), states(dS), head_rows(dXw), 0, H)
    gemm(s, False, False, Q, N, hpg * P, group_rows(Xw), group_states(dS), group_grad(dB), 0, G)
    gemm(s, True, False, Q, P, Q, square(M, H), head_rows(dyb), head_rows(dx_intra), 0, H)
    gemm(s, False, True, Q, Q, P, head_rows(dyb), input_heads(xin), square(dM, H), 0, H)
    dCB, dacum, ddt_intra = z(batch * nc * G * Q * Q), z(batch * H * T), z(batch * H * T)
    for blk in range(batch * nc * G):  # decayed_cb_backward_kernel
        g, c, b = blk % G, (blk // G) % nc, blk // (G * nc)
        ac = np.zeros((hpg, Q)); dts = np.zeros((hpg, Q)); dac = np.zeros((hpg, Q)); ddt = np.zeros((hpg, Q))
        for i in range(hpg * Q):
            j, l, h = i // Q, i % Q, g * hpg + i // Q
            ac[j, l] = acum[((b * H + h) * nc + c) * Q + l]
            dts[j, l] = dt[(b * T + c * Q + l) * H + h]
        cb0 = ((b * nc + c) * G + g) * Q * Q
        for l in range(Q):
            for j0 in range(Q):
                valid = j0 <= l
                cbv = CB[cb0 + l * Q + j0] if valid else 0.0
                dcb = 0.0
                for j in range(hpg):
                    h = g * hpg + j
                    dm = dM[(((b * nc + c) * H + h) * Q + l) * Q + j0] if valid else 0.0
                    L = np.exp(ac[j, l] - ac[j, j0]) if valid else 0.0
                    dmL = dm * L
                    dcb += dmL * dts[j, j0]
                    ddt_term = dmL * cbv
                    R = ddt_term * dts[j, j0] if (valid and j0 != l) else 0.0
                    if valid:
                        ddt[j, j0] += ddt_term
                        dac[j, j0] -= R
                    dac[j, l] += R
                dCB[cb0 + l * Q + j0] = dcb
        for i in range(hpg * Q):
            j, l, h = i // Q, i % Q, g * hpg + i // Q
            off = ((b * H + h) * nc + c) * Q + l
            dacum[off] = dac[j, l]
            ddt_intra[off] = ddt[j, l]
    gemm(s, False, False, Q, N, Q, square(dCB, G), input_groups(Bin, 1), group_grad(dC), 1, G)
    gemm(s, True, False, Q, N, Q, square(dCB, G), input_groups(Cin, 1), group_grad(dB), 1, G)
    dx, ddt_out, dA, dD = z(batch * T * H * P), z(batch * T * H), z(H), z(H)
    for blk in range(batch * nc * H):  # final_grad_kernel
        h, c, b = blk % H, (blk // H) % nc, blk // (H * nc)
        row = ((b * H + h) * nc + c) * Q
        ac = acum[row:row + Q]
        dtl = np.array([dt[(b * T + c * Q + l) * H + h] for l in range(Q)])
        ac_end = ac[Q - 1]
        row_du, row_dac = np.zeros(Q), np.zeros(Q)
        for e in range(Q * P):
            l, p = e // P, e % P
            t = c * Q + l
            idx = ((b * T + t) * H + h) * P + p
            xv = xval(b, t, h, p)
            u = dtl[l] * np.exp(ac_end - ac[l])
            dx[idx] = D[h] * dy[idx] + u * dXw[idx] + dx_intra[idx]
            dD[h] += dy[idx] * xv
            row_du[l] += xv * dXw[idx]
            row_dac[l] += dy[idx] * np.exp(ac[l]) * y_off[idx]
        w = np.exp(ac_end - ac)
        u = dtl * w
        dac = dacum[row:row + Q] + row_dac - row_du * u
        ddt_part = ddt_intra[row:row + Q] + row_du * w
        dac[Q - 1] += dchunk[(b * H + h) * nc + c] * np.exp(ac_end) + np.sum(row_du * u)
        da = np.cumsum(dac[::-1])[::-1]
        for l in range(Q):
            ddt_out[(b * T + c * Q + l) * H + h] = ddt_part[l] + A[h] * da[l]
        dA[h] += np.sum(dtl * da)

    # ---- reference: autograd through a plain chunked scan (the model's formulation) in float64
    xt = torch.tensor(np.array([[[[xval(b, t, h, p) for p in range(P)] for h in range(H)] for t in range(T)]
                                for b in range(batch)]), requires_grad=True)
    Bt = torch.tensor(np.array([[[[xbc[B_base + b * x_sb + t * x_st + g * N + n] for n in range(N)]
                                  for g in range(G)] for t in range(T)] for b in range(batch)]), requires_grad=True)
    Ct = torch.tensor(np.array([[[[xbc[C_base + b * x_sb + t * x_st + g * N + n] for n in range(N)]
                                  for g in range(G)] for t in range(T)] for b in range(batch)]), requires_grad=True)
    dtt = torch.tensor(dt.reshape(batch, T, H), requires_grad=True)
    At = torch.tensor(A, requires_grad=True)
    Dt = torch.tensor(D, requires_grad=True)
    Bh, Ch = Bt.repeat_interleave(hpg, 2), Ct.repeat_interleave(hpg, 2)
    hstate = torch.zeros(batch, H, P, N, dtype=torch.float64)
    ys = []
    for t in range(T):  # the recurrence step by step
        hstate = torch.exp(At * dtt[:, t]).view(batch, H, 1, 1) * hstate + \
            (dtt[:, t].unsqueeze(-1) * xt[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        ys.append((hstate * Ch[:, t].unsqueeze(2)).sum(-1))
    yref = torch.stack(ys, 1) + Dt.view(1, 1, H, 1) * xt
    yref.backward(torch.tensor(dy.reshape(batch, T, H, P)))

    def err(ours, ref):
        ref = ref.detach().numpy().reshape(-1)
        return float(np.max(np.abs(ours.reshape(-1) - ref)) / max(np.max(np.abs(ref)), 1e-30))

    return {"y": err(y, yref), "dx": err(dx, xt.grad), "ddt": err(ddt_out, dtt.grad), "dA": err(dA, At.grad),
            "dB": err(dB, Bt.grad), "dC": err(dC, Ct.grad), "dD": err(dD, Dt.grad)}


def run_conv(B, T, C, K, tile_len, seed):
    """causal_conv1d.cu's kernels per (batch, tile, channel) with their register windows, against autograd."""
    rng = np.random.default_rng(seed)
    width = C + 3
    x = rng.standard_normal(B * T * width)  # a strided slice: channel stride 1, time stride `width`
    w = rng.standard_normal(C * K) * 0.5
    bias = rng.standard_normal(C)
    gout = rng.standard_normal(B * T * C)
    per_seq = (T + tile_len - 1) // tile_len
    out, dx = np.zeros(B * T * C), np.zeros(B * T * C)
    dw_part, db_part = np.zeros(B * per_seq * C * K), np.zeros(B * per_seq * C)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for b in range(B):
        for tile in range(per_seq):
            t0 = tile * tile_len
            t1 = min(t0 + tile_len, T)
            for c in range(C):
                xb = b * T * width + c
                wk = [w[c * K + k] for k in range(K)]
                # forward kernel
                win = [0.0] * K
                for k in range(K - 1):
                    t = t0 - (K - 1) + k
                    win[k] = x[xb + t * width] if t >= 0 else 0.0
                for t in range(t0, t1):
                    win[K - 1] = x[xb + t * width]
                    u = bias[c] + sum(wk[k] * win[k] for k in range(K))
                    out[(b * T + t) * C + c] = u * sig(u)
                    win[:K - 1] = win[1:]
                # backward kernel
                xwin, gwin, dw, db = [0.0] * K, [0.0] * K, [0.0] * K, 0.0
                for k in range(K - 1):
                    t = t0 - (K - 1) + k
                    xwin[k] = x[xb + t * width] if t >= 0 else 0.0
                for tp in range(t0, t1 + K - 1):
                    g = 0.0
                    if tp < T:
                        xwin[K - 1] = x[xb + tp * width]
                        u = bias[c] + sum(wk[k] * xwin[k] for k in range(K))
                        sg = sig(u)
                        g = gout[(b * T + tp) * C + c] * sg * (1 + u * (1 - sg))
                        if tp < t1:
                            for k in range(K):
                                dw[k] += g * xwin[k]
                            db += g
                    gwin[:K - 1] = gwin[1:]
                    gwin[K - 1] = g
                    t = tp - (K - 1)
                    if t >= t0:
                        dx[(b * T + t) * C + c] = sum(wk[k] * gwin[K - 1 - k] for k in range(K))
                    xwin[:K - 1] = xwin[1:]
                ti = b * per_seq + tile
                for k in range(K):
                    dw_part[(ti * C + c) * K + k] = dw[k]
                db_part[ti * C + c] = db
    xt = torch.tensor(x.reshape(B, T, width)[:, :, :C].copy(), requires_grad=True)
    wt = torch.tensor(w.reshape(C, 1, K), requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    ref = torch.nn.functional.silu(torch.nn.functional.conv1d(xt.transpose(1, 2), wt, bt, padding=K - 1,
                                                              groups=C)[..., :T]).transpose(1, 2)
    ref.backward(torch.tensor(gout.reshape(B, T, C)))

    def err(ours, r):
        r = r.detach().numpy().reshape(-1)
        return float(np.max(np.abs(ours.reshape(-1) - r)) / max(np.max(np.abs(r)), 1e-30))

    return {"out": err(out, ref), "dx": err(dx, xt.grad),
            "dw": err(dw_part.reshape(B * per_seq, C, K).sum(0), wt.grad),
            "db": err(db_part.reshape(B * per_seq, C).sum(0), bt.grad)}


def main():
    ok = True
    for case in [(2, 11, 3, 4, 4), (1, 9, 2, 3, 64), (1, 7, 2, 1, 3)]:
        errs = run_conv(*case, seed=sum(case))
        bad = {k: v for k, v in errs.items() if not v < 1e-12}
        ok &= not bad
        print({"kernel": "causal_conv1d", "case": "B{} T{} C{} K{} tile{}".format(*case), "max_scaled_err": errs,
               "pass": not bad})
    for case in [(1, 8, 2, 2, 1, 3, 4), (2, 12, 4, 3, 2, 2, 4), (1, 16, 6, 2, 3, 4, 8)]:
        errs = run(*case, seed=sum(case))
        bad = {k: v for k, v in errs.items() if not v < 1e-9}
        ok &= not bad
        print({"kernel": "ssd_scan", "case": "B{} T{} H{} P{} G{} N{} Q{}".format(*case), "max_scaled_err": errs,
               "pass": not bad})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
