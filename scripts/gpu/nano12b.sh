#!/usr/bin/env bash
# GPU host: the 12B -> 9B job at its true size, step by step (issue 19). A random-weight Nemotron Nano 12B v2
# is written by transformers (configs/models/nemotron-nano-12b-v2.json, bf16, 5 GB shards: 24.6 GB), then
#   make -> inspect -> score (and score --max-gpu-memory 16GiB, when the binary has that flag) -> search
#   (--config nano2-12b-to-9b --scores) -> cp -r of the parent (timed, then deleted) -> prune to the search's
#   9B reference shape (--threads 1, writeback started early, then the default) -> eval -> transformers reload with a logits check.
# Each step prints one JSON line (scripts/gpu/run_step.py): step, seconds, exit, peak host RSS, peak GPU memory
# over the step; all of them go to $OUT/nano12b_steps.jsonl and a summary (prune vs cp ratio, the search's
# answer, the logits check) to $OUT/nano12b_summary.json, printed last.
#
# Disk (64 GB on the GPU host): the parent (24.6 GB) and its cp copy (24.6 GB) exist together only while cp is
# timed; the copy is deleted before pruning, so at most parent + copy = 49 GB, then parent + pruned = 43 GB.
# Everything under $NANO12B_WORK is removed at the end (KEEP=1 keeps it).
#
# Knobs (environment): NANO12B_WORK (default /tmp/nano12b), NANO12B_DEVICE (cuda), NANO12B_BIN (a built
# minipuzzle: skips the CUDA build), NANO12B_PYTHON (python3), NANO12B_TINY=1 (a 62-layer model of the 12B's
# pattern but tiny widths, for testing this script's logic on a CPU machine: search with the default space,
# the 9B's pattern at tiny widths as the search's reference), NANO12B_SCORE_ARGS (default
# "--samples 8 --seq-len 4096 --batch-size 4 --depth-samples 2"), NANO12B_STOP_AFTER=score (stop after the
# scoring steps; with KEEP_AS_TEACHER=DIR the parent is moved there for scripts/gpu/distill_9b.sh to reuse).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root="$(pwd)"
if [ -n "${NANO12B_BIN:-}" ]; then
  export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
  mp="$NANO12B_BIN"
else
  source scripts/gpu/env.sh
  t0=$(date +%s)
  gpu_build minipuzzle > "$OUT/nano12b_build.log" 2>&1 || { tail -30 "$OUT/nano12b_build.log"; exit 1; }
  echo "{\"step\": \"build\", \"seconds\": $(( $(date +%s) - t0 )), \"note\": \"not part of the job\"}"
  mp="$root/build-gpu/minipuzzle"
fi
[ -x "$mp" ] || { echo "no minipuzzle binary at $mp" >&2; exit 1; }
py="${NANO12B_PYTHON:-python3}"
device="${NANO12B_DEVICE:-cuda}"
work="${NANO12B_WORK:-/tmp/nano12b}"
tiny="${NANO12B_TINY:-0}"
score_args=(${NANO12B_SCORE_ARGS:---samples 8 --seq-len 4096 --batch-size 4 --depth-samples 2})
export MINIPUZZLE_PROGRESS=off
rm -rf "$work"; mkdir -p "$work"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
steps="$OUT/nano12b_steps.jsonl"; : > "$steps"
df -h "$work" | tail -1 | awk '{print "{\"disk_free\": \"" $4 "\", \"filesystem\": \"" $1 "\"}"}'

# step NAME CMD...: runs it through run_step.py; its JSON line goes to stdout and $steps. Never stops the script.
step() {
  local name="$1"; shift
  # run_step.py exits with the step's code; under set -eo pipefail that would end the script at the first failing
  # step (it did, at score_16gib on the H200), so the code is read back from the JSON line instead.
  "$py" scripts/gpu/run_step.py "$name" "$work/$name.log" -- "$@" | tee -a "$steps" || true
  local rc; rc=$(tail -1 "$steps" | "$py" -c 'import json,sys;print(json.loads(sys.stdin.read())["exit"])')
  [ "$rc" = 0 ] || { echo "step $name failed (exit $rc); last lines of its log:" >&2; tail -15 "$work/$name.log" >&2; }
  return 0
}
ok() { [ "$(grep "\"step\": \"$1\"" "$steps" | tail -1 | "$py" -c 'import json,sys;print(json.loads(sys.stdin.read())["exit"])')" = 0 ]; }

# ---- the model
config="$root/configs/models/nemotron-nano-12b-v2.json"
if [ "$tiny" = 1 ]; then
  config="$work/tiny-12b-pattern.json"
  "$py" - "$root/configs/models/nemotron-nano-12b-v2.json" "$config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=128, intermediate_size=512, num_attention_heads=16, head_dim=16, mamba_num_heads=16,
         mamba_head_dim=16, ssm_state_size=16, vocab_size=512, chunk_size=32)
c["_source"] = "the 12B's layer pattern at tiny widths (nano12b.sh NANO12B_TINY=1)"
json.dump(c, open(sys.argv[2], "w"), indent=1)
# The 9B's layer pattern at 3/4 of the tiny widths: the search's reference, as the 9B is for the real model.
n = json.load(open(sys.argv[1].replace("12b", "9b")))
c.update(hybrid_override_pattern=n["hybrid_override_pattern"], num_hidden_layers=n["num_hidden_layers"],
         hidden_size=96, intermediate_size=384)
json.dump(c, open(sys.argv[2].replace("12b", "9b"), "w"), indent=1)
PY
fi
parent="$work/parent"
step make "$py" scripts/gpu/make_nemotron_h.py "$config" "$parent" --device "$device" --shard 5GB
ok make || exit 1
cat "$work/make.log" | tail -1
step inspect "$mp" inspect "$parent" --json

# ---- calibration / evaluation tokens: tinyshakespeare as bytes, else seeded random ids below 256
"$py" - "$work" <<'PY'
import json, os, struct, sys
import numpy as np
out = sys.argv[1]
src = next((p for p in ("../shared/data/tinyshakespeare.txt", "shared/data/tinyshakespeare.txt",
                        ".carry/data/tinyshakespeare.txt") if os.path.exists(p)), None)
ids = (np.frombuffer(open(src, "rb").read(), dtype=np.uint8) if src else
       np.random.default_rng(0).integers(0, 256, 1 << 20)).astype("<u4")
ids.tofile(f"{out}/calib.tokens")
with open(f"{out}/calib.index", "wb") as f:
    f.write(b"MPTIDX1\0" + struct.pack("<Q", 1) + struct.pack("<QQ", 0, len(ids)))
json.dump({"format": "minipuzzle-tokens", "version": 1, "tokenizer": {"kind": "byte_level", "path": "", "sha256": ""},
           "vocab_size": 256, "eos_id": None, "eos_appended": False, "num_tokens": int(len(ids)), "num_documents": 1,
           "sources": [os.path.basename(src) if src else "random"], "split": "calib", "dtype": "uint32_le"},
          open(f"{out}/calib.json", "w"))
PY
calib="$work/calib"

# ---- score, resident and (when the binary has the flag) within a 16 GiB GPU budget
step score "$mp" score "$parent" --calib "$calib" "${score_args[@]}" --device "$device" -o "$work/scores.json"
if "$mp" score --help 2>&1 | grep -q -- --max-gpu-memory; then
  step score_16gib "$mp" score "$parent" --calib "$calib" "${score_args[@]}" --device "$device" \
    --max-gpu-memory 16GiB -o "$work/scores_16gib.json"
else
  echo '{"step": "score_16gib", "skipped": "this minipuzzle has no --max-gpu-memory"}' | tee -a "$steps"
fi

if [ "${NANO12B_STOP_AFTER:-}" = score ]; then
  # Only the scoring steps (the streaming measurement); KEEP_AS_TEACHER=DIR leaves the parent there for
  # distill_9b.sh (its TEACHER) on the same warm machine.
  if [ -n "${KEEP_AS_TEACHER:-}" ]; then rm -rf "$KEEP_AS_TEACHER"; mv "$parent" "$KEEP_AS_TEACHER"; touch "$KEEP_AS_TEACHER/.complete"; fi
  grep -h '"score' "$work"/score*.log 2>/dev/null | tail -4 || true  # no such line is no failure of the job
  exit 0
fi

# ---- search: the paper's width search at 56 layers, with the measured scores
scores_flag=(); ok score && scores_flag=(--scores "$work/scores.json")
if [ "$tiny" = 1 ]; then
  step search "$mp" search "$parent" --hardware a10g --context 128k --reference "$work/tiny-9b-pattern.json" \
    "${scores_flag[@]}" -o "$work/search"
else
  step search "$mp" search "$parent" --config nano2-12b-to-9b "${scores_flag[@]}" -o "$work/search"
fi
# The prune target: the 9B reference shape of the search report (its dropped layers and widths), else flags.
target=()
if ok search; then
  id=$("$py" -c '
import json, sys
r = json.load(open(sys.argv[1]))
refs = [x for x in r.get("references", []) if x.get("reachable") and x.get("candidate")]
print(refs[0]["candidate"]["id"] if refs else "")' "$work/search/report.json")
  [ -n "$id" ] && target=(--target "$work/search/report.json#$id")
fi
if [ ${#target[@]} = 0 ]; then
  if [ "$tiny" = 1 ]; then target=(--hidden 96 --ffn 384 --drop-count 6)
  else target=(--hidden 4480 --ffn 15680 --drop-count 6); fi
fi
echo "{\"prune_target\": \"${target[*]}\"}"

# ---- cp -r of the parent beside prune (the parent's dirty pages flushed first; the copy deleted before pruning)
sync "$parent"/* 2>/dev/null || sync
step cp bash -c "cp -r '$parent' '$work/copy'"
t0=$(date +%s.%N); sync "$work"/copy/*; sync_s=$("$py" -c "import sys;print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$(date +%s.%N)" "$t0")  # the GPU host has no bc
echo "{\"step\": \"cp_sync\", \"seconds\": $sync_s}" | tee -a "$steps"
rm -rf "$work/copy"
prune_scores=(); ok score && prune_scores=(--scores "$work/scores.json")
step prune_threads1 "$mp" prune "$parent" "${prune_scores[@]}" "${target[@]}" --threads 1 -o "$work/pruned1" \
  --summary-json "$work/prune_summary.json"
rm -rf "$work/pruned1"
MINIPUZZLE_WRITEBACK=early step prune_early_writeback "$mp" prune "$parent" "${prune_scores[@]}" "${target[@]}" \
  -o "$work/pruned_kw" --summary-json "$work/prune_summary.json"
rm -rf "$work/pruned_kw"
step prune "$mp" prune "$parent" "${prune_scores[@]}" "${target[@]}" -o "$work/pruned" \
  --summary-json "$work/prune_summary.json"
ok prune || exit 1

# ---- eval (4 x 4096 tokens; tiny: 4 x 256) and the logits of one short sequence for the reload check
seq=4096; [ "$tiny" = 1 ] && seq=256
step eval "$mp" eval "$work/pruned" --data "$calib" --seq-len $seq --max-tokens $((4 * seq)) --device "$device"
step eval_logits "$mp" eval "$work/pruned" --data "$calib" --seq-len 256 --max-tokens 256 --device "$device" \
  --logits-out "$work/logits.safetensors"
if ok eval_logits; then
  step reload "$py" scripts/gpu/reload_check.py "$work/pruned" "$work/logits.safetensors" --device "$device"
fi

# ---- summary
"$py" - "$steps" "$work" "$OUT/nano12b_summary.json" "$tiny" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
work, out, tiny = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
by = {r["step"]: r for r in rows}
def last_json(name):
    try:
        lines = [l for l in open(os.path.join(work, name + ".log")) if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
def secs(name): return by.get(name, {}).get("seconds")
s = {"tiny": tiny, "steps": rows, "make": last_json("make"), "eval": last_json("eval"), "reload": last_json("reload")}
cp, cps, pr, pr1, prk = secs("cp"), secs("cp_sync"), secs("prune"), secs("prune_threads1"), secs("prune_early_writeback")
if cp and pr:
    s["prune_vs_cp"] = {"cp_s": cp, "cp_plus_sync_s": cp + (cps or 0), "prune_s": pr, "prune_threads1_s": pr1,
                        "prune_early_writeback_s": prk,
                        "ratio": pr / cp, "ratio_vs_cp_plus_sync": pr / (cp + (cps or 0)),
                        "parallel_speedup": (pr1 / pr) if pr1 else None,
                        "prune_peak_rss_gib": by["prune"]["peak_rss_gib"],
                        "target_ratio": 1.3, "target_rss_gib": 2 * 1e9 / 2**30}
try:
    r = json.load(open(os.path.join(work, "search", "report.json")))
    best = next((c for c in r["candidates"] if c.get("rank") == 1), None)
    s["search"] = {"enumerated": r["enumerated"], "feasible": r["feasible"], "ranking": r.get("ranking"),
                   "best": best and {"id": best["id"], "params_b": best["params"]["total"] / 1e9},
                   "references": [{"name": x["name"], "reachable": x["reachable"], "note": x["note"],
                                   "feasible": x.get("candidate", {}).get("feasible"),
                                   "rank": x.get("candidate", {}).get("rank")} for x in r.get("references", [])]}
except (OSError, ValueError, KeyError) as e:
    s["search"] = {"error": str(e)}
try:
    p = json.load(open(os.path.join(work, "prune_summary.json")))
    s["pruned_parameters_b"] = p["parameters"]["after"] / 1e9
except (OSError, ValueError, KeyError):
    pass
json.dump(s, open(out, "w"), indent=1)
print("steps:", ", ".join(f"{r['step']} {r.get('seconds')}s" + ("" if r.get("exit", 0) == 0 else f" (exit {r['exit']})")
                          for r in rows))
for r in rows:
    if r.get("peak_gpu_gib") is not None or r.get("peak_rss_gib") is not None:
        print(f"  {r['step']:>16}: peak RSS {r.get('peak_rss_gib')} GiB, peak GPU {r.get('peak_gpu_gib')} GiB")
if "prune_vs_cp" in s:
    q = s["prune_vs_cp"]
    print(f"prune {q['prune_s']:.1f} s vs cp -r {q['cp_s']:.1f} s = {q['ratio']:.2f}x (target <= 1.3x); "
          f"vs cp + sync {q['cp_plus_sync_s']:.1f} s = {q['ratio_vs_cp_plus_sync']:.2f}x; "
          f"1 thread {q['prune_threads1_s']} s; early writeback {q['prune_early_writeback_s']} s; peak RSS {q['prune_peak_rss_gib']:.2f} GiB (target <= 1.86 GiB)")
print("search:", json.dumps(s.get("search", {}).get("references")), "best", json.dumps(s.get("search", {}).get("best")))
print("reload check:", json.dumps(s.get("reload")))
PY
