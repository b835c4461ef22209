#!/usr/bin/env bash
# Mamba-2 kernels (issue 12) on the GPU host: build, CPU + GPU tests, the kernel/layer benchmark beside eager
# ATen and transformers' mixer, then one summary against the issue's targets. Run from the repo root with OUT
# set; everything lands in $OUT/mamba_*. Uses build-gpu (scripts/gpu/env.sh configures it). Keeps going after a failure
# (every step logs its exit code) so one run returns everything needed to debug. Budget: < 4 minutes.
#   mamba_test_gpu.json      every output/gradient of every kernel: scaled_max_err, rel_l2_err, tolerances, pass
#   mamba_bench.json         each kernel and the whole layer, eager vs kernels, ms / TFLOP/s / % of peak
#   mamba_transformers.json  transformers' NemotronHMamba2Mixer (torch path; mamba_ssm path when importable)
#   mamba_summary.json       pass/fail counts, worst errors, layer % of peak vs the 40% / 30% targets
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source scripts/gpu/env.sh  # the one preamble: carried headers, $OUT, build-gpu configured for CUDA
set +e
build="$root/build-gpu"
log() { echo "[mamba.sh $(date +%H:%M:%S)] $*" | tee -a "$OUT/mamba_log.txt"; }

nvidia-smi > "$OUT/mamba_nvidia_smi.txt" 2>&1 || true
log "building Mamba kernel targets"
cpu_tests="test_mamba_causal_conv1d test_mamba_ssd_scan test_mamba_gated_rmsnorm test_mamba_relu2"
targets="test_mamba_kernels_gpu bench_mamba_kernels $cpu_tests"
if ! cmake --build "$build" -j "$(nproc)" --target $targets > "$OUT/mamba_build.log" 2>&1; then
  log "building failed (mamba_build.log, errors below); retrying the GPU test alone"
  grep -E "error|FAILED" "$OUT/mamba_build.log" | head -20
  cmake --build "$build" -j "$(nproc)" --target test_mamba_kernels_gpu >> "$OUT/mamba_build.log" 2>&1 \
    || log "GPU test build failed too"
fi

for t in $cpu_tests; do
  if [ -x "$build/tests/kernels_mamba/$t" ]; then
    timeout 60 "$build/tests/kernels_mamba/$t" >> "$OUT/mamba_test_cpu.txt" 2>&1
    log "CPU test $t rc=$? (tail of mamba_test_cpu.txt: $(tail -2 "$OUT/mamba_test_cpu.txt" | tr '\n' ' '))"
  fi
done

gpu_test="$build/tests/kernels_mamba/test_mamba_kernels_gpu"
if [ -x "$gpu_test" ]; then
  log "GPU tests (kernels vs the model's ATen math on the device, forward and gradients)"
  timeout 120 "$gpu_test" "$OUT/mamba_test_gpu.json" > "$OUT/mamba_test_gpu_stdout.jsonl" 2> "$OUT/mamba_test_gpu_stderr.txt"
  rc=$?
  log "test_mamba_kernels_gpu rc=$rc (0 pass, 1 a check failed, 77 no GPU, 124 timeout, other: crash)"
  grep '"pass":false' "$OUT/mamba_test_gpu_stdout.jsonl" | head -40
  if [ "$rc" != 0 ] && [ "$rc" != 1 ] && [ "$rc" != 77 ]; then
    log "crash: rerunning with CUDA_LAUNCH_BLOCKING=1 to name the failing launch"
    CUDA_LAUNCH_BLOCKING=1 timeout 120 "$gpu_test" "$OUT/mamba_test_gpu_blocking.json" \
      > "$OUT/mamba_test_gpu_blocking_stdout.jsonl" 2>&1
    log "blocking rerun rc=$?"; tail -5 "$OUT/mamba_test_gpu_blocking_stdout.jsonl"
  fi
fi

if [ -x "$build/bench/bench_mamba_kernels" ]; then
  log "bench_mamba_kernels (8B layer shape: batch 4, seq 4096)"
  timeout 150 "$build/bench/bench_mamba_kernels" --batch 4 --seq 4096 --iters 5 --out "$OUT/mamba_bench.json" \
    > /dev/null 2> "$OUT/mamba_bench_progress.jsonl"
  log "bench rc=$?"; cat "$OUT/mamba_bench_progress.jsonl"
fi

log "transformers mixer (torch path; mamba_ssm kernels when importable)"
timeout 90 python3 bench/mamba_layer_transformers.py --batch 4 --seq 4096 --iters 5 --out "$OUT/mamba_transformers.json" \
  > /dev/null 2> "$OUT/mamba_transformers.stderr"
log "transformers bench rc=$?"

python3 - "$OUT" <<'PY' | tee "$OUT/mamba_summary.json"
import json, sys
out = sys.argv[1]
def load(name):
    try:
        with open(f"{out}/{name}") as f: return json.load(f)
    except Exception as e: return {"missing": f"{name}: {e}"}
s = {}
tests = load("mamba_test_gpu.json")
if isinstance(tests, list):
    s["gpu_checks"] = len(tests)
    s["gpu_failures"] = [t for t in tests if not t.get("pass")]
    worst = {}
    for t in tests:
        if "scaled_max_err" in t:
            key = t["kernel"] + ":" + t["tensor"]
            worst[key] = max(worst.get(key, 0), t["scaled_max_err"])
    s["worst_scaled_max_err"] = worst
else:
    s["gpu_tests"] = tests
bench = load("mamba_bench.json")
s["bench_speedups"] = bench.get("speedups")
for r in bench.get("results", []):
    if r.get("name") == "mamba_layer" and "impl" in r:
        s["layer_" + r["impl"]] = {k: r.get(k) for k in ("fwd_ms", "fwd_bwd_ms", "fwd_pct_peak", "fwd_bwd_pct_peak",
                                                         "fwd_pct_of_790", "fwd_bwd_pct_of_790", "error")}
    if r.get("check"):
        s.setdefault("kernel_vs_eager", {})[r["name"]] = r.get("value", r.get("error"))
k = s.get("layer_kernels", {})
s["target_fwd_40pct_of_peak"] = (k.get("fwd_pct_peak") or 0) >= 40
s["target_fwd_bwd_30pct_of_peak"] = (k.get("fwd_bwd_pct_peak") or 0) >= 30
s["transformers"] = load("mamba_transformers.json").get("results")
print(json.dumps(s, indent=1))
PY
log "done"
