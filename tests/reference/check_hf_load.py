#!/usr/bin/env python3
"""Loads a checkpoint written by minipuzzle with transformers and compares its logits with a reference.

usage: check_hf_load.py CHECKPOINT REFERENCE.safetensors [--tol T] [--shapes-json FILE]
REFERENCE holds input_ids_<L> and logits_<L> tensors. Exit 0 when every max abs difference <= T.
With --shapes-json, also writes {name: shape} of the loaded model's state dict (to check pruned shapes).
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("reference")
    ap.add_argument("--tol", type=float, default=0.0)
    ap.add_argument("--shapes-json")
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
    ref = load_file(a.reference)
    worst = 0.0
    with torch.no_grad():
        for key in sorted(k for k in ref if k.startswith("input_ids_")):
            L = key[len("input_ids_"):]
            logits = model(input_ids=ref[key]).logits.float()
            err = (logits - ref["logits_" + L]).abs().max().item()
            print(f"L={L} max_abs_err={err:.3g}")
            worst = max(worst, err)
    if a.shapes_json:
        with open(a.shapes_json, "w") as f:
            json.dump({k: list(v.shape) for k, v in model.state_dict().items()}, f)
    ok = worst <= a.tol
    print("OK" if ok else f"FAIL: {worst} > {a.tol}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
