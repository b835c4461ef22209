#!/usr/bin/env bash
# GPU host: MoE layers (issue 25). (1) Parity on CUDA: a seeded MoE hybrid (grouped routing, shared expert) in bf16
# and fp32 against transformers at 300 and 4096 tokens, and backward through router and experts; (2) one MoE layer at
# Nemotron 3 Nano 30B-A3B's shape (hidden 2688, 128 experts x 1856, top-6, shared 3712), ours (the grouped-GEMM
# kernel and the per-expert loop) beside transformers' eager / grouped_mm / batched_mm experts, forward and
# forward+backward at 4096 and 16384 tokens; (3) the grouped-GEMM kernel against the per-expert path
# (test_moe_grouped_gpu).
# Results: $OUT/moe_gpu_test.txt, $OUT/moe_bench.jsonl; a summary last.
source scripts/gpu/env.sh
gpu_build test_moe_gpu test_moe_grouped_gpu bench_moe_layer
python3 tests/reference/make_gpu_moe_reference.py --out /tmp/gpuref_moe > "$OUT/gpuref_moe.log" 2>&1 || tail -20 "$OUT/gpuref_moe.log"
MINIPUZZLE_GPU_MOE_REFERENCE=/tmp/gpuref_moe ./build-gpu/tests/gpu/test_moe_gpu > "$OUT/moe_gpu_test.txt" 2>&1 || echo "test_moe_gpu FAILED"
# (test_moe_gpu checks the parity with the routed experts' per-expert loop and with the grouped-GEMM kernel,
# kernels::KernelOptions::moe; the CLI's --moe-kernel grouped.)
./build-gpu/tests/gpu/test_moe_grouped_gpu > "$OUT/moe_grouped_gpu_test.txt" 2>&1 || echo "test_moe_grouped_gpu FAILED"
: > "$OUT/moe_bench.jsonl"
for T in 4096 16384; do
  ./build-gpu/bench/bench_moe_layer --tokens "$T" --iters 5 >> "$OUT/moe_bench.jsonl" || echo "bench_moe_layer $T FAILED"
  python3 bench/moe_layer_transformers.py --tokens "$T" --iters 5 2>/dev/null >> "$OUT/moe_bench.jsonl" || true
done
echo "== summary"
grep -E "moe_gpu|passed|failed" "$OUT/moe_gpu_test.txt"
grep -E "moe_grouped_gemm|moe_layer_grouped|passed|failed" "$OUT/moe_grouped_gpu_test.txt"
python3 - "$OUT/moe_bench.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    name = r.get("implementation", "minipuzzle")
    print(f"{name:>12} T={r['tokens']:>6}: " + (r["error"] if "error" in r else
          f"fwd {r['fwd_ms']:.2f} ms ({r['fwd_tflops']:.1f} TFLOP/s), fwd+bwd {r['fwd_bwd_ms']:.2f} ms"))
PY
