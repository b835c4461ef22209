#!/usr/bin/env bash
# Tokenizer and token-file checks of `minipuzzle data` (issue 9) on the GPU host, a quiet 16-core machine:
# no GPU is used. Run from the repo root; results in $OUT:
#  data_tests.txt        ctest of the data tests (exact ids vs `tokenizers` on both corpora, fuzz-style
#                        robustness, token files, data preparation)
#  tokenizer_bench.json  side-by-side throughput, both pinned to the same 2 cores (taskset -c 0,1) with 2
#                        threads each: `tokenizers` encode_batch vs minipuzzle's encoder (claim: C++ >= tokenizers),
#                        plus the same with 1 thread, for a GPT-2-style 512 and a Llama-3-style 8192 vocabulary
# About 1-2 minutes after the build. Needs the shared corpora at ../shared/data (as on developer machines).
set -euo pipefail
source scripts/gpu/env.sh
gpu_build test_token_file test_tokenizer_reference test_tokenizer_robustness test_data_prepare_bpe bench_tokenizer
set +e
data=../shared/data
if [ ! -f "$data/tinyshakespeare.txt" ]; then
  echo "shared corpora not found at $data: data tests and tokenizer benchmark skipped" | tee "$OUT/data_tests.txt"
  exit 0
fi
(cd build-gpu && ctest -R "make_reference_tokenizers|test_token_file|test_tokenizer_|test_data_prepare_bpe" \
   --output-on-failure) > "$OUT/data_tests.txt" 2>&1
echo "data tests exit $?"; tail -8 "$OUT/data_tests.txt"
ref=build-gpu/fixtures/tokenizers
: > "$OUT/tokenizer_bench.json"
for cfg in shakespeare_512_gpt2 shakespeare_8192_llama3; do
  for threads in 2 1; do
    taskset -c 0,1 python3 bench/bench_tokenizer_hf.py --cpp build-gpu/bench/bench_tokenizer \
      --tokenizer "$ref/$cfg/tokenizer.json" --threads "$threads" --repeat 5 \
      "$data/tinyshakespeare.txt" "$data/wikitext-2-valid.txt" "$data/wikitext-2-test.txt" >> "$OUT/tokenizer_bench.json"
    echo "bench $cfg threads $threads exit $?"
  done
done
python3 - "$OUT/tokenizer_bench.json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    hf, mp = r["tokenizers"], r["minipuzzle"]
    print(f"{r['tokenizer'].split('/')[-2]:26s} threads {r['threads']}: tokenizers {hf['warm_mb_per_s']:7.2f} MB/s warm "
          f"({hf['cold_mb_per_s']:.2f} cold) | minipuzzle {mp['warm_mb_per_s']:7.2f} MB/s warm ({mp['cold_mb_per_s']:.2f} cold)"
          f" | speedup {r['speedup_warm']:.2f}x warm, {r['speedup_cold']:.2f}x cold"
          f" (vs encode_batch_fast {r.get('speedup_warm_vs_encode_batch_fast', float('nan')):.2f}x) | same tokens: {r['same_token_count']}")
PY
