#!/usr/bin/env bash
# minipuzzle_kernels on the GPU host (issue 23): builds the Python package with its CUDA kernels, runs its pytest
# suite on CUDA (and CPU), the distillation example on CUDA, and times the Python calls against the C++ benches
# (bench_kd_loss, bench_linear_kd: N 8192, H 4096, V 131072 bf16) -- target: the Python call adds <= 2% -- and
# against Liger when a wheel is at $LIGER_WHEEL (or shared/liger_kernel*.whl). Everything lands in $OUT/py_*;
# the last thing printed is $OUT/py_summary.json. Run from the repo root: bash scripts/gpu/py_kernels.sh
source scripts/gpu/env.sh
root="$(pwd)"
log() { echo "[py_kernels.sh $(date +%H:%M:%S)] $*" | tee -a "$OUT/py_log.txt"; }
set +e

# The C++ benches build in the background (build-gpu) while pip compiles the package.
log "building bench_kd_loss bench_linear_kd (build-gpu) in the background"
( gpu_build bench_kd_loss bench_linear_kd > "$OUT/py_bench_build.log" 2>&1 ) &
bench_build_pid=$!

# Everything goes to a private folder (no change to the host's Python); the build uses the host's torch.
# pytest and wheel come from .carry/wheels (scripts/gpu/make_carry.sh) when the host lacks them: it is offline.
pkg="$(mktemp -d)"
for mod in pytest wheel; do
  python3 -c "import $mod" 2>/dev/null && continue
  python3 -m pip install -q --no-index --find-links .carry/wheels --target "$pkg" "$mod" > /dev/null 2>&1 \
    && log "$mod from .carry/wheels" || log "$mod is missing on this host and not in .carry/wheels"
done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
log "pip install ./python (CUDA kernels, sm_90a) into $pkg"
start=$(date +%s)
MINIPUZZLE_KERNELS_CUDA=1 MAX_JOBS="$(nproc)" python3 -m pip install --no-build-isolation --no-deps --target "$pkg" \
  ./python > "$OUT/py_pip_install.log" 2>&1
pip_rc=$?
if [ "$pip_rc" != 0 ]; then
  # Without pip's wheel machinery the same build runs in place (setuptools alone, which torch's cpp_extension needs).
  tail -20 "$OUT/py_pip_install.log"
  log "pip install failed (rc $pip_rc); building in place with setup.py build_ext instead"
  (cd python && MINIPUZZLE_KERNELS_CUDA=1 MAX_JOBS="$(nproc)" python3 setup.py build_ext --inplace) \
    >> "$OUT/py_pip_install.log" 2>&1 || { log "build_ext failed too"; tail -30 "$OUT/py_pip_install.log"; }
  export PYTHONPATH="$root/python:$PYTHONPATH"
fi
log "package built (rc $pip_rc) in $(( $(date +%s) - start )) s"
python3 -c 'import minipuzzle_kernels as m; print("built_with_cuda", m.built_with_cuda(), m.__file__)' 2>&1 \
  | tail -1 | tee -a "$OUT/py_log.txt"
for dev in cuda cpu; do
  log "pytest on $dev"
  (cd python/tests && MINIPUZZLE_TEST_DEVICE=$dev timeout 180 python3 -m pytest -q -p no:cacheprovider \
     --junitxml="$OUT/py_pytest_$dev.xml" . > "$OUT/py_pytest_$dev.txt" 2>&1)
  echo "rc=$?" >> "$OUT/py_pytest_$dev.txt"
  log "pytest $dev: $(grep -E 'passed|failed|error' "$OUT/py_pytest_$dev.txt" | tail -1) $(tail -1 "$OUT/py_pytest_$dev.txt")"
done

log "example: distilling a tiny LLaMA student on CUDA, fused vs eager"
timeout 180 python3 python/examples/distill_tiny.py --device cuda --vocab 32000 --seq 512 --batch 8 --steps 20 \
  --json "$OUT/py_example.json" > "$OUT/py_example.txt" 2>&1
echo "rc=$?" >> "$OUT/py_example.txt"
tail -4 "$OUT/py_example.txt" | tee -a "$OUT/py_log.txt"

wait "$bench_build_pid"
for b in bench_kd_loss bench_linear_kd; do
  [ -x "build-gpu/bench/$b" ] || log "$b did not build (see py_bench_build.log)"
done
# The C++ kd bench runs before and after the Python timings: the spread of the two says how much is run-to-run noise.
[ -x build-gpu/bench/bench_kd_loss ] && timeout 90 build-gpu/bench/bench_kd_loss > "$OUT/py_cpp_kd_loss_1.json" 2>/dev/null
[ -x build-gpu/bench/bench_linear_kd ] && timeout 120 build-gpu/bench/bench_linear_kd > "$OUT/py_cpp_linear_kd.json" 2>/dev/null
log "C++ benches done; Python op timings (Liger too if importable)"
liger_dir=""
for candidate in ${LIGER_WHEEL:-} "$root"/shared/liger_kernel*.whl "$root"/shared/*/liger_kernel*.whl; do
  if [ -f "$candidate" ]; then
    liger_dir="$(mktemp -d)"
    python3 -m pip install --no-deps --no-index --target "$liger_dir" "$candidate" > "$OUT/py_liger_install.log" 2>&1 \
      && log "Liger from $candidate" || { log "Liger wheel $candidate did not install"; liger_dir=""; }
    break
  fi
done
PYTHONPATH="${liger_dir:+$liger_dir:}$PYTHONPATH" timeout 150 python3 python/bench/op_overhead.py \
  > "$OUT/py_op_overhead.json" 2> "$OUT/py_op_overhead.stderr"
log "op_overhead rc=$?"
# (skipped when the run is already long: the whole script must stay under the device tool's 10 minutes)
if [ -x build-gpu/bench/bench_kd_loss ] && [ "$SECONDS" -lt 450 ]; then
  timeout 90 build-gpu/bench/bench_kd_loss > "$OUT/py_cpp_kd_loss_2.json" 2>/dev/null
else
  log "second bench_kd_loss run skipped (${SECONDS} s elapsed)"
fi

python3 - "$OUT" <<'PY' > "$OUT/py_summary.json"
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": f"{name}: {e}"}
def tail(name):
    try:
        return open(os.path.join(out, name)).read().strip().splitlines()[-2:]
    except Exception as e:
        return [str(e)]
py, k1, k2, lin = load("py_op_overhead.json"), load("py_cpp_kd_loss_1.json"), load("py_cpp_kd_loss_2.json"), load("py_cpp_linear_kd.json")
def ms(d, *keys):
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d if isinstance(d, (int, float)) else None
def ratio(a, b):
    return a / b if a and b else None
cpp_op = [x for x in (ms(k1, "results", "ours_out_of_place", "median_ms"), ms(k2, "results", "ours_out_of_place", "median_ms")) if x]
cpp_ag = [x for x in (ms(k1, "results", "ours_autograd", "median_ms"), ms(k2, "results", "ours_autograd", "median_ms")) if x]
mean = lambda xs: sum(xs) / len(xs) if xs else None
s = {"device": py.get("device"),
     "pytest_cuda": tail("py_pytest_cuda.txt"), "pytest_cpu": tail("py_pytest_cpu.txt"),
     "example": load("py_example.json").get("runs", {}) and {k: {"tokens_per_s": v["tokens_per_s"], "peak_memory_mib": v["peak_memory_mib"]} for k, v in load("py_example.json")["runs"].items()},
     "example_curves_agree": load("py_example.json").get("agree"), "example_worst_rel_diff": load("py_example.json").get("worst_rel_diff"),
     "kd_loss_op": {"python_ms": ms(py, "kd_loss_op", "median_ms"), "cpp_ms_runs": cpp_op,
                    "python_back_to_back_ms": ms(py, "kd_loss_op", "back_to_back_mean_ms"),
                    "python_over_cpp": ratio(ms(py, "kd_loss_op", "median_ms"), mean(cpp_op))},
     "kd_loss_autograd": {"python_ms": ms(py, "kd_loss_autograd", "median_ms"), "cpp_ms_runs": cpp_ag,
                          "python_back_to_back_ms": ms(py, "kd_loss_autograd", "back_to_back_mean_ms"),
                          "python_over_cpp": ratio(ms(py, "kd_loss_autograd", "median_ms"), mean(cpp_ag))},
     "linear_kd_autograd": {"python_ms": ms(py, "linear_kd_autograd", "median_ms"),
                            "cpp_ms": ms(lin, "results", "ours_autograd_default_chunk", "median_ms"),
                            "python_over_cpp": ratio(ms(py, "linear_kd_autograd", "median_ms"), ms(lin, "results", "ours_autograd_default_chunk", "median_ms"))},
     "target_python_over_cpp": 1.02,
     "fused_linear_kd_loss_jsd_ms": ms(py, "fused_linear_kd_loss_jsd", "median_ms"),
     "liger_fused_linear_jsd_ms": ms(py, "liger_fused_linear_jsd", "median_ms"),
     "speedup_over_liger_jsd": py.get("speedup_over_liger_jsd"), "loss_rel_diff_vs_liger": py.get("loss_rel_diff_vs_liger"),
     "liger_note": py.get("liger", {}).get("skipped") if isinstance(py.get("liger"), dict) else None,
     "errors": [d["error"] for d in (py, k1, k2, lin) if "error" in d]}
print(json.dumps(s, indent=1))
PY
log "done in ${SECONDS} s; files in $OUT: py_summary.json (below), py_pytest_*.txt, py_example.txt, py_op_overhead.json, py_cpp_*.json"
cat "$OUT/py_summary.json"
