#!/usr/bin/env python3
"""transformers' NemotronH Mamba-2 mixer (its torch path, and the mamba_ssm kernels path when mamba_ssm imports)
at the same 8B-class layer shape and FLOP formula as bench_mamba_kernels. Prints one JSON object.
usage: mamba_layer_transformers.py [--batch 4] [--seq 4096] [--iters 5] [--peak-tflops 989.4] [--out FILE]"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.4)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    report = {"bench": "mamba_layer_transformers", "batch": a.batch, "seq": a.seq}
    try:
        import transformers
        from transformers import NemotronHConfig
        from transformers.models.nemotron_h import modeling_nemotron_h as m
        report["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001
        report["skipped"] = f"transformers NemotronH not importable: {e}"
        print(json.dumps(report))
        return
    hidden, H, P, G, N, Q, K = 4096, 128, 64, 8, 128, 128, 4
    cfg = NemotronHConfig(hybrid_override_pattern="M", vocab_size=1024, hidden_size=hidden, intermediate_size=21504,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128, mamba_num_heads=H,
                          mamba_head_dim=P, n_groups=G, ssm_state_size=N, conv_kernel=K, chunk_size=Q)
    d_inner = H * P
    conv_dim = d_inner + 2 * G * N
    in_proj = 2 * d_inner + 2 * G * N + H
    tokens = a.batch * a.seq
    flops = tokens * (2 * hidden * in_proj + 2 * d_inner * hidden + 2 * H * (Q * P + 2 * N * P) + 2 * G * Q * N
                      + 2 * conv_dim * K)
    report["flops_fwd"] = flops
    torch.manual_seed(0)
    mixer = m.NemotronHMamba2Mixer(cfg, layer_idx=0).to("cuda", torch.bfloat16)
    h = torch.randn(a.batch, a.seq, hidden, device="cuda", dtype=torch.bfloat16)
    report["mamba_ssm_kernels_available"] = bool(getattr(m, "is_fast_path_available", False))

    def timed(fn, warmup=1):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[len(ts) // 2]

    def measure(name, forward):
        r = {"impl": name}
        try:
            with torch.no_grad():
                r["fwd_ms"] = timed(lambda: forward(h))
            hg = h.detach().requires_grad_(True)
            grad = torch.randn_like(h)

            def fwd_bwd():
                mixer.zero_grad(set_to_none=True)
                hg.grad = None
                forward(hg).backward(grad)
            r["fwd_bwd_ms"] = timed(fwd_bwd)
            for key, mult in (("fwd", 1), ("fwd_bwd", 3)):
                tf = mult * flops / (r[key + "_ms"] * 1e-3) / 1e12
                r[key + "_tflops"] = tf
                r[key + "_pct_peak"] = 100 * tf / a.peak_tflops
                r[key + "_pct_of_790"] = 100 * tf / 790
        except Exception as e:  # noqa: BLE001
            r["error"] = str(e)[:400]
        torch.cuda.empty_cache()
        return r

    results = [measure("transformers_torch_path", lambda x: mixer.torch_forward(x))]
    if report["mamba_ssm_kernels_available"]:
        results.append(measure("transformers_mamba_ssm_kernels", lambda x: mixer.cuda_kernels_forward(x)))
    report["results"] = results
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
