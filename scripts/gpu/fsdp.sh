#!/usr/bin/env bash
# Sharded data parallelism (issue 21) on the GPU host. Run from the repo root with OUT set. Writes to $OUT:
#   fsdp_gpu_test.txt   tests/gpu/test_fsdp_gpu: world size 1 on CUDA bf16, zero3/zero2 (with and without activation
#                       checkpointing) against the plain step (losses within 1e-3, weights within 2 bf16 ulps), and
#                       the line "fsdp overhead zero3 X x, zero2 Y x ..." (median step time against the plain step of
#                       a ~0.5B student, and peak memory of each)
#   fsdp_nccl/          with 2 or more GPUs: `minipuzzle distill --shard zero3` on 2 ranks (NCCL, torchrun's
#                       variables) against 1 GPU with the same global batch; fsdp_nccl_summary.json holds the largest
#                       relative loss difference over 12 steps (bf16: expect <= 2e-2) and both runs' peak memory
set -uo pipefail
source scripts/gpu/env.sh
set +e
gpu_build minipuzzle test_fsdp_gpu > "$OUT/fsdp_build.log" 2>&1
timeout 600 build-gpu/tests/gpu/test_fsdp_gpu > "$OUT/fsdp_gpu_test.txt" 2>&1
echo "test_fsdp_gpu exit $?"; grep -E "fsdp|passed|failed" "$OUT/fsdp_gpu_test.txt"

ngpu=$(nvidia-smi -L | wc -l)
if [ "$ngpu" -ge 2 ]; then
  D="$OUT/fsdp_nccl"; rm -rf "$D"; mkdir -p "$D"
  python3 scripts/gpu/byte_tokens.py "$D" train:0:1000000 valid:1000000:1100000
  data="--data $D/train --valid $D/valid --device cuda --eval-tokens 8192 --eval-every 1000 --save-every 0"
  ./build-gpu/bench/bench_distill --config-dir "$D/cfg" --steps 1 --warmup 0 > /dev/null 2>&1 || \
    { cmake --build build-gpu --target bench_distill > /dev/null 2>&1; ./build-gpu/bench/bench_distill --config-dir "$D/cfg" --steps 1 --warmup 0 > /dev/null 2>&1; }
  for m in student teacher; do
    timeout 300 ./build-gpu/minipuzzle distill --from-scratch --student "$D/cfg/$m/config.json" $data --seq-len 256 \
      --micro-batch 1 --tokens 256 --lr 1e-12 --min-lr 0 -o "$D/init_$m" > "$D/init_$m.log" 2>&1
  done
  common="--teacher $D/init_teacher/final --student $D/init_student/final $data --seq-len 2048 --lr 2e-4 --min-lr 2e-5 --warmup 4 --alpha 0.9"
  MINIPUZZLE_PROGRESS=off timeout 400 ./build-gpu/minipuzzle distill $common --micro-batch 2 --tokens $((12 * 4096)) \
    -o "$D/g1" > "$D/g1.log" 2>&1
  for r in 0 1; do
    env RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29631 MINIPUZZLE_PROGRESS=off \
      timeout 400 ./build-gpu/minipuzzle distill $common --micro-batch 1 --tokens $((12 * 4096)) --shard zero3 \
      -o "$D/g2_zero3" > "$D/g2_zero3.rank$r.log" 2>&1 &
  done
  wait
  python3 - "$D" <<'PY' | tee "$OUT/fsdp_nccl_summary.json"
import json, sys
d = sys.argv[1]
def rows(name):
    try:
        return [json.loads(l) for l in open(f"{d}/{name}/log.jsonl")]
    except Exception as e:
        return []
a, b = rows("g1"), rows("g2_zero3")
la = [r["loss"] for r in a if "loss" in r and "step" in r]
lb = [r["loss"] for r in b if "loss" in r and "step" in r]
s = {"steps": [len(la), len(lb)]}
if la and lb:
    s["loss_max_relative_difference"] = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    s["losses_match"] = s["loss_max_relative_difference"] <= 2e-2
peak = lambda rs: max([r.get("gpu_peak_bytes", 0) for r in rs] or [0]) / 2**30
s["peak_gib_1gpu_plain"], s["peak_gib_2gpu_zero3_rank0"] = peak(a), peak(b)
print(json.dumps(s))
PY
fi
