#!/usr/bin/env bash
# Offline vs online distillation at the demo's scale (issue 28), on CPU (or DEVICE=cuda): the demo recipe's teacher,
# scores, search and pruned student (configs/recipes/demo.json, the same commands), then the recipe's distillation
# run online (teacher resident) and offline from stored top-k logits at k = 32, 128 and 260 (= the vocabulary: the
# dense case), each on the same number of tokens, and every student evaluated on the held-out split.
# Prints one table (held-out loss, storage per token, tokens/s) and writes RUN/offline_kd.json and .md.
# Usage: scripts/offline_kd_demo.sh [BUILD_DIR]   (RUN_DIR=runs/offline_kd, THREADS=2, DEVICE=cpu; resumable)
# TEACHER_TOKENS (983040, the recipe's) and DISTILL_TOKENS (245760) scale the run down on a busy machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
mp="$build/minipuzzle"
run="${RUN_DIR:-$root/runs/offline_kd}"
threads="${THREADS:-2}"
device="${DEVICE:-cpu}"
ks="${KS:-32 128 260}"
seq=256; micro=8; eval_tokens=65536
teacher_tokens="${TEACHER_TOKENS:-983040}"; distill_tokens="${DISTILL_TOKENS:-245760}"
windows=$((distill_tokens / seq))
mkdir -p "$run/data"
export MINIPUZZLE_PROGRESS="${MINIPUZZLE_PROGRESS:-off}"

docs=$(ls -d /usr/share/doc/python3*/html/_sources 2>/dev/null | head -1 || true)
if [ -z "$docs" ]; then
  echo "offline_kd_demo: installing the demo corpus (Debian package python3.11-doc)" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3.11-doc >/dev/null
  docs=$(ls -d /usr/share/doc/python3*/html/_sources | head -1)
fi
data="$run/data/corpus"
if [ ! -f "$data.train.tokens" ]; then
  find "$docs/tutorial" "$docs/library" "$docs/reference" -name '*.txt' | sort > "$run/data/files.txt"
  "$mp" data $(cat "$run/data/files.txt") --tokenizer byte --valid-fraction 0.02 -o "$data"
fi

common=(--device "$device" --threads "$threads")
# The demo recipe's stages up to the pruned student (same flags as configs/recipes/demo.json).
if [ ! -f "$run/teacher/final/config.json" ]; then
  "$mp" distill --from-scratch --student "$root/configs/models/demo-teacher.json" --data "$data.train" \
    --valid "$data.valid" --tokens $teacher_tokens --seq-len $seq --micro-batch $micro --lr 3e-3 --min-lr 3e-4 --warmup 10 \
    --eval-every 25 --eval-tokens 16384 --save-every 25 --seed 1 "${common[@]}" -o "$run/teacher" \
    $( [ -d "$run/teacher/checkpoint" ] && echo --resume )
fi
[ -f "$run/scores.json" ] || "$mp" score "$run/teacher/final" --calib "$data.train" --samples 64 --seq-len $seq \
  --batch-size 8 --depth-samples 16 --device "$device" -o "$run/scores.json"
[ -f "$run/search/report.json" ] || "$mp" search "$run/teacher/final" --hardware h100-80gb --context 4096 \
  --scores "$run/scores.json" --min-params 0.00095 --max-params 0.00120 --hidden 128:256:32 --ffn 256:768:64 \
  --mamba-heads 8:16:2 --mamba-head-dim 16 --attention-heads 4:8:2 --drop-total 0:1 -o "$run/search" >/dev/null
if [ ! -f "$run/pruned/config.json" ]; then
  best=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=[c for c in r['candidates'] if c.get('feasible')]; print(sorted(c, key=lambda c: c.get('rank', 1e9))[0]['id'])" "$run/search/report.json")
  "$mp" prune "$run/teacher/final" --scores "$run/scores.json" --target "$run/search/report.json#$best" -o "$run/pruned"
fi

distill_args=(--student "$run/pruned" --data "$data.train" --valid "$data.valid" --tokens $distill_tokens
  --seq-len $seq --micro-batch $micro --lr 1e-3 --min-lr 1e-4 --warmup 5 --eval-every 25 --eval-tokens 16384
  --save-every 0 --seed 2 "${common[@]}")
distill() {  # OUT, extra args...
  local out="$1"; shift
  [ -f "$out/final/config.json" ] && return 0
  rm -rf "$out"
  "$mp" distill "${distill_args[@]}" "$@" -o "$out" >/dev/null
}
distill "$run/online" --teacher "$run/teacher/final"
for k in $ks; do
  tl="$run/logits_k$k"
  # The training store holds the first `windows` windows: the run draws its windows from those (each once).
  "$mp" teacher-logits "$run/teacher/final" --data "$data.train" -o "$tl" --top-k "$k" --seq-len $seq \
    --batch-size 8 --max-windows $windows "${common[@]}" > "$run/logits_k$k.json"
  "$mp" teacher-logits "$run/teacher/final" --data "$data.valid" -o "$tl.valid" --top-k "$k" --seq-len $seq \
    --batch-size 8 --max-windows 64 "${common[@]}" > /dev/null
  distill "$run/offline_k$k" --teacher-logits "$tl" --teacher-logits-valid "$tl.valid"
done
for m in online $(for k in $ks; do echo offline_k$k; done); do
  [ -f "$run/eval_$m.json" ] || "$mp" eval "$run/$m/final" --data "$data.valid" --seq-len $seq \
    --max-tokens $eval_tokens --device "$device" > "$run/eval_$m.json"
done
[ -f "$run/eval_teacher.json" ] || "$mp" eval "$run/teacher/final" --data "$data.valid" --seq-len $seq \
  --max-tokens $eval_tokens --device "$device" > "$run/eval_teacher.json"

python3 - "$run" $ks <<'EOF'
import json, sys, statistics
run, ks = sys.argv[1], sys.argv[2:]
def log(path):
    return [json.loads(l) for l in open(path) if l.strip()]
def train_rate(m):
    steps = [j for j in log(f"{run}/{m}/log.jsonl") if "tokens_per_s" in j]
    return statistics.median(j["tokens_per_s"] for j in steps)
def last_eval(m):
    return [j for j in log(f"{run}/{m}/log.jsonl") if j.get("event") == "eval"][-1]
rows = []
teacher = json.load(open(f"{run}/eval_teacher.json"))
rows.append({"model": "teacher", "val_loss": teacher["loss"], "bytes_per_token": None, "train_tokens_per_s": None})
for m in ["online"] + [f"offline_k{k}" for k in ks]:
    e = json.load(open(f"{run}/eval_{m}.json"))
    r = {"model": m, "val_loss": e["loss"], "train_tokens_per_s": train_rate(m), "val_kl_last_eval": last_eval(m).get("val_kl")}
    if m != "online":
        s = json.loads(open(f"{run}/logits_k{m.split('_k')[1]}.json").read())
        r.update(bytes_per_token=s["bytes_per_token"], row_bytes=s["row_bytes"], teacher_logits_tokens_per_s=s["tokens_per_s"])
    rows.append(r)
online = rows[1]["val_loss"]
for r in rows[2:]:
    r["val_loss_minus_online"] = r["val_loss"] - online
json.dump(rows, open(f"{run}/offline_kd.json", "w"), indent=1)
lines = ["| model | held-out loss | minus online | bytes/token | distill tokens/s | store tokens/s |", "|---|---|---|---|---|---|"]
for r in rows:
    f = lambda v, fmt: "" if v is None else fmt.format(v)
    lines.append(f"| {r['model']} | {r['val_loss']:.4f} | {f(r.get('val_loss_minus_online'), '{:+.4f}')} | "
                 f"{f(r.get('bytes_per_token'), '{:.1f}')} | {f(r.get('train_tokens_per_s'), '{:.0f}')} | "
                 f"{f(r.get('teacher_logits_tokens_per_s'), '{:.0f}')} |")
open(f"{run}/offline_kd.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
