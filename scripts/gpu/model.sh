#!/usr/bin/env bash
# GPU host: model parity on CUDA (bf16 and fp32, 300 and 4096 tokens) and the forward benchmark beside
# transformers at 8B-class layer shapes. Results in $OUT/model_*.json.
source scripts/gpu/env.sh
gpu_build test_model_gpu test_model_parity bench_model_forward
python3 tests/reference/make_gpu_reference.py --out /tmp/gpuref > "$OUT/gpuref.log" 2>&1 || tail -20 "$OUT/gpuref.log"
MINIPUZZLE_GPU_REFERENCE=/tmp/gpuref ./build-gpu/tests/gpu/test_model_gpu > "$OUT/model_gpu_test.txt" 2>&1 || echo "test_model_gpu FAILED"
grep -E "model_gpu|passed|failed" "$OUT/model_gpu_test.txt"
python3 tests/reference/make_tiny_models.py --out build-gpu/fixtures/models > /dev/null 2>&1
./build-gpu/tests/model/test_model_parity 2>&1 | tail -2 || true
for pat in "M-M*M-"; do
  ./build-gpu/bench/bench_model_forward --pattern "$pat" --seq 4096 --iters 5 --backward | tee -a "$OUT/model_bench.jsonl"
  python3 bench/model_forward_transformers.py --pattern "$pat" --seq 4096 --iters 5 --backward 2>/dev/null | tee -a "$OUT/model_bench.jsonl"
done
