"""Writes tinyshakespeare as byte-level token files in minipuzzle's format (NAME.tokens raw uint32 LE,
NAME.index, NAME.json), for the GPU scripts' distillation runs (the GPU host has no tokenizer step of its own).
Usage: python3 scripts/gpu/byte_tokens.py OUT_DIR NAME:BEGIN:END [NAME:BEGIN:END ...]   (byte offsets)
The text is looked up in ../shared/data, shared/data and .carry/data (carried to the GPU host).
"""
import json
import os
import struct
import sys

import numpy as np

path = next(p for p in ("../shared/data/tinyshakespeare.txt", "shared/data/tinyshakespeare.txt",
                        ".carry/data/tinyshakespeare.txt") if os.path.exists(p))
text = open(path, "rb").read()
out = sys.argv[1]
for spec in sys.argv[2:]:
    name, lo, hi = spec.split(":")
    ids = np.frombuffer(text[int(lo):int(hi)], dtype=np.uint8).astype("<u4")
    ids.tofile(f"{out}/{name}.tokens")
    with open(f"{out}/{name}.index", "wb") as f:
        f.write(b"MPTIDX1\0" + struct.pack("<Q", 1) + struct.pack("<QQ", 0, len(ids)))
    with open(f"{out}/{name}.json", "w") as f:
        json.dump({"format": "minipuzzle-tokens", "version": 1,
                   "tokenizer": {"kind": "byte_level", "path": "", "sha256": ""}, "vocab_size": 256, "eos_id": None,
                   "eos_appended": False, "num_tokens": len(ids), "num_documents": 1,
                   "sources": ["tinyshakespeare.txt"], "split": name, "dtype": "uint32_le"}, f)
