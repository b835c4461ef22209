#!/usr/bin/env bash
# GPU checks of the search (issue 6), run from the repo root on the GPU host; results in $OUT:
#  search_serving.json  raw measurements (bench_model_serving): CUDA bytes allocated for a small model's
#                       weights, KV cache and Mamba state; prefill and decode step times (decode replayed from a
#                       CUDA graph, medians of 7 trials) of 14 shapes in three layer patterns, 4 of them held out
#  search_gpu.json      bench_search --gpu: those against the memory model (claim: within 5%) and the roofline
#                       fitted on 10 shapes predicting the 4 held-out ones (claim: within 15%), with the train and
#                       held-out errors per phase of the split (9-term) model and of the combined (3-term) one,
#                       plus the calibrated profile (also reproducible: minipuzzle bench-hw --hardware h100-80gb
#                       --timings search_serving.json --holdout h2560x4-MFMAF-heldout h3072x3-MFMAF-heldout
#                       h2048x4-MMF-heldout h2560x5-MAF-heldout)
#  search_bench.json    CPU speed of the search (12B full space <= 10 s; 17,472-point 9B->7B space <= 2 s) and
#                       where the 9B and 47B shapes rank
# About 2-4 minutes after the build.
set -euo pipefail
source scripts/gpu/env.sh
gpu_build bench_model_serving bench_search
set +e
build-gpu/bench/bench_model_serving > "$OUT/search_serving.json" 2> "$OUT/search_serving.stderr"
echo "bench_model_serving exit $?"; tail -3 "$OUT/search_serving.stderr"
build-gpu/bench/bench_search --gpu "$OUT/search_serving.json" > "$OUT/search_gpu.json" 2> "$OUT/search_gpu.stderr"
echo "bench_search --gpu exit $?"; tail -3 "$OUT/search_gpu.stderr"
build-gpu/bench/bench_search > "$OUT/search_bench.json" 2> "$OUT/search_bench.stderr"
echo "bench_search exit $?"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
try:
    g = json.load(open(f"{out}/search_gpu.json"))
    print("device:", g.get("device"))
    m = g.get("memory", {})
    for k, v in m.get("terms", {}).items():
        print(f"  memory {k:52s} measured {v['measured_gib']:8.4f} GiB  model {v['model_gib']:8.4f} GiB  err {100*v['relative_error']:+.2f}%")
    print("  memory within 5%:", m.get("pass_5_percent"), m.get("error", ""))
    c = g.get("calibration", {})
    print("  decode timed as:", c.get("decode_mode"), "| fit samples", c.get("fit_samples"), "held-out", c.get("held_out_samples"))
    for r in c.get("held_out", []):
        print(f"  held-out {r['label']:22s} {r['phase']:7s} B={r['batch']:<3} n={r['n']:<6} measured {r['measured_ms']:9.3f} ms"
              f"  err {100*r['relative_error']:+.1f}% (uncalibrated {100*r['uncalibrated_relative_error']:+.1f}%)")
    for name, k in (("split (9 per phase)", "calibration"), ("combined (3 terms)", "calibration_combined_form")):
        f = g.get(k, {})
        ph = f.get("by_phase", {})
        print(f"  {name:18s}: train max |err| {100*f.get('train_max_abs_relative_error', float('nan')):.1f}%"
              f" (mean {100*f.get('train_mean_abs_relative_error', float('nan')):.1f}%),"
              f" held-out max |err| {100*f.get('held_out_max_abs_relative_error', float('nan')):.1f}%"
              f" (mean {100*f.get('held_out_mean_abs_relative_error', float('nan')):.1f}%); "
              + ", ".join(f"{p}: train {100*v.get('train_max_abs_relative_error', float('nan')):.1f}% held-out "
                          f"{100*v.get('held_out_max_abs_relative_error', float('nan')):.1f}%" for p, v in ph.items()))
    print("  calibration (split): held-out within 15%:", c.get("pass_15_percent"))
    for ph in ("decode", "prefill"):
        print("  ", c.get("fit", {}).get(ph, {}).get("note"))
except Exception as e:
    print("search_gpu.json unreadable:", e)
try:
    s = json.load(open(f"{out}/search_serving.json"))
    if "errors" in s: print("  serving errors:", s["errors"])
except Exception as e:
    print("search_serving.json unreadable:", e)
try:
    b = json.load(open(f"{out}/search_bench.json"))
    print("search speed: 12B full", b["nano12b_full_search"]["seconds"], "s;", "9B->7B", b["nano9b_to_7b"]["seconds"], "s")
    print("Nano-9B-v2 stage-1 rank:", b["nano2_paper_space"]["nano9b_stage1_rank"], "of", b["nano2_paper_space"]["feasible"],
          "| Nemotron-H-47B:", b["minipuzzle_56b_to_47b"]["h47b_stage1_rank"], "of", b["minipuzzle_56b_to_47b"]["feasible"])
except Exception as e:
    print("search_bench.json unreadable:", e)
PY
