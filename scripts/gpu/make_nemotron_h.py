#!/usr/bin/env python3
"""Writes a random-weight NemotronH checkpoint with transformers, from a configs/models JSON.

usage: make_nemotron_h.py CONFIG.json OUT_DIR [--device cuda] [--shard 5GB] [--seed 0]
The model is built directly on the device in bf16 (transformers' own initialisation), then saved with
save_pretrained(max_shard_size=SHARD): the checkpoint layout a user downloads. Keys of the config JSON map
one to one onto NemotronHConfig's keyword arguments, except notes ("_source", ...) and the fields
transformers sets itself (architectures, model_type, torch_dtype); hybrid_override_pattern is accepted
and turned into layers_block_type by transformers. Prints one JSON line (parameters, bytes, seconds).
"""
import argparse
import json
import os
import time

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shard", default="5GB")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    raw = json.load(open(a.config))
    kw = {k: v for k, v in raw.items()
          if not k.startswith("_") and k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    config = NemotronHConfig(**kw)
    assert len(config.layers_block_type) == len(raw["hybrid_override_pattern"]), "pattern not taken over"
    torch.manual_seed(a.seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(a.device):
        model = NemotronHForCausalLM(config)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    built = time.time() - t0
    model.save_pretrained(a.out, max_shard_size=a.shard)
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out) if f.endswith(".safetensors"))
    print(json.dumps({"parameters": params, "safetensors_bytes": size, "build_seconds": round(built, 2),
                      "seconds": round(time.time() - t0, 2),
                      "shards": sorted(f for f in os.listdir(a.out) if f.endswith(".safetensors"))}))


if __name__ == "__main__":
    main()
