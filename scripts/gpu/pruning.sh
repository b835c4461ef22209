#!/usr/bin/env bash
# GPU host: the pruner's tests (CPU ones plus the CUDA in-memory prune), the group-aware vs naive Mamba ablation
# on a briefly trained model (16 host cores: more steps than the 2-core dev box allows), and the 8.6 GB
# streaming-prune speed / peak-RSS benchmark against cp. Results: $OUT/pruning_*.{txt,json}.
source scripts/gpu/env.sh
gpu_build minipuzzle test_prune_equivalence test_prune_target test_prune_hf test_prune_gpu bench_prune_ablation bench_prune_synth
[ -d build-gpu/fixtures/models/hybrid_g1 ] ||
  python3 tests/reference/make_tiny_models.py --out build-gpu/fixtures/models > /dev/null 2>&1
for t in pruning/test_prune_equivalence pruning/test_prune_target pruning/test_prune_hf gpu/test_prune_gpu; do
  MINIPUZZLE_PROGRESS=off "./build-gpu/tests/$t" > "$OUT/pruning_${t#*/}.txt" 2>&1 && echo "$t passed" || {
    echo "$t FAILED"; tail -30 "$OUT/pruning_${t#*/}.txt"; }
done
if [ -f ../shared/data/tinyshakespeare.txt ]; then
  MINIPUZZLE_PROGRESS=off timeout 120 ./build-gpu/bench/bench_prune_ablation --steps 400 \
    --data ../shared/data/tinyshakespeare.txt \
    > "$OUT/pruning_ablation.json" 2> "$OUT/pruning_ablation.log" || echo "ablation did not finish (see log)"
  python3 -c "import json;d=json.load(open('$OUT/pruning_ablation.json'));print('ablation LM loss', d['lm_loss_nats_per_byte'])" || true
else
  echo "../shared/data/tinyshakespeare.txt not found: ablation skipped" | tee "$OUT/pruning_ablation.log"
fi
BENCH_DIR=/tmp/mp-bench-prune timeout 300 scripts/bench_prune.sh build-gpu full > "$OUT/pruning_speed.json" \
  2> "$OUT/pruning_speed.log" || echo "speed bench did not finish (see pruning_speed.log)"
cat "$OUT/pruning_speed.json"
