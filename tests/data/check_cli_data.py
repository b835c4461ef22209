#!/usr/bin/env python3
"""End-to-end check of `minipuzzle data`, reading its output with numpy only (an independent reader of the
format documented in include/minipuzzle/token_file.h).

Runs `minipuzzle data FILE --tokenizer byte -o W/out --valid-fraction 0.1 --threads 2 --append-eos`, then
checks that NAME.tokens / NAME.index / NAME.json of both splits hold exactly the paragraphs of FILE as bytes
plus <eos> (id 256), routed by the documented splitmix64 rule, and that bad input fails with exit code 1.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

MASK = (1 << 64) - 1


def in_valid(k, fraction):
    z = (k + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    return (z >> 11) * 2.0 ** -53 < fraction


def paragraphs(data):
    docs, current, pos = [], [], 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if all(c in b" \t\r\n" for c in line):
            if current:
                docs.append(b"".join(current))
                current = []
        else:
            current.append(line)
        pos = end
    if current:
        docs.append(b"".join(current))
    return docs


def read_token_file(base):
    tokens = np.fromfile(base + ".tokens", dtype="<u4")
    raw = open(base + ".index", "rb").read()
    assert raw[:8] == b"MPTIDX1\0", "bad magic"
    n = int(np.frombuffer(raw[8:16], dtype="<u8")[0])
    offsets = np.frombuffer(raw[16:], dtype="<u8")
    assert len(offsets) == n + 1 and offsets[0] == 0 and offsets[-1] == len(tokens)
    meta = json.load(open(base + ".json"))
    assert meta["format"] == "minipuzzle-tokens" and meta["num_tokens"] == len(tokens)
    assert meta["num_documents"] == n
    return [tokens[offsets[i]:offsets[i + 1]] for i in range(n)], meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minipuzzle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    out = os.path.join(args.work, "out")
    env = dict(os.environ, MINIPUZZLE_PROGRESS="jsonl")
    r = subprocess.run([args.minipuzzle, "data", args.data, "--tokenizer", "byte", "-o", out, "--valid-fraction",
                        "0.1", "--threads", "2", "--append-eos"], env=env, capture_output=True, text=True)
    print(r.stderr[-2000:])
    assert r.returncode == 0, f"minipuzzle data failed with {r.returncode}"
    assert '"event":"done"' in r.stderr.replace(" ", ""), "no progress 'done' event on stderr"
    want = {"train": [], "valid": []}
    for k, doc in enumerate(paragraphs(open(args.data, "rb").read())):
        want["valid" if in_valid(k, 0.1) else "train"].append(list(doc) + [256])
    for split in ("train", "valid"):
        docs, meta = read_token_file(f"{out}.{split}")
        assert meta["split"] == split and meta["eos_id"] == 256 and meta["vocab_size"] == 258
        assert len(docs) == len(want[split]), (split, len(docs), len(want[split]))
        for got, exp in zip(docs, want[split]):
            assert got.tolist() == exp
        print(f"{split}: {len(docs)} documents, {sum(len(d) for d in docs)} tokens match")
    leftovers = [f for f in os.listdir(args.work) if ".tmp-" in f]
    assert not leftovers, leftovers
    bad = os.path.join(args.work, "bad.jsonl")
    open(bad, "w").write('{"text": "ok"}\nnot json\n')
    r = subprocess.run([args.minipuzzle, "data", bad, "-o", os.path.join(args.work, "bad")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bad.jsonl:2" in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists(os.path.join(args.work, "bad.tokens"))
    print("bad input refused:", r.stderr.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
