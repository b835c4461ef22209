#!/usr/bin/env bash
# GPU host: scoring within a memory budget (issue 19), at a published shape with random weights made on the GPU
# (default Nemotron Nano 12B v2; SCORE_CONFIG=configs/models/NAME.json for another, SCORE_CHECKPOINT=DIR for a real
# checkpoint). Prints one JSON line per measurement, then the summary (also in $OUT/score_budget.jsonl):
#   resident_peak_above_weights_gib   device peak beyond the weights, width and depth scoring (goal: <= 8)
#   depth_new_over_old                all one-layer depth criteria, new / old time (goal: <= 0.5); old extrapolated
#                                     from SCORE_OLD_LAYERS patterns (each old pattern costs the same)
#   new_vs_old_max_rel_diff           criteria of those layers, new against old (bf16: ~1e-3 expected)
#   stream_throughput_vs_resident     width + depth under --max-gpu-memory SCORE_BUDGET (default 16 GiB) (goal >= 0.6)
#   streamed_vs_resident_max_rel_diff streamed scores against resident ones (expected 0 or bf16 rounding)
#   stream_width_s_per_layer          per-layer time of the streamed width pass (the 56B estimate below uses it)
# Then the CPU tests of the same code and a CLI run of `score --max-gpu-memory` on a fixture model, and a 56B
# estimate from the measured rates (per-layer work scaled by parameters per layer; host RAM = bf16 weights).
# About 3-4 minutes on one H200 at 12B shape once built (a cold build-gpu adds several minutes: build first with
# `source scripts/gpu/env.sh && gpu_build minipuzzle bench_score_budget test_depth` if needed).
source scripts/gpu/env.sh
gpu_build minipuzzle bench_score_budget test_depth > "$OUT/score_budget_build.log" 2>&1 || true
tail -5 "$OUT/score_budget_build.log"
[ -d build-gpu/fixtures/models/hybrid_g1 ] ||
  python3 tests/reference/make_tiny_models.py --out build-gpu/fixtures/models > /dev/null 2>&1
MINIPUZZLE_PROGRESS=off ./build-gpu/tests/importance/test_depth > "$OUT/score_budget_test_depth.txt" 2>&1 &&
  echo "test_depth passed" || { echo "test_depth FAILED"; tail -30 "$OUT/score_budget_test_depth.txt"; }
src=(--config "${SCORE_CONFIG:-configs/models/nemotron-nano-12b-v2.json}")
[ -n "${SCORE_CHECKPOINT:-}" ] && src=(--checkpoint "$SCORE_CHECKPOINT")
MINIPUZZLE_PROGRESS=off timeout 420 ./build-gpu/bench/bench_score_budget "${src[@]}" \
  --samples "${SCORE_SAMPLES:-8}" --depth-samples "${SCORE_DEPTH_SAMPLES:-4}" --seq "${SCORE_SEQ:-4096}" \
  --batch "${SCORE_BATCH:-4}" --budget "${SCORE_BUDGET:-16}" --old-layers "${SCORE_OLD_LAYERS:-6}" \
  | tee "$OUT/score_budget.jsonl" || echo "bench_score_budget did not finish (exit $?)"
# CLI: --max-gpu-memory on a fixture model against the resident run. The budget is the smallest that works, as the
# CLI itself states when given too little (1 MiB): every layer streamed, one batch's activations beside them.
m=build-gpu/fixtures/models/hybrid_g1
echo '{}' > "$OUT/score_budget_cli.json"
if [ -d "$m" ] && [ -x build-gpu/minipuzzle ]; then
  python3 - /tmp/score_budget_calib 97 <<'PY'
import json, struct, sys
import numpy as np
out, vocab = sys.argv[1], int(sys.argv[2])
ids = np.random.default_rng(0).integers(0, vocab, 20000).astype("<u4")
ids.tofile(out + ".tokens")
open(out + ".index", "wb").write(b"MPTIDX1\0" + struct.pack("<Q", 1) + struct.pack("<QQ", 0, len(ids)))
json.dump({"format": "minipuzzle-tokens", "version": 1, "tokenizer": {"kind": "byte_level", "path": "", "sha256": ""},
           "vocab_size": vocab, "eos_id": None, "eos_appended": False, "num_tokens": len(ids), "num_documents": 1,
           "sources": ["random"], "split": "calib", "dtype": "uint32_le"}, open(out + ".json", "w"))
PY
  cli() {  # cli NAME [extra args]
    local name=$1; shift
    MINIPUZZLE_PROGRESS=off ./build-gpu/minipuzzle score "$m" --calib /tmp/score_budget_calib.tokens --tokenizer byte \
      --samples 8 --seq-len 64 --batch-size 4 --device cuda -o "$OUT/score_budget_cli_$name.json" "$@" \
      > "$OUT/score_budget_cli_$name.log" 2>&1
  }
  cli resident || { echo "score (resident) FAILED"; tail -5 "$OUT/score_budget_cli_resident.log"; }
  cli probe --max-gpu-memory 1MiB && echo "score --max-gpu-memory 1MiB unexpectedly succeeded"
  least=$(grep -o 'smallest budget that works is [0-9]* bytes' "$OUT/score_budget_cli_probe.log" | grep -o '[0-9][0-9]*' | head -1 || true)
  grep -h "too small" "$OUT/score_budget_cli_probe.log" | head -1 || true
  if [ -n "$least" ]; then
    cli streamed --max-gpu-memory "$least" || { echo "score (streamed, $least bytes) FAILED"; tail -5 "$OUT/score_budget_cli_streamed.log"; }
    grep -h "streaming\|copies\|per forward" "$OUT/score_budget_cli_streamed.log" || true
  fi
  python3 - "$OUT/score_budget_cli_resident.json" "$OUT/score_budget_cli_streamed.json" "${least:-0}" \
    "$OUT/score_budget_cli.json" <<'PY' || true
import json, sys
r = {"cli_budget_bytes": int(sys.argv[3])}
try:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
    worst = 0.0
    for la, lb in zip(a["layers"], b["layers"]):
        for k, v in la.get("depth", {}).items():
            worst = max(worst, abs(v - lb["depth"][k]) / max(abs(v), 1e-12))
    r["cli_streamed_vs_resident_depth_max_rel_diff"] = worst
except Exception as e:
    r["cli_error"] = str(e)
print(json.dumps(r))
json.dump(r, open(sys.argv[4], "w"))
PY
fi
# The summary line comes last whatever failed above: the bench's summary (or the lines it printed, if it died),
# the CLI check, and the 56B estimate where the figures exist.
python3 - "$OUT/score_budget.jsonl" configs/models/nemotron-h-56b.json "$OUT/score_budget_cli.json" <<'PY' ||
import json, os, sys
rows = []
for l in (open(sys.argv[1]) if os.path.exists(sys.argv[1]) else []):
    try:
        if l.strip().startswith("{"):
            rows.append(json.loads(l))
    except ValueError:
        pass
try:
    cli = json.load(open(sys.argv[3]))
except Exception:
    cli = {}
s = next((r for r in rows if r.get("mode") == "summary"), None)
if not s:
    out = {"summary_missing": "bench_score_budget printed no summary (crashed or timed out)",
           "modes_printed": [r.get("mode") for r in rows]}
    for r in rows:
        for k in ("seconds", "peak_allocated_above_weights_gib", "error"):
            if k in r:
                out[r.get("mode", "?") + "_" + k] = r[k]
    print(json.dumps(out | cli))
    sys.exit(0)
c = json.load(open(sys.argv[2]))
# 56B estimate from the measured per-layer rate: streamed width time per layer and sample scales with the layer's
# weights (FLOPs per token ~ 2 x parameters); host RAM = the bf16 weights (page-locked copies).
layers56 = len(c["hybrid_override_pattern"])
params56 = 56e9
params_here = s["weights_gib"] * 2**30 / 2
scale = (params56 / layers56) / (params_here / s["layers"])
per_layer_sample = s.get("stream_width_s_per_layer_per_sample")
L = s["layers"]
sweep = lambda n: n * (n - 1) / 2 + 2 * n  # layer forwards of the one-layer depth criteria per batch (+ reference)
est = {"nemotron_h_56b_host_ram_gib": params56 * 2 / 2**30,
       "nemotron_h_56b_width_s_per_1024_samples_estimate": per_layer_sample * scale * layers56 * 1024 if per_layer_sample else None,
       "nemotron_h_56b_depth_s_estimate": s["streamed_depth_s"] * scale * sweep(layers56) / sweep(L) if "streamed_depth_s" in s else None}
keys = ["weights_gib", "resident_peak_above_weights_gib", "resident_width_peak_gib", "resident_depth_peak_gib", "resident_goal_gib", "resident_width_s", "resident_depth_s",
        "old_depth_s_estimated", "depth_new_over_old", "new_vs_old_max_rel_diff", "budget_gib", "activation_estimate_gib",
        "budget_weights_gib", "stream_samples_per_forward", "stream_resident_layers",
        "stream_pinned", "streamed_width_s", "streamed_depth_s", "streamed_peak_reserved_gib",
        "stream_throughput_vs_resident", "stream_width_throughput_vs_resident", "stream_copy_gib_per_s",
        "streamed_vs_resident_max_rel_diff", "stream_width_s_per_layer"]
errors = {k: v for k, v in s.items() if k.endswith("_error")}
print(json.dumps({k: s.get(k) for k in keys} | est | errors | cli))
PY
  echo '{"summary_missing": "the summary script failed"}'
