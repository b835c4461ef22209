#!/usr/bin/env bash
# Offline teacher logits (issue 28) on the GPU host. Run from the repo root with OUT set. Writes to $OUT:
#  offline_kd_gpu_test.txt     tests/gpu/test_sparse_kd_gpu: the CUDA sparse-KD kernel against its CPU twin (V up to
#                              2^20, k 1..V, fp32/bf16, T 1/2, CE + ignored labels), autograd, k = V against kd_loss,
#                              and its time against the dense kd_loss at 8192 x 131072, k = 128 (a JSON line)
#  offline_kd_cpu_tests.txt    the CPU tests (test_sparse_kd, test_teacher_logits)
#  offline_kd_online.json      bench_distill: one step of the ~1B student with the ~2.1B teacher resident (fused
#                              linear_kd), batch 2 x 2048
#  offline_kd_online_nofused.json  the same with kd_loss on full logits (the offline path's loss shape)
#  offline_kd_offline.json     the same step from stored top-128 logits (teacher saved, teacher-logits on CUDA,
#                              teacher freed; OfflineTeacher + sparse_kd_loss): tokens/s, peak GPU memory without the
#                              teacher, bytes/token, the teacher pass's tokens/s
#  offline_kd_summary.json     offline vs online tokens/s and peak memory; teacher forwards saved per extra student
#  offline_kd_smoke.txt        CLI on CUDA with tiny models: teacher from scratch, teacher-logits --device cuda
#                              (k = 32), distill --teacher-logits vs --teacher: both val losses printed
# About 5 minutes after the build.
set -uo pipefail
source scripts/gpu/env.sh
set +e
gpu_build test_sparse_kd_gpu test_sparse_kd test_teacher_logits bench_distill minipuzzle
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/offline_kd_gpu.txt"

timeout 300 build-gpu/tests/gpu/test_sparse_kd_gpu > "$OUT/offline_kd_gpu_test.txt" 2>&1
echo "test_sparse_kd_gpu exit $?"; grep -E "timing|passed|failed|FAILED" "$OUT/offline_kd_gpu_test.txt"
( MINIPUZZLE_PROGRESS=off timeout 300 build-gpu/tests/kernels/test_sparse_kd &&
  MINIPUZZLE_PROGRESS=off timeout 300 build-gpu/tests/distill/test_teacher_logits ) > "$OUT/offline_kd_cpu_tests.txt" 2>&1
echo "CPU tests exit $?"; grep -E "passed|failed" "$OUT/offline_kd_cpu_tests.txt"

b="build-gpu/bench/bench_distill --device cuda --batch 2 --seq 2048 --steps 4 --warmup 2"
MINIPUZZLE_PROGRESS=off timeout 300 $b > "$OUT/offline_kd_online.json" 2> "$OUT/offline_kd_online.err"
echo "online exit $?"; cat "$OUT/offline_kd_online.json"
MINIPUZZLE_PROGRESS=off timeout 300 $b --no-fused > "$OUT/offline_kd_online_nofused.json" 2> "$OUT/offline_kd_online_nofused.err"
echo "online --no-fused exit $?"; cat "$OUT/offline_kd_online_nofused.json"
store=/tmp/offline_kd_store
MINIPUZZLE_PROGRESS=off timeout 400 $b --offline-k 128 --store-dir "$store" > "$OUT/offline_kd_offline.json" 2> "$OUT/offline_kd_offline.err"
echo "offline exit $?"; cat "$OUT/offline_kd_offline.json"; tail -3 "$OUT/offline_kd_offline.err"
# The CLI on the same (saved) teacher and windows: bytes/token and tokens/s as printed by the command.
MINIPUZZLE_PROGRESS=off timeout 200 build-gpu/minipuzzle teacher-logits "$store/teacher" --data "$store/data" \
  -o "$store/cli_logits" --top-k 128 --seq-len 2048 --batch-size 2 --device cuda --logit-encoding q8 \
  | tee "$OUT/offline_kd_cli_q8.json"
rm -rf "$store"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": f"no result ({e})"}
on, nf, off = load("offline_kd_online.json"), load("offline_kd_online_nofused.json"), load("offline_kd_offline.json")
s = {"online_tokens_per_s": on.get("tokens_per_s"), "online_peak_gib": on.get("peak_memory_gib"),
     "online_nofused_tokens_per_s": nf.get("tokens_per_s"), "online_nofused_peak_gib": nf.get("peak_memory_gib"),
     "offline_tokens_per_s": off.get("tokens_per_s"), "offline_peak_gib": off.get("peak_memory_gib"),
     "offline": off.get("offline"), "errors": [x.get("error") for x in (on, nf, off) if x.get("error")]}
if on.get("tokens_per_s") and off.get("tokens_per_s"):
    s["offline_speedup_vs_online"] = off["tokens_per_s"] / on["tokens_per_s"]
    s["offline_speedup_vs_online_nofused"] = off["tokens_per_s"] / nf["tokens_per_s"] if nf.get("tokens_per_s") else None
    s["peak_memory_saved_gib"] = on["peak_memory_gib"] - off["peak_memory_gib"]
    t = (off.get("offline") or {}).get("teacher_logits_tokens_per_s")
    if t:
        # Distilling n students online costs n teacher passes inside the steps; offline costs one teacher pass.
        s["break_even_students"] = "offline wins from the first student when offline_tokens_per_s > online" \
            if off["tokens_per_s"] > on["tokens_per_s"] else \
            "1 / (1/off - 1/on) per teacher pass: %.2f students" % (1.0 / t / (1.0 / off["tokens_per_s"] - 1.0 / on["tokens_per_s"]))
json.dump(s, open(os.path.join(out, "offline_kd_summary.json"), "w"), indent=1)
print(json.dumps(s, indent=1))
PY

# CLI end to end on CUDA with tiny models on tinyshakespeare bytes.
smoke="$OUT/offline_kd_smoke"; rm -rf "$smoke"; mkdir -p "$smoke"
if [ -x build-gpu/minipuzzle ] && python3 scripts/gpu/byte_tokens.py "$smoke" train:0:400000 valid:400000:440000; then
  python3 - "$smoke" <<'PY'
import json, sys
d = sys.argv[1]
cfg = dict(model_type="nemotron_h", vocab_size=256, hidden_size=256, intermediate_size=512, hybrid_override_pattern="M*M-M-",
           num_attention_heads=4, num_key_value_heads=2, head_dim=64, mamba_num_heads=8, mamba_head_dim=64, n_groups=2,
           ssm_state_size=64, conv_kernel=4, chunk_size=64, tie_word_embeddings=False, torch_dtype="bfloat16")
json.dump(cfg, open(f"{d}/teacher_config.json", "w"))
json.dump(dict(cfg, hidden_size=128, intermediate_size=256, head_dim=32, hybrid_override_pattern="M*-"),
          open(f"{d}/student_config.json", "w"))
PY
  m=build-gpu/minipuzzle
  common="--data $smoke/train --valid $smoke/valid --seq-len 256 --micro-batch 16 --device cuda --eval-tokens 16384"
  {
    MINIPUZZLE_PROGRESS=off timeout 120 $m distill --from-scratch --student "$smoke/teacher_config.json" $common \
      --tokens 1000000 --lr 2e-3 --min-lr 2e-4 --warmup 20 --eval-every 1000 -o "$smoke/teacher" > /dev/null 2>&1
    echo "teacher exit $?"
    timeout 60 $m distill --from-scratch --student "$smoke/student_config.json" $common --tokens 4096 \
      --lr 1e-12 --min-lr 0 -o "$smoke/student0" > /dev/null 2>&1
    echo "== teacher-logits (cuda, k = 32) =="
    MINIPUZZLE_PROGRESS=off timeout 120 $m teacher-logits "$smoke/teacher/final" --data "$smoke/train" -o "$smoke/logits" \
      --top-k 32 --seq-len 256 --batch-size 16 --device cuda --max-windows 1000
    MINIPUZZLE_PROGRESS=off timeout 60 $m teacher-logits "$smoke/teacher/final" --data "$smoke/valid" \
      -o "$smoke/logits_valid" --top-k 32 --seq-len 256 --batch-size 16 --device cuda --max-windows 64
    for mode in online offline; do
      if [ $mode = online ]; then t="--teacher $smoke/teacher/final"; else
        t="--teacher-logits $smoke/logits --teacher-logits-valid $smoke/logits_valid"; fi
      MINIPUZZLE_PROGRESS=off timeout 200 $m distill $t --student "$smoke/student0/final" $common --tokens 250000 \
        --lr 2e-3 --min-lr 2e-4 --warmup 20 --alpha 0.9 --eval-every 1000 -o "$smoke/distill_$mode" > /dev/null 2>&1
      echo "distill $mode exit $?: $(grep '"eval"' "$smoke/distill_$mode/log.jsonl" | tail -1)"
    done
  } > "$OUT/offline_kd_smoke.txt" 2>&1
  cat "$OUT/offline_kd_smoke.txt"
fi
