#!/usr/bin/env python3
"""Times minipuzzle_kernels' Python calls the way bench/bench_kd_loss and bench/bench_linear_kd time the C++ calls
(same shapes, same data recipe, CUDA events around each call, median), so scripts/gpu/py_kernels.sh can put the
two side by side: the Python call should add at most 2% (issue 23). With Liger-Kernel importable it also times
LigerFusedLinearJSD against FusedLinearKDLoss with the same divergence (JSD, beta 0.5) and checks both give the
same loss. Prints one JSON object.
    python op_overhead.py --tokens 8192 --hidden 4096 --vocab 131072 --iters 10
"""
import argparse
import json
import math
import statistics

import torch

import minipuzzle_kernels as mk


def time_cuda(warmup, iters, fn):
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    # Also back to back, one pair of events around all the calls: the host runs ahead as in training, so this is
    # the GPU time with the Python overhead hidden where it can be (the per-call median above includes it).
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "iterations": iters,
            "back_to_back_mean_ms": start.elapsed_time(stop) / iters}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=131072)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--skip-liger", action="store_true")
    a = p.parse_args()
    assert torch.cuda.is_available() and mk.built_with_cuda(), "needs a CUDA device and the package's CUDA build"
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    n, h_size, v = a.tokens, a.hidden, a.vocab
    out = {"device": torch.cuda.get_device_name(), "tokens": n, "hidden": h_size, "vocab": v, "dtype": "bfloat16",
           "torch": torch.__version__}

    # bench_kd_loss's data: randn * 3, teacher = randn * 3 + 0.5 * student.
    torch.manual_seed(0)
    student = torch.randn(n, v, device=dev, dtype=bf16).mul_(3.0)
    teacher = torch.randn(n, v, device=dev, dtype=bf16).mul_(3.0).add_(student, alpha=0.5)
    op = torch.ops.minipuzzle.kd_loss
    # = bench_kd_loss "ours_out_of_place": loss and gradient, no autograd.
    out["kd_loss_op"] = time_cuda(3, a.iters, lambda: op(student, teacher, None, "forward_kl", 1.0, 0.5, 1.0, 0.0,
                                                         -100, "mean", True))
    leaf = student.clone().requires_grad_(True)

    def kd_step():
        leaf.grad = None
        mk.kd_loss(leaf, teacher).backward()

    # = bench_kd_loss "ours_autograd": mp::kd_loss(...).backward().
    out["kd_loss_autograd"] = time_cuda(3, a.iters, kd_step)
    del student, teacher, leaf
    torch.cuda.empty_cache()

    # bench_linear_kd's data: h, th ~ randn; W, Wt ~ randn * 3 / sqrt(H).
    torch.manual_seed(0)
    scale = 3.0 / math.sqrt(h_size)
    h = torch.randn(n, h_size, device=dev, dtype=bf16).requires_grad_(True)
    w = torch.randn(v, h_size, device=dev, dtype=bf16).mul_(scale).requires_grad_(True)
    th = torch.randn(n, h_size, device=dev, dtype=bf16)
    tw = torch.randn(v, h_size, device=dev, dtype=bf16).mul_(scale)

    def linear_step(fn):
        def step():
            h.grad = None
            w.grad = None
            fn(h, w, th, tw).backward()
        return step

    # = bench_linear_kd "ours_autograd_default_chunk": mp::linear_kd(h, w, th, tw).backward(), forward KL.
    out["linear_kd_autograd"] = time_cuda(2, max(3, a.iters // 2), linear_step(mk.linear_kd))
    ours_jsd = mk.FusedLinearKDLoss(jsd_beta=0.5)
    out["fused_linear_kd_loss_jsd"] = time_cuda(2, max(3, a.iters // 2), linear_step(ours_jsd))
    if not a.skip_liger:
        try:
            from liger_kernel.transformers import LigerFusedLinearJSD
        except ImportError as e:
            out["liger"] = {"skipped": f"liger_kernel not importable: {e}"}
        else:
            liger = LigerFusedLinearJSD(jsd_beta=0.5)
            with torch.no_grad():
                ours_value, liger_value = ours_jsd(h, w, th, tw).item(), liger(h, w, th, tw).item()
            t = time_cuda(2, max(3, a.iters // 2), linear_step(liger))
            out["liger_fused_linear_jsd"] = dict(t, loss=liger_value)
            out["fused_linear_kd_loss_jsd"]["loss"] = ours_value
            out["speedup_over_liger_jsd"] = t["median_ms"] / out["fused_linear_kd_loss_jsd"]["median_ms"]
            out["loss_rel_diff_vs_liger"] = abs(ours_value - liger_value) / max(abs(liger_value), 1e-12)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
