#!/usr/bin/env bash
# Every subcommand of the CUDA build, as a user runs it, on the GPU and with --device cpu (issue 18): inspect,
# data, eval, score, search, prune, distill (then kill -9 after a checkpoint and --resume), pipeline on a tiny
# recipe, bench-hw, and the bad-input / bad-command-line exits. Each line of $OUT/cli_smoke.jsonl is one command
# with its exit code; the script fails (exit 1) when any command's exit differs from what it must be or an
# expected output is missing. Tiny seeded transformers models; about 2 minutes after the build.
set -uo pipefail
source scripts/gpu/env.sh
set +e
gpu_build minipuzzle
bin="$PWD/build-gpu/minipuzzle"
work="${SMOKE_DIR:-/tmp/mp-cli-smoke}"
rm -rf "$work"; mkdir -p "$work"
log="$OUT/cli_smoke.jsonl"; : > "$log"
failures=0
export MINIPUZZLE_PROGRESS=off

# expect CODE NAME OUTPUT_THAT_MUST_EXIST|- -- COMMAND...
expect() {
  local want="$1" name="$2" must="$3"; shift 4
  local t0=$(date +%s.%N)
  "$@" > "$work/$name.out" 2>&1
  local rc=$?
  local secs=$(python3 -c "import time;print(round(time.time()-$t0,2))")
  local ok=true
  [ "$rc" = "$want" ] || ok=false
  if [ "$must" != "-" ] && [ ! -e "$must" ]; then ok=false; fi
  printf '{"step":"%s","exit":%d,"expected_exit":%d,"seconds":%s,"ok":%s}\n' "$name" "$rc" "$want" "$secs" "$ok" >> "$log"
  if [ "$ok" != true ]; then
    failures=$((failures + 1))
    echo "FAILED $name: exit $rc (expected $want), output ${must}:"; tail -5 "$work/$name.out"
  fi
}

models="$work/models"
python3 tests/reference/make_tiny_models.py --out "$models" > "$work/make_models.log" 2>&1 || { echo "make_tiny_models failed"; tail "$work/make_models.log"; exit 1; }
teacher="$models/hybrid_g1"
corpus=../shared/data/tinyshakespeare.txt
[ -f "$corpus" ] || corpus=shared/data/tinyshakespeare.txt
[ -f "$corpus" ] || corpus=.carry/data/tinyshakespeare.txt

expect 0 data "$work/corpus.train.tokens" -- "$bin" data "$corpus" --tokenizer byte --valid-fraction 0.05 -o "$work/corpus"
# The tiny recipe (the e2e test's settings), on the GPU; its teacher (byte vocabulary) serves the commands below.
sets=()
for kv in "data=$work/corpus" device=cuda threads=4 seq_len=64 micro_batch=8 teacher_tokens=16384 \
  distill_tokens=8192 calib_samples=8 eval_tokens=4096 "teacher_config=$PWD/tests/e2e/tiny-teacher.json" \
  min_params_b=0.00007 max_params_b=0.000095 hidden_range=32:64:16 ffn_range=64:192:32 mamba_heads_range=4:8:2 \
  mamba_head_dim=16 attention_heads_range=2:4:2 drop_total=0:1; do sets+=(--set "$kv"); done
expect 0 pipeline "$work/run/report.html" -- "$bin" pipeline --config configs/recipes/demo.json --run-dir "$work/run" "${sets[@]}"
teacher="$work/run/teacher/final"
[ -f "$teacher/config.json" ] || teacher="$models/hybrid_g1"
expect 0 inspect - -- "$bin" inspect "$teacher"
expect 0 inspect_json - -- "$bin" inspect "$teacher" --json
for dev in cuda cpu; do
  expect 0 "eval_$dev" - -- "$bin" eval "$teacher" --data "$work/corpus.valid" --seq-len 64 --max-tokens 4096 --device "$dev"
  expect 0 "score_$dev" "$work/scores_$dev.json" -- "$bin" score "$teacher" --calib "$work/corpus.train" --samples 8 \
    --seq-len 64 --batch-size 4 --device "$dev" -o "$work/scores_$dev.json" --report "$work/score_report_$dev"
done
expect 0 search "$work/search/report.json" -- "$bin" search "$teacher" --hardware a10g --context 4k \
  --scores "$work/scores_cuda.json" -o "$work/search"
# prune exited 139 after writing its output on this host before issue 18; every form of target.
expect 0 prune_flags "$work/pruned_flags/config.json" -- "$bin" prune "$teacher" --scores "$work/scores_cuda.json" \
  --drop-count 1 -o "$work/pruned_flags"
expect 0 prune_report "$work/pruned/config.json" -- "$bin" prune "$teacher" --scores "$work/scores_cuda.json" \
  --target "$work/search/report.json#$(python3 -c "import json;r=json.load(open('$work/search/report.json'));print(next(c['id'] for c in r['candidates'] if c.get('feasible') and c.get('rank') == 1))" 2>/dev/null)" \
  -o "$work/pruned"
[ -f "$work/pruned/config.json" ] || cp -r "$work/pruned_flags" "$work/pruned"
expect 0 prune_dry - -- "$bin" prune "$teacher" --scores "$work/scores_cuda.json" --drop-count 1 --dry-run
for dev in cuda cpu; do
  expect 0 "distill_$dev" "$work/distill_$dev/final/config.json" -- "$bin" distill --teacher "$teacher" \
    --student "$work/pruned" --data "$work/corpus.train" --valid "$work/corpus.valid" --tokens 8192 --seq-len 64 \
    --micro-batch 4 --grad-accum 2 --save-every 4 --eval-every 8 --eval-tokens 2048 --device "$dev" -o "$work/distill_$dev"
done
# kill -9 once a checkpoint exists, then --resume to the end.
"$bin" distill --teacher "$teacher" --student "$work/pruned" --data "$work/corpus.train" --valid "$work/corpus.valid" \
  --tokens 65536 --seq-len 64 --micro-batch 4 --grad-accum 2 --save-every 4 --eval-every 1000 --eval-tokens 2048 \
  --device cuda -o "$work/distill_kill" > "$work/distill_kill.out" 2>&1 &
pid=$!
for _ in $(seq 1 600); do [ -f "$work/distill_kill/checkpoint/trainer.json" ] && break; sleep 0.1; done
kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
expect 0 distill_resume "$work/distill_kill/final/config.json" -- "$bin" distill --teacher "$teacher" \
  --student "$work/pruned" --data "$work/corpus.train" --valid "$work/corpus.valid" --tokens 65536 --seq-len 64 \
  --micro-batch 4 --grad-accum 2 --save-every 4 --eval-every 1000 --eval-tokens 2048 --device cuda --resume \
  -o "$work/distill_kill"
# bench-hw on the H100 timings the search tests fit (bench_model_serving's output format).
expect 0 bench_hw "$work/profile.json" -- "$bin" bench-hw --hardware h100-80gb \
  --timings tests/search/data/h100_serving_timings.json -o "$work/profile.json"
# Bad input and bad command lines: one line, the documented codes.
printf 'abc\0def' > "$work/binary.bin"
# Issue 18: a file that is not text is refused (one line, exit 1); raw ids are read only when named.
expect 1 binary_data_refused - -- "$bin" eval "$teacher" --data "$work/binary.bin" --device cuda
python3 -c "import numpy as np; np.fromfile('$work/corpus.valid.tokens', dtype='<u4')[:8192].astype('<u2').tofile('$work/raw_u16.bin')"
expect 0 raw_u16_eval - -- "$bin" eval "$teacher" --data "$work/raw_u16.bin" --data-format u16 --seq-len 64 --device cuda
expect 2 unknown_command - -- "$bin" foo
expect 2 unknown_command_help - -- "$bin" teacher-logits --help
expect 2 unknown_flag - -- "$bin" eval "$teacher" --data "$work/corpus.valid" --no-such-flag
expect 2 missing_value - -- "$bin" eval "$teacher" --data
expect 1 missing_checkpoint - -- "$bin" eval "$work/nope" --data "$work/corpus.valid"
expect 0 help - -- "$bin" prune --help

python3 - "$log" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if not r["ok"]]
for r in rows:
    print(f"  {r['step']:26s} exit {r['exit']:3d} (expected {r['expected_exit']})  {r['seconds']:7.2f} s  {'ok' if r['ok'] else 'FAILED'}")
print(f"cli_smoke: {len(rows) - len(bad)} passed, {len(bad)} failed")
PY
[ "$failures" = 0 ]
