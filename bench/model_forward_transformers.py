#!/usr/bin/env python3
"""transformers' NemotronH (torch path) at the same 8B-class shapes and FLOP formula as bench_model_forward.
Prints one JSON line. usage: model_forward_transformers.py [--pattern M-M*M-] [--batch 1] [--seq 4096]
[--iters 5] [--backward]"""
import argparse
import json
import time

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="M-M*M-")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--backward", action="store_true")
    a = ap.parse_args()
    cfg = NemotronHConfig(hybrid_override_pattern=a.pattern, vocab_size=131072, hidden_size=4096,
                          intermediate_size=21504, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                          mamba_num_heads=128, mamba_head_dim=64, n_groups=8, ssm_state_size=128, conv_kernel=4,
                          chunk_size=128)
    torch.manual_seed(0)
    model = NemotronHForCausalLM(cfg).to("cuda", torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n)
    tokens = a.batch * a.seq
    f = 2.0 * tokens * matmul
    n_attn = a.pattern.count("*")
    n_mamba = a.pattern.count("M")
    f += n_attn * a.batch * 2 * 2 * 32 * 128 * a.seq * a.seq / 2
    f += n_mamba * tokens * (2 * 128 * (128 * 64 + 2 * 128 * 64) + 2 * 8 * 128 * 128)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(ts)[len(ts) // 2]

    model.eval()
    with torch.no_grad():
        fwd = timed(lambda: model(input_ids=ids))
    out = {"impl": "transformers", "pattern": a.pattern, "batch": a.batch, "seq": a.seq, "forward_flops": f,
           "forward_ms": fwd, "forward_tflops": f / fwd / 1e9, "tokens_per_s": tokens / fwd * 1e3}
    if a.backward:
        model.train()

        def step():
            loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        try:
            fb = timed(step)
            out.update(fwd_bwd_ms=fb, fwd_bwd_tflops=3 * f / fb / 1e9)
        except torch.OutOfMemoryError:
            out.update(fwd_bwd_ms=None, fwd_bwd_error="out of memory")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
