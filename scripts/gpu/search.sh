#!/usr/bin/env bash
# GPU checks of the search (issue 6), run from the repo root on the GPU host; results in $OUT:
#  search_gpu.json      memory model vs CUDA allocations (weights, KV cache, Mamba state; claim: within 5%) and
#                       roofline calibration (fit on 5 shapes, predict 3 held-out shapes; claim: within 15%)
#  search_timings.json  the timed steps, reusable: minipuzzle bench-hw --hardware h100-80gb --timings ...
#  search_bench.json    CPU speed of the search (12B full space <= 10 s; 17,472-point 9B->7B space <= 2 s)
#  h100-calibrated.json the hardware profile with the fitted coefficients (via the CLI, when it builds)
# About 1-2 minutes after the build.
set -euo pipefail
source scripts/gpu/env.sh
gpu_build bench_gpu_search bench_search
set +e
build-gpu/bench/bench_gpu_search "$OUT/search_timings.json" > "$OUT/search_gpu.json" 2> "$OUT/search_gpu.stderr"
echo "bench_gpu_search exit $?"
build-gpu/bench/bench_search > "$OUT/search_bench.json" 2> "$OUT/search_bench.stderr"
echo "bench_search exit $?"
if gpu_build minipuzzle > "$OUT/search_cli_build.log" 2>&1 && [ -x build-gpu/minipuzzle ]; then
  profile=$(python3 -c "import json;print(json.load(open('$OUT/search_timings.json'))['profile'])" 2>/dev/null || echo h100-80gb)
  build-gpu/minipuzzle bench-hw --hardware "$profile" --timings "$OUT/search_timings.json" \
    --holdout h2560x3-heldout h1536x5-heldout h3584x2-heldout -o "$OUT/${profile%%-*}-calibrated.json" 2>&1 | tail -3
fi
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
try:
    g = json.load(open(f"{out}/search_gpu.json"))
    m = g.get("memory_check", {})
    print("device:", g.get("device"))
    for k, v in m.get("terms", {}).items():
        print(f"  memory {k:26s} measured {v['measured_bytes']/2**30:8.4f} GiB  model {v['model_bytes']/2**30:8.4f} GiB  err {100*v['relative_error']:+.2f}%")
    print("  memory check pass:", m.get("pass"), "| activations:", m.get("activations"))
    c = g.get("calibration", {})
    for r in c.get("held_out", []):
        print(f"  held-out {r['label']:18s} {r['phase']:7s} B={r['batch']:<3} n={r['n']:<6} measured {r['measured_s']*1e3:9.3f} ms  err {100*r['relative_error']:+.1f}%")
    print("  calibration: held-out max |err|", c.get("held_out_max_abs_relative_error"), "pass 15%:", c.get("pass_15_percent"),
          "| uncalibrated max |err|", c.get("held_out_max_abs_relative_error_uncalibrated"))
    if "errors" in g: print("  errors:", g["errors"])
except Exception as e:
    print("search_gpu.json unreadable:", e)
try:
    b = json.load(open(f"{out}/search_bench.json"))
    print("search speed: 12B full", b["nano12b_full_search"]["seconds"], "s;", "9B->7B", b["nano9b_to_7b"]["seconds"], "s")
except Exception as e:
    print("search_bench.json unreadable:", e)
PY
