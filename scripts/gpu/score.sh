#!/usr/bin/env bash
# GPU host: importance scoring (default width criteria, and every optional one) against a plain forward over
# the same tokens, 8B-class layer shapes, bf16, side by side in one run. Results in $OUT/score_bench.jsonl;
# the last lines printed are the ratios (issue 4's bound: default scoring at most 1.3x the forward).
source scripts/gpu/env.sh
gpu_build bench_score > "$OUT/score_build.log" 2>&1 || tail -20 "$OUT/score_build.log"
MINIPUZZLE_PROGRESS=off ./build-gpu/bench/bench_score --pattern "M-M*M-" --samples 4 --seq 4096 --iters 5 --all \
  | tee "$OUT/score_bench.jsonl" || echo "bench_score failed; the lines above are what it measured"
python3 - "$OUT/score_bench.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"score/forward ({r['mode']}): {r['score_ms']:.1f} ms / {r['forward_ms']:.1f} ms = {r['ratio']:.3f}x"
          + (f" (target <= {r['target_ratio']})" if r["mode"] == "default" else ""))
PY
