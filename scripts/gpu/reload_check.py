#!/usr/bin/env python3
"""Reloads a pruned checkpoint with transformers and compares its logits with minipuzzle's.

usage: reload_check.py CKPT LOGITS.safetensors [--device cuda]
LOGITS.safetensors is `minipuzzle eval --logits-out` (input_ids [1, L], logits [1, L, V] in fp32). The
checkpoint is loaded in bf16 (on CUDA) or fp32 (on CPU), run on the same ids, and compared: relative L2 error
of the logits, the largest absolute difference, and how often the top-1 token agrees. Prints one JSON line.
"""
import argparse
import json
import time

import torch
from safetensors.torch import load_file
from transformers import NemotronHForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("logits")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    t0 = time.time()
    ref = load_file(a.logits)
    ids, ours = ref["input_ids"].long(), ref["logits"].float()
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model = NemotronHForCausalLM.from_pretrained(a.ckpt, dtype=dtype).to(a.device).eval()
    loaded = time.time() - t0
    with torch.no_grad():
        theirs = model(input_ids=ids.to(a.device)).logits.float().cpu()
    diff = (theirs - ours).flatten()
    rel = (diff.norm() / ours.flatten().norm().clamp_min(1e-30)).item()
    top1 = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    print(json.dumps({"tokens": ids.numel(), "dtype": str(dtype).replace("torch.", ""),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "rel_l2_error": rel, "max_abs_diff": diff.abs().max().item(), "top1_agreement": top1,
                      "load_seconds": round(loaded, 2), "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
