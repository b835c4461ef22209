#!/usr/bin/env bash
# GPU host: importance scoring (default width criteria, and every optional one) against a plain forward over
# the same tokens, 8B-class layer shapes, bf16, side by side in one run. Results in $OUT/score_bench.jsonl;
# the last lines printed are the ratios (issue 4's bound: default scoring at most 1.3x the forward).
# Default scoring is timed at 1, 4 and 16 samples of 4096 tokens: a scoring call has a fixed part (per-layer
# projections' Gram matrices, reading the statistics back, ranking on the host) and a part per sample, and a
# least-squares line through the three gives both (calibration sets are 512-1024 samples in NVIDIA's work).
# With nsys on the host, one profiled scoring call lists its costliest kernels (score_nsys.txt).
source scripts/gpu/env.sh
gpu_build bench_score > "$OUT/score_build.log" 2>&1 || tail -20 "$OUT/score_build.log"
: > "$OUT/score_bench.jsonl"
for samples in 1 4 16; do
  extra=""; [ "$samples" = 4 ] && extra="--all"
  MINIPUZZLE_PROGRESS=off ./build-gpu/bench/bench_score --pattern "M-M*M-" --samples $samples --seq 4096 --iters 5 $extra \
    | tee -a "$OUT/score_bench.jsonl" || echo "bench_score failed at $samples samples"
done
python3 - "$OUT/score_bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f"score/forward ({r['mode']}, {r['samples']} x {r['seq']} tokens): {r['score_ms']:.1f} ms / {r['forward_ms']:.1f} ms"
          f" = {r['ratio']:.3f}x" + (f" (target <= {r['target_ratio']})" if r["mode"] == "default" else ""))
d = [r for r in rows if r["mode"] == "default"]
if len(d) >= 2:
    n = len(d); xs = [r["samples"] for r in d]; ys = [r["score_ms"] for r in d]; fs = [r["forward_ms"] / r["samples"] for r in d]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - slope * mx; fwd = sum(fs) / n
    print(json.dumps({"score_fixed_ms_per_call": fixed, "score_ms_per_sample": slope, "forward_ms_per_sample": fwd,
                      "marginal_ratio_per_sample": slope / fwd}))
PY
if command -v nsys > /dev/null; then
  MINIPUZZLE_PROGRESS=off timeout 120 nsys profile -o "$OUT/score_prof" --force-overwrite true --stats=true \
    ./build-gpu/bench/bench_score --pattern "M-M*M-" --samples 4 --seq 4096 --iters 1 > "$OUT/score_nsys_full.txt" 2>&1
  grep -A 30 "cuda_gpu_kern_sum" "$OUT/score_nsys_full.txt" | cut -c1-220 > "$OUT/score_nsys.txt"
  rm -f "$OUT"/score_prof.*
  head -34 "$OUT/score_nsys.txt"
else
  echo "nsys not on this host: no kernel profile"
fi
