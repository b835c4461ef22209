#!/usr/bin/env python3
"""transformers' NemotronHMoE at the shape of bench_moe_layer (Nemotron 3 Nano 30B-A3B: hidden 2688, 128 experts x
1856, top-6, shared 3712), bf16 on CUDA, forward and forward+backward, for each experts implementation it offers
(eager loop, grouped_mm, batched_mm). Prints one JSON line per implementation.
usage: moe_layer_transformers.py [--tokens 4096] [--iters 5]"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h import modeling_nemotron_h as m
    H, F, S, E, k = 2688, 1856, 3712, 128, 6
    flops = 2.0 * a.tokens * H * (E + 2 * k * F + 2 * S)
    for impl in ("eager", "grouped_mm", "batched_mm"):
        cfg = NemotronHConfig(hybrid_override_pattern="E", vocab_size=256, hidden_size=H, n_routed_experts=E,
                              num_experts_per_tok=k, moe_intermediate_size=F, moe_shared_expert_intermediate_size=S,
                              routed_scaling_factor=2.5, n_group=1, topk_group=1)
        cfg._experts_implementation = impl
        torch.manual_seed(0)
        report = {"bench": "moe_layer_transformers", "implementation": impl, "tokens": a.tokens}
        try:
            moe = m.NemotronHMoE(cfg).to("cuda", torch.bfloat16)
            with torch.no_grad():
                moe.gate.weight.normal_(0, 0.02)
                moe.experts.up_proj.normal_(0, 0.02)
                moe.experts.down_proj.normal_(0, 0.02)
            h = torch.randn(1, a.tokens, H, device="cuda", dtype=torch.bfloat16)

            def timed(fn, warmup=2):
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

            with torch.no_grad():
                report["fwd_ms"] = timed(lambda: moe(h))
            hg = h.detach().requires_grad_(True)
            report["fwd_bwd_ms"] = timed(lambda: moe(hg).float().square().mean().backward(), warmup=1)
            report["fwd_tflops"] = flops / report["fwd_ms"] / 1e9
        except Exception as e:  # noqa: BLE001  (an implementation this build lacks is reported, not fatal)
            report["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
