#!/usr/bin/env bash
# Data input (issues 18, 24) and multiple-choice task scoring on the GPU host's CUDA build. Run from the repo
# root; results in $OUT:
#  tasks_tests.txt      ctest of the data-input and task tests (Megatron/.npy vs token files, refusals through the
#                       CLI, task log-likelihoods vs transformers on CPU)
#  tasks_gpu.json       `eval --tasks` of the tiny reference model on cuda (bf16) and on cpu (fp32): acc, acc_norm,
#                       largest |loglik difference| per choice, and wall time of each
# A few minutes after the build (most of it transformers making the fixtures).
set -euo pipefail
source scripts/gpu/env.sh
gpu_build minipuzzle test_data_input test_data_input_cli test_tasks test_tasks_cli
set +e
(cd build-gpu && ctest -R "make_reference_models|make_data_formats|make_task_reference|test_data_input|test_tasks|tasks_converter" \
   --output-on-failure) > "$OUT/tasks_tests.txt" 2>&1
echo "data-input and task tests exit $?"; grep -E "tests passed|Failed|\*\*\*" "$OUT/tasks_tests.txt" | tail -12
model=build-gpu/fixtures/models/hybrid_g1
tasks=build-gpu/fixtures/tasks/tiny_tasks.jsonl
for dev in cuda cpu; do
  start=$(date +%s.%N)
  build-gpu/minipuzzle eval "$model" --tasks "$tasks" --tokenizer byte --task-batch-size 8 --device "$dev" \
    --tasks-details "$OUT/details_$dev.jsonl" > "$OUT/eval_$dev.json" 2> "$OUT/eval_$dev.err"
  echo "eval --tasks on $dev exit $? ($(echo "$(date +%s.%N) - $start" | bc) s)"
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
res = {}
for dev in ("cuda", "cpu"):
    res[dev] = json.load(open(f"{out}/eval_{dev}.json"))["tasks"][0]
rows = {dev: [json.loads(l) for l in open(f"{out}/details_{dev}.jsonl")] for dev in ("cuda", "cpu")}
diff = max(abs(a["loglik"] - b["loglik"]) for ra, rb in zip(rows["cuda"], rows["cpu"])
           for a, b in zip(ra["choices"], rb["choices"]))
summary = {"cuda": res["cuda"], "cpu": res["cpu"], "max_abs_loglik_diff_cuda_bf16_vs_cpu_fp32": diff}
json.dump(summary, open(f"{out}/tasks_gpu.json", "w"), indent=1)
print(f"acc cuda {res['cuda']['acc']:.3f} cpu {res['cpu']['acc']:.3f} | acc_norm cuda {res['cuda']['acc_norm']:.3f} "
      f"cpu {res['cpu']['acc_norm']:.3f} | max |loglik diff| bf16 vs fp32 {diff:.4f}")
PY
