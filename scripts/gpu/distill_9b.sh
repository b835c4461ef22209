#!/usr/bin/env bash
# 12B -> 9B distillation on one H200 (issue 20): the memory plan, optimizer offload, tokens/s and MFU.
# Run from the repo root on the GPU host (141 GB GPU, 128 GiB host RAM, 64 GB disk). Environment:
#   TEACHER=DIR          reuse a Nemotron Nano 12B v2-shaped checkpoint instead of making a random one
#   STEPS=3              optimizer steps of the 9B run
#   TOKENS_PER_STEP=65536  tokens per optimizer step (sequence 8192: micro-batch x grad-accum = TOKENS_PER_STEP/8192)
#   SEQ=8192             sequence length
#   DEADLINE_S=510       the whole script, build included, stops its steps by then (each command has a timeout)
#   WORK=/tmp/mp-9b      scratch directory (removed at the end)
#   KEEP_TEACHER=1       keep the random teacher in /tmp/mp-12b-random (24.6 GB) for the next run, which reuses it
# A cold build-gpu takes minutes of the budget: if the 9B run is cut short by the deadline, run the script again.
# Steps: build; a random-weight 12B teacher with transformers (NemotronHForCausalLM(NemotronHConfig(**cfg)), bf16,
# on the GPU, save_pretrained); scores on a few byte-level sequences; prune to the Nano-9B-v2 shape (widths from
# the scores, the six layers whose removal turns the 12B pattern into the 9B one); `distill --plan --fit auto`;
# the distillation at SEQ with the plan's choices (--no-save: a 9B optimizer checkpoint is ~126 GB); then a small
# student's offloaded checkpoint/resume check (stop after 2 of 4 steps with the state on the host, resume with it
# on the GPU; the losses must continue as in an uninterrupted run within bf16 rounding).
# Writes $OUT/distill_9b_plan.txt, distill_9b_plan.json, distill_9b_log.jsonl, distill_9b_resume.json and
# distill_9b_summary.json (printed last): tokens/s, MFU, GPU and host peaks against the plan, optimizer share.
set -uo pipefail
source scripts/gpu/env.sh
set +e
start=$SECONDS
DEADLINE_S=${DEADLINE_S:-510}
STEPS=${STEPS:-3}
SEQ=${SEQ:-8192}
TOKENS_PER_STEP=${TOKENS_PER_STEP:-65536}
WORK=${WORK:-/tmp/mp-9b}
left() { echo $(( DEADLINE_S - (SECONDS - start) - 15 )); }  # seconds left, 15 kept for the summary and cleanup
run_for() {  # run_for MAX_SECONDS CMD...: at most MAX_SECONDS and never past the deadline
  local max=$1; shift
  local t=$(left); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -le 5 ]; then echo "skipped (deadline): $*" >&2; return 124; fi
  timeout -k 5 "$t" "$@"
}
RANDOM_TEACHER=/tmp/mp-12b-random
cleanup() {
  rm -rf "$WORK"
  if [ -z "${TEACHER:-}" ] && [ "${KEEP_TEACHER:-0}" != 1 ]; then rm -rf "$RANDOM_TEACHER"; fi
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True MINIPUZZLE_PROGRESS=jsonl

run_for 300 bash -c 'source scripts/gpu/env.sh; gpu_build minipuzzle test_offload_gpu' > "$OUT/distill_9b_build.log" 2>&1
tail -3 "$OUT/distill_9b_build.log"
MP=build-gpu/minipuzzle
[ -x "$MP" ] || { echo "minipuzzle did not build (see distill_9b_build.log)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader
df -h "$WORK" | tail -1; free -g | head -2
echo "build done at $((SECONDS - start)) s"

# Byte-level token files (vocab 256 < the models' 131072).
python3 scripts/gpu/byte_tokens.py "$WORK" train:0:1000000 valid:1000000:1100000

# Teacher.
if [ -n "${TEACHER:-}" ]; then
  T="$TEACHER"
elif [ -f "$RANDOM_TEACHER/.complete" ]; then
  T="$RANDOM_TEACHER"; echo "reusing the random teacher kept in $T"
else
  T="$RANDOM_TEACHER"; rm -rf "$T"
  run_for 240 python3 - "$T" <<'PY'
import json, sys, time, torch
from transformers import NemotronHConfig, NemotronHForCausalLM
t0 = time.time()
cfg = {k: v for k, v in json.load(open("configs/models/nemotron-nano-12b-v2.json")).items() if not k.startswith("_")}
cfg.pop("architectures", None); cfg.pop("model_type", None)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)  # initialised in bf16 directly (fp32 first would take 49 GB)
with torch.device("cuda"):
    model = NemotronHForCausalLM(NemotronHConfig(**cfg))
torch.set_default_dtype(torch.float32)
n = sum(p.numel() for p in model.parameters())
model.save_pretrained(sys.argv[1])
print(f"random teacher: {n/1e9:.2f}B parameters, made and saved in {time.time()-t0:.0f} s", flush=True)
PY
  [ -f "$T/config.json" ] || { echo "teacher was not written"; exit 1; }
  touch "$T/.complete"
fi
echo "teacher ready at $((SECONDS - start)) s"

# Prune to the Nano-9B-v2 shape: widths by scores on 8 byte sequences, the six layers 7,8,23,24,48,52 (2 attention,
# 1 Mamba, 3 MLP) whose removal leaves exactly the 9B's pattern.
run_for 120 $MP score "$T" --calib "$WORK/train" --samples 8 --seq-len 512 --no-depth --device cuda \
  -o "$WORK/scores.json" > "$OUT/distill_9b_score.log" 2>&1 || { tail -5 "$OUT/distill_9b_score.log"; exit 1; }
S="$WORK/student"
run_for 150 $MP prune "$T" --scores "$WORK/scores.json" --hidden 4480 --ffn 15680 --drop-layers 7,8,23,24,48,52 \
  -o "$S" > "$OUT/distill_9b_prune.log" 2>&1 || { tail -5 "$OUT/distill_9b_prune.log"; exit 1; }
python3 - "$S" <<'PY'
import json, sys
got = json.load(open(sys.argv[1] + "/config.json")); want = json.load(open("configs/models/nemotron-nano-9b-v2.json"))
keys = ["hidden_size", "intermediate_size", "hybrid_override_pattern", "mamba_num_heads", "mamba_head_dim",
        "num_attention_heads", "num_key_value_heads", "ssm_state_size", "n_groups"]
diff = {k: (got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)}
print("student has the Nano-9B-v2 shape" if not diff else f"student shape differs from Nano-9B-v2: {diff}")
PY
echo "student ready at $((SECONDS - start)) s"

# The plan, then the run with its choices.
micro_total=$(( TOKENS_PER_STEP / SEQ )); [ "$micro_total" -ge 1 ] || micro_total=1
TOKENS=$(( STEPS * micro_total * SEQ ))
COMMON="--teacher $T --student $S --data $WORK/train --valid $WORK/valid --seq-len $SEQ --tokens $TOKENS
  --micro-batch $micro_total --grad-accum 1 --fit auto --device cuda --eval-every 100000 --eval-tokens $SEQ
  --lr 1e-5 --min-lr 1e-6 --no-save"
run_for 60 $MP distill $COMMON --plan -o "$WORK/run" > "$OUT/distill_9b_plan.txt" 2>&1
cat "$OUT/distill_9b_plan.txt"; cp "$WORK/run/plan.json" "$OUT/distill_9b_plan.json" 2>/dev/null
run_for 600 $MP distill $COMMON -o "$WORK/run" > "$OUT/distill_9b_run.log" 2>&1
echo "distill exit $? at $((SECONDS - start)) s"; tail -4 "$OUT/distill_9b_run.log"
cp "$WORK/run/log.jsonl" "$OUT/distill_9b_log.jsonl" 2>/dev/null
rm -rf "$WORK/run" "$S"

# Offloaded checkpoint/resume on a small student (from scratch, ~120M parameters, all optimizer state on the
# host): 4 steps uninterrupted against 2 steps, checkpoint, resume with the state on the GPU.
python3 - "$WORK/small.json" <<'PY'
import json, sys
cfg = {k: v for k, v in json.load(open("configs/models/nemotron-nano-9b-v2.json")).items() if not k.startswith("_")}
cfg.update(hidden_size=1024, intermediate_size=4096, hybrid_override_pattern="M-M*M-M-", num_hidden_layers=8,
           mamba_num_heads=32, mamba_head_dim=64, num_attention_heads=8, num_key_value_heads=2, vocab_size=32768)
json.dump(cfg, open(sys.argv[1], "w"))
PY
SMALL="--from-scratch --student $WORK/small.json --data $WORK/train --valid $WORK/valid --seq-len 2048 --micro-batch 2
  --tokens 16384 --device cuda --eval-every 100000 --eval-tokens 2048 --lr 1e-3 --seed 3"
run_for 90 $MP distill $SMALL --offload-optimizer 1 -o "$WORK/small_ref" > "$OUT/distill_9b_small_ref.log" 2>&1
run_for 90 $MP distill $SMALL --offload-optimizer 1 --stop-after-steps 2 -o "$WORK/small_run" > "$OUT/distill_9b_small_a.log" 2>&1
run_for 90 $MP distill $SMALL --offload-optimizer 0 --resume -o "$WORK/small_run" > "$OUT/distill_9b_small_b.log" 2>&1
python3 - "$WORK/small_ref/checkpoint/trainer.json" "$WORK/small_run/checkpoint/trainer.json" "$OUT/distill_9b_resume.json" <<'PY'
import json, sys
try:
    a = json.load(open(sys.argv[1]))["train_loss"]; b = json.load(open(sys.argv[2]))["train_loss"]
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b)) if len(a) == len(b) == 4 else None
    r = {"uninterrupted": a, "stopped_and_resumed": b, "max_rel_diff": rel, "ok": rel is not None and rel < 1e-2}
except Exception as e:
    r = {"error": str(e), "ok": False}
json.dump(r, open(sys.argv[3], "w")); print("offloaded checkpoint/resume:", json.dumps(r))
PY

# The plan's kept activations against the CUDA allocator, and offload against the resident optimizer (bf16).
run_for 120 build-gpu/tests/gpu/test_offload_gpu > "$OUT/distill_9b_gpu_test.txt" 2>&1
echo "test_offload_gpu exit $?"; grep -E "kept for backward|weights differ|passed|failed" "$OUT/distill_9b_gpu_test.txt"

python3 - "$OUT" "$SEQ" <<'PY'
import json, os, sys
out, L = sys.argv[1], int(sys.argv[2])
def lines(p):
    try: return [json.loads(l) for l in open(p) if l.strip()]
    except Exception: return []
log = lines(os.path.join(out, "distill_9b_log.jsonl"))
try: plan = json.load(open(os.path.join(out, "distill_9b_plan.json")))
except Exception: plan = {}
steps = [l for l in log if "step_s" in l]
start = next((l for l in log if l.get("event") == "start"), {})
mem = next((l for l in log if l.get("event") == "memory"), {})
t_cfg = {k: v for k, v in json.load(open("configs/models/nemotron-nano-12b-v2.json")).items()}
s_cfg = {k: v for k, v in json.load(open("configs/models/nemotron-nano-9b-v2.json")).items()}
Nt, Ns = plan.get("teacher_parameters", 12.31e9), plan.get("student_parameters", 8.89e9)
ckpt = plan.get("setup", {}).get("activation_checkpointing", False)
per_token = 2 * Nt + 6 * Ns + (2 * Ns if ckpt else 0)
def extra(c, passes):  # causal attention (QK and PV over L/2 positions on average) and the chunked SSD scan, per token
    nA = c["hybrid_override_pattern"].count("*"); nM = c["hybrid_override_pattern"].count("M")
    attn = nA * 2 * 2 * (L / 2) * c["num_attention_heads"] * c["head_dim"]
    d = c["mamba_num_heads"] * c["mamba_head_dim"]; Q = c.get("chunk_size", 128); G = c["n_groups"]; N = c["ssm_state_size"]
    scan = nM * (2 * Q * G * N + 2 * Q * d + 4 * d * N)
    return passes * (attn + scan)
per_token_full = per_token + extra(t_cfg, 1) + extra(s_cfg, 3 + (1 if ckpt else 0))
peak = 989e12  # H200 bf16 dense
s = {"steps": len(steps), "seq_len": L, "tokens_per_step": start.get("tokens_per_step"),
     "plan_setup": plan.get("setup"), "plan_fits": plan.get("fits")}
if steps:
    timed = steps[1:] if len(steps) > 1 else steps  # the first step includes one-off allocations
    tok = sum(l["tokens_per_s"] * l["step_s"] for l in timed); sec = sum(l["step_s"] for l in timed)
    tps = tok / sec
    s.update(tokens_per_s=tps, mfu=tps * per_token / peak, mfu_with_attention_and_scan=tps * per_token_full / peak,
             step_s=[l["step_s"] for l in steps], optimizer_share=sum(l["optimizer_s"] for l in timed) / sec,
             host_update_s=[l.get("host_update_s") for l in steps], losses=[l.get("loss") for l in steps])
pg, ph = mem.get("predicted_gpu_bytes"), mem.get("predicted_host_bytes")
g, h = mem.get("gpu_peak_bytes"), mem.get("host_peak_rss_bytes")
GiB = 2**30
s.update(gpu_peak_gib=g and g / GiB, gpu_predicted_gib=pg and pg / GiB, gpu_error=(pg / g - 1) if g and pg else None,
         host_peak_rss_gib=h and h / GiB, host_predicted_gib=ph and ph / GiB)
try: s["resume_check"] = json.load(open(os.path.join(out, "distill_9b_resume.json")))
except Exception: pass
json.dump(s, open(os.path.join(out, "distill_9b_summary.json"), "w"), indent=1)
print("distill_9b summary:", json.dumps(s))
PY
echo "distill_9b.sh finished in $((SECONDS - start)) s"
