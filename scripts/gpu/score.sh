#!/usr/bin/env bash
# GPU host: importance scoring (width criteria) against a plain forward over the same tokens, 8B-class shapes.
source scripts/gpu/env.sh
gpu_build bench_score > "$OUT/score_build.log" 2>&1 || tail -20 "$OUT/score_build.log"
./build-gpu/bench/bench_score --pattern "M-M*M-" --samples 4 --seq 4096 --iters 3 | tee "$OUT/score_bench.json"
