#!/usr/bin/env python3
"""Loads pruned checkpoints with transformers and compares their logits with minipuzzle's.

usage: check_pruned_hf.py [--tol T] CHECKPOINT=REFERENCE.safetensors ...
Each REFERENCE holds input_ids_<L> and logits_<L> (the C++ model's fp32 logits on that checkpoint). A checkpoint
passes when transformers loads it with no missing, unexpected or mismatched tensors, its parameter shapes follow
its own config.json (transformers builds the modules from the config), and every max abs logit difference is
<= T times the logit scale max(1, max |reference logit|) (the C++ model and transformers order fp32 sums
differently; the parity test's 1e-4 is for logits of about that scale). One process checks them all
(loading transformers once). Prints one JSON line per checkpoint; exit 1 if any fails.
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def check(ckpt, ref_path, tol):
    model, info = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    model.eval()
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"{key}: {list(info[key])[:5]}")
    ref = load_file(ref_path)
    worst, scale = 0.0, 1.0
    with torch.no_grad():
        for key in sorted(k for k in ref if k.startswith("input_ids_")):
            L = key[len("input_ids_"):]
            logits = model(input_ids=ref[key]).logits.float()
            if logits.shape != ref["logits_" + L].shape:
                problems.append(f"logits shape {tuple(logits.shape)} vs {tuple(ref['logits_' + L].shape)}")
                continue
            worst = max(worst, (logits - ref["logits_" + L]).abs().max().item())
            scale = max(scale, ref["logits_" + L].abs().max().item())
    if worst > tol * scale:
        problems.append(f"max abs logit difference {worst:.3g} > {tol} x logit scale {scale:.3g}")
    cfg = model.config
    return {"checkpoint": ckpt, "ok": not problems, "max_abs_err": worst, "logit_scale": scale, "problems": problems,
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": cfg.hidden_size, "mamba_num_heads": cfg.mamba_num_heads, "n_groups": cfg.n_groups}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    ok = True
    for pair in a.pairs:
        ckpt, ref = pair.split("=", 1)
        try:
            r = check(ckpt, ref, a.tol)
        except Exception as e:  # a checkpoint that does not load is a failure, reported like the others
            r = {"checkpoint": ckpt, "ok": False, "problems": [f"{type(e).__name__}: {e}"]}
        print(json.dumps(r), flush=True)
        ok = ok and r["ok"]
    print("OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
