#!/usr/bin/env bash
# GPU host: nested (elastic) students, issue 27. The CPU tests (nested order, nest/slice + transformers, elastic
# distillation's gradients and resume), then scripts/elastic_demo.sh on CUDA (bf16, fused KD): one elastic run vs
# separately pruned + distilled twins, with the teacher's budget 4x the CPU run's. Prints "<test> passed" three times
# and the perplexity table; results in $OUT/elastic_*.
source scripts/gpu/env.sh
gpu_build minipuzzle test_nested test_slice_cli test_elastic
[ -d build-gpu/fixtures/models/hybrid_g1 ] ||
  python3 tests/reference/make_tiny_models.py --out build-gpu/fixtures/models > /dev/null 2>&1
for t in pruning/test_nested pruning/test_slice_cli distill/test_elastic; do
  n=$(basename "$t")
  MINIPUZZLE_PROGRESS=off OMP_NUM_THREADS=1 "./build-gpu/tests/$t" > "$OUT/elastic_$n.txt" 2>&1 && echo "$n passed" || {
    echo "$n FAILED"; tail -30 "$OUT/elastic_$n.txt"; }
done
text="$PWD/../shared/data/tinyshakespeare.txt"; [ -f "$text" ] || text="$PWD/shared/data/tinyshakespeare.txt"
DATA_TEXT="$text" RUN_DIR=/tmp/mp-elastic-demo DEVICE=cuda THREADS=8 TEACHER_TOKENS=1966080 TOKENS=491520 \
  timeout 540 scripts/elastic_demo.sh build-gpu > "$OUT/elastic_demo.log" 2>&1 || { echo "demo did not finish"; tail -20 "$OUT/elastic_demo.log"; }
cp /tmp/mp-elastic-demo/table.md /tmp/mp-elastic-demo/times.txt "$OUT/" 2>/dev/null || true
cat /tmp/mp-elastic-demo/table.md 2>/dev/null || true
