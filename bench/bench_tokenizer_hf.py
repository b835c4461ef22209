#!/usr/bin/env python3
"""Side-by-side tokenizer throughput: `tokenizers` (encode_batch and encode_batch_fast, RAYON_NUM_THREADS
threads) against bench_tokenizer (minipuzzle C++) on the same documents (paragraphs: runs of non-blank lines,
the rule of `minipuzzle data`) and the same thread count. Prints one JSON object with both figures and checks that both
produced the same number of tokens.

  python bench/bench_tokenizer_hf.py --cpp BUILD/bench/bench_tokenizer --tokenizer tokenizer.json \
      --threads 2 FILES...
"""
import argparse
import json
import os
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpp", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its thread pool
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from tokenizers import Tokenizer

    raw = b"".join(open(f, "rb").read() for f in args.files).decode("utf-8")
    docs = split_paragraphs(raw)
    tok = Tokenizer.from_file(args.tokenizer)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    seconds, tokens = [], 0
    for r in range(args.repeat):
        start = time.perf_counter()
        enc = tok.encode_batch(docs, add_special_tokens=False)
        seconds.append(time.perf_counter() - start)
        if r == 0:
            tokens = sum(len(e.ids) for e in enc)
    warm = min(seconds[1:]) if len(seconds) > 1 else seconds[0]
    # encode_batch_fast skips offset tracking: the quickest path `tokenizers` offers (a fresh tokenizer, so
    # its first pass is cold too).
    fast_tok, fast_seconds = Tokenizer.from_file(args.tokenizer), []
    for r in range(args.repeat if hasattr(fast_tok, "encode_batch_fast") else 0):
        start = time.perf_counter()
        enc = fast_tok.encode_batch_fast(docs, add_special_tokens=False)
        fast_seconds.append(time.perf_counter() - start)
        if r == 0:
            assert sum(len(e.ids) for e in enc) == tokens
    hf = {"implementation": "tokenizers " + __import__("tokenizers").__version__, "threads": args.threads,
          "documents": len(docs), "bytes": nbytes, "tokens": tokens, "cold_seconds": seconds[0],
          "warm_seconds": warm, "cold_mb_per_s": nbytes / 1e6 / seconds[0], "warm_mb_per_s": nbytes / 1e6 / warm}
    if fast_seconds:
        fast_warm = min(fast_seconds[1:]) if len(fast_seconds) > 1 else fast_seconds[0]
        hf["fast_cold_mb_per_s"] = nbytes / 1e6 / fast_seconds[0]
        hf["fast_warm_mb_per_s"] = nbytes / 1e6 / fast_warm
        hf["fast_warm_seconds"] = fast_warm
    out = subprocess.run([args.cpp, "--tokenizer", args.tokenizer, "--threads", str(args.threads), "--repeat",
                          str(args.repeat)] + args.files, check=True, capture_output=True, text=True)
    cpp = json.loads(out.stdout)
    result = {"bench": "tokenizer_side_by_side", "tokenizer": args.tokenizer, "files": args.files,
              "threads": args.threads, "tokenizers": hf, "minipuzzle": cpp,
              "same_documents": cpp["documents"] == hf["documents"], "same_token_count": cpp["tokens"] == tokens,
              "speedup_cold": hf["cold_seconds"] / cpp["cold_seconds"],
              "speedup_warm": hf["warm_seconds"] / cpp["warm_seconds"]}
    if fast_seconds:
        result["speedup_warm_vs_encode_batch_fast"] = hf["fast_warm_seconds"] / cpp["warm_seconds"]
    print(json.dumps(result))
    return 0 if result["same_documents"] and result["same_token_count"] else 1


def split_paragraphs(text):
    """Runs of non-blank lines (lines cut at '\\n' only), the rule of minipuzzle's split_paragraphs."""
    docs, current, pos = [], [], 0
    while pos < len(text):
        nl = text.find("\n", pos)
        end = len(text) if nl < 0 else nl + 1
        line = text[pos:end]
        if all(c in " \t\r\n" for c in line):
            if current:
                docs.append("".join(current))
                current = []
        else:
            current.append(line)
        pos = end
    if current:
        docs.append("".join(current))
    return docs


if __name__ == "__main__":
    sys.exit(main())
