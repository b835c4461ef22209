#!/usr/bin/env bash
# Issue 27's evidence at demo scale: nested budgets from ONE elastic distillation against separately pruned and
# distilled twins of the same shapes. Usage: scripts/elastic_demo.sh [BUILD_DIR] (env: RUN_DIR, DEVICE, THREADS,
# TEACHER_TOKENS, TOKENS). Re-running skips finished steps.
#
#   data     tinyshakespeare (shared/data), byte-level, 5% held out
#   teacher  configs/models/demo-teacher.json from scratch on TEACHER_TOKENS
#   score    importance on 32 calibration windows
#   nest     the teacher with every axis in importance order + the budgets of configs/elastic/demo.json
#   elastic  ONE run: distill --elastic, TOKENS data tokens, every budget every step (teacher once per batch)
#   slices   each budget sliced from the elastic run's final checkpoint
#   twins    per budget: prune the teacher to that shape (same scores) + distill on TOKENS tokens
#   table    held-out perplexity (minipuzzle eval, the same windows for every model) -> RUN_DIR/table.md
# Total data tokens: elastic TOKENS; twins 2 x TOKENS. Student forward/backward passes are equal (2 x TOKENS).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
mp="$build/minipuzzle"
run="${RUN_DIR:-$root/runs/elastic_demo}"
device="${DEVICE:-cpu}"
threads="${THREADS:-2}"
teacher_tokens="${TEACHER_TOKENS:-245760}"
tokens="${TOKENS:-98304}"
budgets="$root/configs/elastic/demo.json"
seq=256
mb=8
mkdir -p "$run"
export MINIPUZZLE_PROGRESS=off
t() { local name=$1; shift; local s=$(date +%s); "$@"; echo "$name $(( $(date +%s) - s ))" >> "$run/times.txt"; }

[ -f "$run/data/corpus.train.tokens" ] || { mkdir -p "$run/data";
  t data "$mp" data "${DATA_TEXT:-$root/../shared/data/tinyshakespeare.txt}" --tokenizer byte --valid-fraction 0.05 -o "$run/data/corpus"; }
data="$run/data/corpus"
[ -f "$run/teacher/final/config.json" ] || t teacher "$mp" distill --from-scratch --student "$root/configs/models/demo-teacher.json" \
  --data "$data.train" --valid "$data.valid" --tokens "$teacher_tokens" --seq-len $seq --micro-batch $mb \
  --lr 3e-3 --min-lr 3e-4 --warmup 10 --eval-every 60 --eval-tokens 16384 --save-every 60 --device "$device" \
  --threads "$threads" --seed 1 -o "$run/teacher" --resume > "$run/teacher.log" 2>&1
[ -f "$run/scores.json" ] || t score "$mp" score "$run/teacher/final" --calib "$data.train" --samples 32 --seq-len $seq \
  --batch-size 8 --depth-samples 16 --device "$device" -o "$run/scores.json" > "$run/score.log" 2>&1
[ -f "$run/nested/config.json" ] || t nest "$mp" nest "$run/teacher/final" --scores "$run/scores.json" --budgets "$budgets" \
  -o "$run/nested"

distill() {  # distill STUDENT OUT [extra...]
  local student=$1 out=$2; shift 2
  "$mp" distill --teacher "$run/teacher/final" --student "$student" --data "$data.train" --valid "$data.valid" \
    --tokens "$tokens" --seq-len $seq --micro-batch $mb --lr 1e-3 --min-lr 1e-4 --warmup 5 --eval-every 30 \
    --eval-tokens 16384 --save-every 30 --device "$device" --threads "$threads" --seed 2 -o "$out" --resume "$@" \
    > "$out.log" 2>&1
}
[ -f "$run/elastic/final/config.json" ] || t elastic distill "$run/nested" "$run/elastic" --elastic "$budgets"

names=$(python3 -c "import json,sys; print(' '.join(b['name'] for b in json.load(open(sys.argv[1]))['budgets']))" "$budgets")
for b in $names; do
  [ -f "$run/slice_$b/config.json" ] || "$mp" slice "$run/elastic/final" --budget "$b" -o "$run/slice_$b"
  [ -f "$run/slice0_$b/config.json" ] || "$mp" slice "$run/nested" --budget "$b" -o "$run/slice0_$b"
  shape=$(python3 -c "import json,sys; print(json.dumps([x['shape'] for x in json.load(open(sys.argv[1]))['budgets'] if x['name']==sys.argv[2]][0]))" "$budgets" "$b")
  [ -f "$run/pruned_$b/config.json" ] || "$mp" prune "$run/teacher/final" --scores "$run/scores.json" --target "$shape" \
    -o "$run/pruned_$b"
  [ -f "$run/twin_$b/final/config.json" ] || t "twin_$b" distill "$run/pruned_$b" "$run/twin_$b"
done

ppl() { "$mp" eval "$1" --data "$data.valid" --seq-len $seq --device "$device" 2>/dev/null | python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['perplexity'])"; }
params() { "$mp" inspect "$1" --json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print(j['parameters']['total'])"; }
{
  echo "| model | parameters | held-out perplexity | before distillation | data tokens | wall s |"
  echo "|---|---|---|---|---|---|"
  echo "| teacher | $(params "$run/teacher/final") | $(ppl "$run/teacher/final") | | $teacher_tokens | $(awk '$1=="teacher"{print $2}' "$run/times.txt") |"
  el_s=$(awk '$1=="elastic"{print $2}' "$run/times.txt")
  for b in $names; do
    echo "| $b, nested (one elastic run) | $(params "$run/slice_$b") | $(ppl "$run/slice_$b") | $(ppl "$run/slice0_$b") | $tokens (shared) | $el_s (shared) |"
    echo "| $b, separate twin | $(params "$run/twin_$b/final") | $(ppl "$run/twin_$b/final") | $(ppl "$run/pruned_$b") | $tokens | $(awk -v n="twin_$b" '$1==n{print $2}' "$run/times.txt") |"
  done
} | tee "$run/table.md"
