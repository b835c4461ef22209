#!/usr/bin/env python3
"""Host emulation of moe_grouped_gemm.cu's launch arithmetic, for machines without a GPU.

Replays the grouped GEMM in float64 NumPy on flat buffers with the kernel's own index expressions: the grid
(ceil(rows / 64) + experts row tiles x ceil(n / 64) column tiles), each block's tile search over the offsets, the
shared-memory tiles (bf16 kernel: As / Bs [64][BK + 8] filled by 8-element chunks or element by element, four warps'
2 x 2 WMMA fragments read with the documented row-major A / column-major B semantics, the float tile Cs [64][68]
they are stored to; f32 kernel: As / Bs [BK][64 + 4], 4 x 4 outputs per thread), and the epilogue (relu^2, row scale,
bounds). Checks every output against a direct per-expert product. What it validates is the indexing a GPU run
cannot localise cheaply (tile -> expert mapping, partial tiles, k tails, padded strides); not rounding or timing.

usage: emulate_moe_grouped_gemm.py   (exit 0: every case within 1e-12 relative; needs numpy)
"""
import sys

import numpy as np

BM = BN = 64


def find_tile(offsets, experts, t):
    for e in range(experts):
        begin, end = offsets[e], offsets[e + 1]
        tiles = (end - begin + BM - 1) // BM
        if t < tiles:
            return e, begin + t * BM, end
        t -= tiles
    return None


def epilogue(v, relu2, scale, row):
    if relu2:
        v = max(v, 0.0)
        v *= v
    return v * scale[row] if scale is not None else v


def bf16_kernel(x, weights, offsets, experts, n, k, scale, relu2, y, vector, block):
    BK, LDS, LDC = 32, 40, BN + 4
    bx, by = block
    tile = find_tile(offsets, experts, bx)
    if tile is None:
        return
    e, row0, row_end = tile
    n0 = by * BN
    w = weights[e]
    As = np.full(BM * LDS, np.nan)  # NaN: a read of an element the loads never wrote shows up in the result
    Bs = np.full(BN * LDS, np.nan)
    acc = np.zeros((4, 2, 2, 16, 16))  # per warp: its 2 x 2 accumulator fragments
    for k0 in range(0, k, BK):
        if vector:
            for c in range(BM * BK // 8):  # threads and their strides only partition this range
                r, kc = c // (BK // 8), (c % (BK // 8)) * 8
                gk, gr, gn = k0 + kc, row0 + r, n0 + r
                a = x[gr * k + gk: gr * k + gk + 8] if (gr < row_end and gk < k) else np.zeros(8)
                b = w[gn * k + gk: gn * k + gk + 8] if (gn < n and gk < k) else np.zeros(8)
                assert len(a) == 8 and len(b) == 8, "a vector load crossed the end of a row"
                As[r * LDS + kc: r * LDS + kc + 8] = a
                Bs[r * LDS + kc: r * LDS + kc + 8] = b
        else:
            for c in range(BM * BK):
                r, kc = c // BK, c % BK
                gk, gr, gn = k0 + kc, row0 + r, n0 + r
                As[r * LDS + kc] = x[gr * k + gk] if (gr < row_end and gk < k) else 0.0
                Bs[r * LDS + kc] = w[gn * k + gk] if (gn < n and gk < k) else 0.0
        for warp in range(4):
            wm, wn = warp // 2, warp % 2
            for kk in range(0, BK, 16):
                for i in range(2):
                    base = (wm * 32 + i * 16) * LDS + kk  # row_major A: element (r, c) at base + r * LDS + c
                    a = np.array([[As[base + r * LDS + c] for c in range(16)] for r in range(16)])
                    for j in range(2):
                        bbase = (wn * 32 + j * 16) * LDS + kk  # col_major B: element (r, c) at bbase + c * LDS + r
                        b = np.array([[Bs[bbase + c * LDS + r] for c in range(16)] for r in range(16)])
                        acc[warp, i, j] += a @ b
    Cs = np.full(BM * LDC, np.nan)
    for warp in range(4):
        wm, wn = warp // 2, warp % 2
        for i in range(2):
            for j in range(2):
                base = (wm * 32 + i * 16) * LDC + wn * 32 + j * 16  # mem_row_major store, ldm LDC
                for r in range(16):
                    Cs[base + r * LDC: base + r * LDC + 16] = acc[warp, i, j, r]
    for c in range(BM * BN):
        r, cc = c // BN, c % BN
        gr, gn = row0 + r, n0 + cc
        if gr < row_end and gn < n:
            y[gr * n + gn] = epilogue(Cs[r * LDC + cc], relu2, scale, gr)


def f32_kernel(x, weights, offsets, experts, n, k, scale, relu2, y, block):
    BK = 16
    bx, by = block
    tile = find_tile(offsets, experts, bx)
    if tile is None:
        return
    e, row0, row_end = tile
    n0 = by * BN
    w = weights[e]
    acc = np.zeros((256, 4, 4))
    for k0 in range(0, k, BK):
        As = np.full((BK, BM + 4), np.nan)
        Bs = np.full((BK, BN + 4), np.nan)
        for c in range(BM * BK):
            r, kc = c // BK, c % BK
            gk, gr, gn = k0 + kc, row0 + r, n0 + r
            As[kc, r] = x[gr * k + gk] if (gr < row_end and gk < k) else 0.0
            Bs[kc, r] = w[gn * k + gk] if (gn < n and gk < k) else 0.0
        for t in range(256):
            tx, ty = t % 16, t // 16
            for kk in range(BK):
                a = As[kk, ty * 4: ty * 4 + 4]
                b = Bs[kk, tx * 4: tx * 4 + 4]
                acc[t] += np.outer(a, b)
    for t in range(256):
        tx, ty = t % 16, t // 16
        for i in range(4):
            gr = row0 + ty * 4 + i
            if gr >= row_end:
                continue
            for j in range(4):
                gn = n0 + tx * 4 + j
                if gn < n:
                    y[gr * n + gn] = epilogue(acc[t, i, j], relu2, scale, gr)


def launch(kind, x, weights, counts, n, k, scale, relu2, vector=False):
    experts, rows = len(counts), sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    row_tiles, col_tiles = (rows + BM - 1) // BM + experts, (n + BN - 1) // BN
    y = np.full(rows * n, np.nan)
    for bx in range(row_tiles):
        for by in range(col_tiles):
            if kind == "bf16":
                bf16_kernel(x, weights, offsets, experts, n, k, scale, relu2, y, vector, (bx, by))
            else:
                f32_kernel(x, weights, offsets, experts, n, k, scale, relu2, y, (bx, by))
    return y.reshape(rows, n)


def reference(x, weights, counts, n, k, scale, relu2):
    rows = sum(counts)
    X = x.reshape(rows, k)
    out, r0 = np.zeros((rows, n)), 0
    for e, cnt in enumerate(counts):
        v = X[r0:r0 + cnt] @ weights[e].reshape(n, k).T
        if relu2:
            v = np.maximum(v, 0) ** 2
        if scale is not None:
            v = v * scale[r0:r0 + cnt, None]
        out[r0:r0 + cnt] = v
        r0 += cnt
    return out


def main():
    rng = np.random.default_rng(3)
    cases = [([3, 0, 70, 1, 0, 129, 0], 40, 24), ([5, 17, 0, 64, 65], 37, 70), ([0, 0, 0, 1], 16, 8),
             ([130], 72, 130)]
    worst = 0.0
    for counts, k, n in cases:
        rows = sum(counts)
        x = rng.standard_normal(rows * k)
        weights = [rng.standard_normal(n * k) for _ in counts]
        scale = rng.random(rows) + 0.5
        for relu2, sc in ((True, None), (False, scale)):
            want = reference(x, weights, counts, n, k, sc, relu2)
            runs = [("f32", False), ("bf16", False)] + ([("bf16", True)] if k % 8 == 0 else [])
            for kind, vector in runs:
                got = launch(kind, x, weights, counts, n, k, sc, relu2, vector)
                err = np.abs(got - want).max() / (np.abs(want).max() + 1e-30)  # NaN (an unwritten output) fails
                print(f"counts {counts} k {k} n {n} {kind}{' vector' if vector else ''} relu2 {relu2}: "
                      f"rel err {err:.2e}")
                worst = err if not (err <= worst) else worst
    ok = worst <= 1e-12
    print("PASS" if ok else "FAIL", f"worst {worst:.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
