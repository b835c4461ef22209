#!/usr/bin/env bash
# Nsight Compute profile of the default KD loss kernel (issue 7) at N 8192, V 131072 bf16: the full section set,
# warp-stall reasons and per-SASS-instruction stall samples, as text in $OUT/kd_ncu_*.txt.
# KERNEL_REGEX picks the kernel (default: the cluster_tma one).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/gpu/env.sh
gpu_build bench_kd_loss > "$OUT/kd_ncu_build.log"
regex="${KERNEL_REGEX:-kd_forward_kl_tma}"
ncu --set full --import-source yes -k "regex:$regex" --launch-skip 3 --launch-count 1 -o "$OUT/kd_ncu" -f \
  build-gpu/bench/bench_kd_loss --iters 2 > "$OUT/kd_ncu_run.txt" 2>&1
ncu --import "$OUT/kd_ncu.ncu-rep" --page details --print-details all > "$OUT/kd_ncu_details.txt" 2>&1
ncu --import "$OUT/kd_ncu.ncu-rep" --page source --csv --print-source sass > "$OUT/kd_ncu_sass.csv" 2>&1
ncu --import "$OUT/kd_ncu.ncu-rep" --page raw --csv > "$OUT/kd_ncu_raw.csv" 2>&1
grep -iE "stall|Warp Cycles|Issued|Duration|Throughput" "$OUT/kd_ncu_details.txt" | head -80
