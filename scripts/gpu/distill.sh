#!/usr/bin/env bash
# Distillation trainer (issue 8) on the GPU host. Run from the repo root with OUT set. Writes to $OUT:
#  distill_bench_minipuzzle.json  one distillation step (train_step: teacher fwd, student fwd + linear_kd, backward,
#                                 clip, AdamW on fp32 masters) for a ~1.0B student and a ~2.1B teacher, random
#                                 Nemotron-H weights in bf16, batch 2 x 2048 tokens: tokens/s and peak memory
#  distill_bench_pytorch.json     the same step in PyTorch (transformers NemotronH, fp32 student under bf16
#                                 autocast, bf16 teacher, eager KD on full logits, torch AdamW) on the same configs
#  distill_bench_nofused.json     minipuzzle with --no-fused (kd_loss on full logits), to show what linear_kd saves
#  distill_bench_ckpt.json        minipuzzle with --activation-checkpointing (each student layer recomputed in
#                                 backward), batch 2 x 2048: peak memory and tokens/s beside the plain step
#  distill_gpu_test.txt           tests/gpu/test_distill_gpu: checkpointed vs plain step on CUDA bf16 (Mamba kernels
#                                 recomputed): loss, every gradient, CUDA memory kept for backward and peak
#  distill_summary.json           speed-up and memory ratio (issue's goal: >= 1.5x the PyTorch loop at <= its memory);
#                                 activation checkpointing: peak memory with/without, slowdown, loss agreement
#  distill_gpu_smoke.txt          `minipuzzle distill` on CUDA with tiny models on tinyshakespeare bytes: a teacher
#                                 from scratch, then a student distilled from it (val loss and KL must fall)
#  distill_cpu_tests.txt          ctest of the distill CPU tests (units, activation checkpointing, kill -9 resume,
#                                 SIGTERM, two-process gloo)
# About 4 minutes after the build.
set -uo pipefail
source scripts/gpu/env.sh
set +e
gpu_build bench_distill test_distill_units test_distill_checkpointing test_distill_gpu
gpu_build minipuzzle test_distill_cli
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/distill_gpu.txt"

cfg="$OUT/distill_configs"
timeout 300 build-gpu/bench/bench_distill --device cuda --batch 2 --seq 2048 --steps 4 --warmup 2 --config-dir "$cfg" \
  > "$OUT/distill_bench_minipuzzle.json" 2> "$OUT/distill_bench_minipuzzle.err"
echo "bench_distill exit $?"; cat "$OUT/distill_bench_minipuzzle.json"; tail -3 "$OUT/distill_bench_minipuzzle.err"
timeout 400 python3 bench/bench_distill_torch.py --config-dir "$cfg" --batch 2 --seq 2048 --steps 4 --warmup 2 \
  > "$OUT/distill_bench_pytorch.json" 2> "$OUT/distill_bench_pytorch.err"
echo "pytorch bench exit $?"; cat "$OUT/distill_bench_pytorch.json"; tail -3 "$OUT/distill_bench_pytorch.err"
if grep -q '"error"' "$OUT/distill_bench_pytorch.json" 2>/dev/null || [ ! -s "$OUT/distill_bench_pytorch.json" ]; then
  # The PyTorch loop did not fit (full logits + transformers' reference Mamba path): compare both at batch 1.
  echo "PyTorch loop failed at batch 2: both rerun at batch 1 (the summary then compares those)"
  mv "$OUT/distill_bench_minipuzzle.json" "$OUT/distill_bench_minipuzzle_b2.json"
  mv "$OUT/distill_bench_pytorch.json" "$OUT/distill_bench_pytorch_b2.json"
  timeout 200 build-gpu/bench/bench_distill --device cuda --batch 1 --seq 2048 --steps 4 --warmup 2 \
    > "$OUT/distill_bench_minipuzzle.json" 2>> "$OUT/distill_bench_minipuzzle.err"
  timeout 300 python3 bench/bench_distill_torch.py --config-dir "$cfg" --batch 1 --seq 2048 --steps 4 --warmup 2 \
    > "$OUT/distill_bench_pytorch.json" 2>> "$OUT/distill_bench_pytorch.err"
  cat "$OUT/distill_bench_minipuzzle.json" "$OUT/distill_bench_pytorch.json"
fi
timeout 200 build-gpu/bench/bench_distill --device cuda --batch 2 --seq 2048 --steps 3 --warmup 1 --no-fused \
  > "$OUT/distill_bench_nofused.json" 2> "$OUT/distill_bench_nofused.err"
echo "bench_distill --no-fused exit $?"; cat "$OUT/distill_bench_nofused.json"
timeout 120 build-gpu/tests/gpu/test_distill_gpu > "$OUT/distill_gpu_test.txt" 2>&1
echo "test_distill_gpu exit $?"; grep -E "checkpointed|passed|failed" "$OUT/distill_gpu_test.txt"
timeout 200 build-gpu/bench/bench_distill --device cuda --batch 2 --seq 2048 --steps 3 --warmup 1 --activation-checkpointing \
  > "$OUT/distill_bench_ckpt.json" 2> "$OUT/distill_bench_ckpt.err"
echo "bench_distill --activation-checkpointing exit $?"; cat "$OUT/distill_bench_ckpt.json"; tail -3 "$OUT/distill_bench_ckpt.err"

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(name):
    try:
        return json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": f"no result ({e})"}
mp, pt, nf = load("distill_bench_minipuzzle.json"), load("distill_bench_pytorch.json"), load("distill_bench_nofused.json")
ck = load("distill_bench_ckpt.json")
# The plain step at batch 2 (kept under the _b2 name when the PyTorch loop needed the batch-1 fallback).
plain2 = load("distill_bench_minipuzzle_b2.json") if os.path.exists(os.path.join(out, "distill_bench_minipuzzle_b2.json")) else mp
s = {"student_params": mp.get("student_params"), "teacher_params": mp.get("teacher_params"),
     "tokens_per_step": mp.get("tokens_per_step"),
     "minipuzzle_tokens_per_s": mp.get("tokens_per_s"), "minipuzzle_peak_gib": mp.get("peak_memory_gib"),
     "minipuzzle_nofused_tokens_per_s": nf.get("tokens_per_s"), "minipuzzle_nofused_peak_gib": nf.get("peak_memory_gib"),
     "pytorch_tokens_per_s": pt.get("tokens_per_s"), "pytorch_peak_gib": pt.get("peak_memory_gib"),
     "pytorch_error": pt.get("error")}
if mp.get("tokens_per_s") and pt.get("tokens_per_s"):
    s["speedup"] = mp["tokens_per_s"] / pt["tokens_per_s"]
    s["memory_ratio"] = mp["peak_memory_gib"] / pt["peak_memory_gib"]
    s["goal_met"] = s["speedup"] >= 1.5 and s["memory_ratio"] <= 1.0
c = {"plain_peak_gib": plain2.get("peak_memory_gib"), "checkpointed_peak_gib": ck.get("peak_memory_gib"),
     "plain_tokens_per_s": plain2.get("tokens_per_s"), "checkpointed_tokens_per_s": ck.get("tokens_per_s"),
     "batch": ck.get("batch"), "seq": ck.get("seq"), "error": ck.get("error")}
if plain2.get("tokens_per_s") and ck.get("tokens_per_s") and plain2.get("batch") == ck.get("batch"):
    c["memory_saved_gib"] = plain2["peak_memory_gib"] - ck["peak_memory_gib"]
    c["slowdown"] = plain2["tokens_per_s"] / ck["tokens_per_s"]
    # Same seeds and batch: the first steps of both runs should give the same losses (bf16 GPU kernels).
    pairs = list(zip(plain2.get("losses", []), ck.get("losses", [])))
    c["loss_pairs"] = pairs
    c["max_rel_loss_diff"] = max((abs(a - b) / abs(a) for a, b in pairs), default=None)
s["activation_checkpointing"] = c
json.dump(s, open(os.path.join(out, "distill_summary.json"), "w"), indent=1)
print(json.dumps(s, indent=1))
PY

# End-to-end CLI run on CUDA with tiny models (byte-level tinyshakespeare token files written in the documented
# format: NAME.tokens raw uint32, NAME.index, NAME.json).
smoke="$OUT/distill_smoke"; rm -rf "$smoke"; mkdir -p "$smoke"
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
  common="--data $smoke/train --valid $smoke/valid --seq-len 256 --micro-batch 16 --device cuda --eval-tokens 16384"
  {
    echo "== teacher from scratch (cuda, bf16 + fp32 masters) =="
    MINIPUZZLE_PROGRESS=jsonl timeout 120 build-gpu/minipuzzle distill --from-scratch --student "$smoke/teacher_config.json" \
      $common --tokens 1000000 --lr 2e-3 --min-lr 2e-4 --warmup 20 --eval-every 100 -o "$smoke/teacher" 2>&1 | tail -4
    echo "teacher exit ${PIPESTATUS[0]}"
    # A random student saved as a checkpoint: a 0-token from-scratch run is refused, so run 1 step at lr ~ 0.
    timeout 60 build-gpu/minipuzzle distill --from-scratch --student "$smoke/student_config.json" $common --tokens 4096 \
      --lr 1e-12 --min-lr 0 -o "$smoke/student0" > /dev/null 2>&1
    echo "== distill (fused linear_kd) =="
    MINIPUZZLE_PROGRESS=jsonl timeout 120 build-gpu/minipuzzle distill --teacher "$smoke/teacher/final" \
      --student "$smoke/student0/final" $common --tokens 1000000 --lr 2e-3 --min-lr 2e-4 --warmup 20 --alpha 0.9 \
      --eval-every 80 -o "$smoke/distill" 2>&1 | tail -4
    echo "distill exit ${PIPESTATUS[0]}"
    ngpu=$(nvidia-smi -L | wc -l)
    if [ "$ngpu" -ge 2 ]; then
      echo "== NCCL data parallel: 2 GPUs x micro-batch 8 vs 1 GPU x micro-batch 16 (40 steps each) =="
      for r in 0 1; do
        env RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29611 MINIPUZZLE_PROGRESS=off \
          timeout 120 build-gpu/minipuzzle distill --teacher "$smoke/teacher/final" --student "$smoke/student0/final" \
          --data $smoke/train --valid $smoke/valid --seq-len 256 --micro-batch 8 --device cuda --eval-tokens 16384 \
          --tokens 163840 --lr 2e-3 --eval-every 1000 -o "$smoke/dp2" > "$smoke/dp2_rank$r.log" 2>&1 &
      done
      wait; tail -2 "$smoke"/dp2_rank*.log
      MINIPUZZLE_PROGRESS=off timeout 120 build-gpu/minipuzzle distill --teacher "$smoke/teacher/final" \
        --student "$smoke/student0/final" $common --tokens 163840 --lr 2e-3 --eval-every 1000 -o "$smoke/dp1" 2>&1 | tail -2
      python3 -c "
import json
a = json.load(open('$smoke/dp1/checkpoint/trainer.json'))['train_loss']; b = json.load(open('$smoke/dp2/checkpoint/trainer.json'))['train_loss']
print('steps', len(a), len(b), 'max |relative difference| of step losses (bf16 GPU):', max(abs(x - y) / abs(x) for x, y in zip(a, b)))
print('first losses', a[:3], b[:3]); print('last losses', a[-1], b[-1])
"
    fi
    python3 -c "
import json
for r in ('teacher', 'distill'):
    try:
        j = json.load(open('$smoke/' + r + '/checkpoint/trainer.json'))
        print(r, 'steps', j['step'], 'evals', [(e['step'], round(e['val_loss'], 3), round(e.get('val_kl', float('nan')), 3)) for e in j['evals']])
        s = [json.loads(l) for l in open('$smoke/' + r + '/log.jsonl') if '\"tokens_per_s\"' in l]
        print(r, 'median tokens/s', sorted(x['tokens_per_s'] for x in s)[len(s)//2])
    except Exception as e:
        print(r, 'no result', e)
"
  } > "$OUT/distill_gpu_smoke.txt" 2>&1
  cat "$OUT/distill_gpu_smoke.txt"
  rm -rf "$smoke"/*/checkpoint "$smoke"/*.tokens
else
  echo "minipuzzle CLI not built or tinyshakespeare not found (../shared/data, shared/data, .carry/data): CLI smoke skipped" | tee "$OUT/distill_gpu_smoke.txt"
fi

(cd build-gpu && timeout 300 ctest -R "test_distill" -LE gpu --output-on-failure) > "$OUT/distill_cpu_tests.txt" 2>&1
echo "distill CPU tests exit $?"; tail -5 "$OUT/distill_cpu_tests.txt"
exit 0
