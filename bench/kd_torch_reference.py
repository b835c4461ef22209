#!/usr/bin/env python3
"""PyTorch-side timings for the KD benchmarks (issue 7), to sit beside bench_kd_loss / bench_linear_kd in one run.

KD loss, N=8192, V=131072, bf16, forward KL fwd+bwd:   eager PyTorch (float32 log-probs) and torch.compile of it.
Linear + KD, N=8192, H=4096, V=131072, bf16, fwd+bwd:  eager, torch.compile, and Liger-Kernel's
LigerFusedLinearJSD (jsd_beta=0.5; also beta=0, forward KL, where the installed Liger accepts it) when
`liger_kernel` is importable. Liger is optional: its absence is recorded, not an error.

Times: CUDA events, warm-up (which includes compilation), median of --iters runs. Extra memory: peak allocated
during one call minus allocated before, minus the gradients kept (d logits, or d hidden + d W).
Writes one JSON file (--out) and prints it.
"""
import argparse
import inspect
import json
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F


def time_cuda(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "iterations": iters}


def extra_mib(fn, kept_bytes):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before - kept_bytes) / 2**20


def kd_eager(student, teacher):
    log_q = F.log_softmax(student.float(), dim=-1)
    log_p = F.log_softmax(teacher.float(), dim=-1)
    return F.kl_div(log_q, log_p, reduction="sum", log_target=True) / student.shape[0]


def bench_kd_loss(n, v, iters, results):
    torch.manual_seed(0)
    student = (torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 3).requires_grad_(True)
    teacher = torch.randn(n, v, device="cuda", dtype=torch.bfloat16) * 3 + student.detach() * 0.5
    grad_bytes = student.numel() * student.element_size()
    out = {"tokens": n, "vocab": v, "dtype": "bfloat16", "what": "forward KL, T=1, mean over tokens, fwd+bwd"}
    for name, fn in [("eager_pytorch", kd_eager), ("torch_compile", torch.compile(kd_eager))]:
        try:
            def step():
                student.grad = None
                fn(student, teacher).backward()
            t0 = time.time()
            step()  # first call compiles
            entry = {"first_call_s": time.time() - t0}
            entry.update(time_cuda(step, 2, iters))
            student.grad = None  # measure from a state without a gradient, as on a first step
            entry["extra_memory_mib"] = extra_mib(step, grad_bytes)
            out[name] = entry
        except Exception as e:  # noqa: BLE001 - recorded in the JSON
            out[name] = {"error": repr(e)[:400]}
        student.grad = None
        torch.cuda.empty_cache()
    results["kd_loss"] = out


def linear_eager(h, w, th, tw):
    return kd_eager(h @ w.t(), th @ tw.t())


def bench_linear(n, hidden, v, iters, results, save):
    torch.manual_seed(0)
    opts = dict(device="cuda", dtype=torch.bfloat16)
    scale = 3.0 / hidden**0.5
    h = torch.randn(n, hidden, **opts).requires_grad_(True)
    w = (torch.randn(v, hidden, **opts) * scale).requires_grad_(True)
    th = torch.randn(n, hidden, **opts)
    tw = torch.randn(v, hidden, **opts) * scale
    kept = (h.numel() + w.numel()) * 2
    flops = 4 * 2 * n * hidden * v
    out = {"tokens": n, "hidden": hidden, "vocab": v, "dtype": "bfloat16", "gemm_flops": flops}
    candidates = [("eager_pytorch_forward_kl", linear_eager)]
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD  # optional

        out["liger_version"] = getattr(sys.modules.get("liger_kernel"), "__version__", "unknown")
        for beta in (0.5, 0.0):
            try:
                module = LigerFusedLinearJSD(jsd_beta=beta, temperature=1.0)
            except Exception as e:  # noqa: BLE001 - older Liger: beta must be in (0, 1)
                out[f"liger_fused_linear_jsd_beta_{beta}"] = {"error": repr(e)[:300]}
                continue
            # Liger >= 0.5 takes shift_labels (Optional, no default) after the four tensors; older ones do not.
            takes_labels = "shift_labels" in inspect.signature(module.forward).parameters
            candidates.append((f"liger_fused_linear_jsd_beta_{beta}",
                               (lambda a, b, c, d, m=module: m(a, b, c, d, shift_labels=None)) if takes_labels
                               else (lambda a, b, c, d, m=module: m(a, b, c, d))))
    except Exception as e:  # noqa: BLE001
        out["liger"] = {"error": "liger_kernel not importable: " + repr(e)[:300], "ran": False}
    # torch.compile last: its compilation is the slowest step, and a timeout should cost it, not Liger.
    candidates.append(("torch_compile_forward_kl", torch.compile(linear_eager)))
    results["linear_kd"] = out
    for name, fn in candidates:
        try:
            def step():
                h.grad = None
                w.grad = None
                fn(h, w, th, tw).backward()
            t0 = time.time()
            step()
            entry = {"first_call_s": time.time() - t0}
            entry.update(time_cuda(step, 1, iters))
            entry["tflop_s_of_the_4_gemms"] = flops / (entry["median_ms"] * 1e-3) / 1e12
            h.grad = None
            w.grad = None
            entry["extra_memory_mib"] = extra_mib(step, kept)
            out[name] = entry
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": repr(e)[:400], "trace": traceback.format_exc()[-600:]}
        h.grad = None
        w.grad = None
        torch.cuda.empty_cache()
        save()  # keep what was measured if a later candidate runs out of time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="kd_torch_reference.json")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--skip-linear", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        results = {"ran": False, "reason": "no CUDA device: PyTorch reference timings were NOT measured"}
    else:
        results = {"ran": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
        bench_kd_loss(args.tokens, args.vocab, args.iters, results)
        write(args.out, results)  # keep what was measured even if a later part runs out of time
        if not args.skip_linear:
            bench_linear(args.tokens, args.hidden, args.vocab, args.iters, results, lambda: write(args.out, results))
    print(write(args.out, results))


def write(path, results):
    text = json.dumps(results, indent=1)
    with open(path, "w") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
