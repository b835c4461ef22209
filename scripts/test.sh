#!/usr/bin/env bash
# The README's test command (make test) and CI's: set-up, build, then every CPU test through ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" "$build"
cd "$build"
# GPU-labelled tests need the GPU host (scripts/gpu/*.sh run them there); CI machines have no GPU.
ctest --output-on-failure -j "$(nproc)" -LE gpu ${CTEST_ARGS:-}
# The Python package (issue 23): minipuzzle_kernels installed into the venv when its sources changed, then its
# pytest suite on CPU (scripts/python_tests.sh). MINIPUZZLE_PYTHON_TESTS=0 skips it.
if [ "${MINIPUZZLE_PYTHON_TESTS:-1}" != 0 ]; then
  "$root/scripts/python_tests.sh"
fi
# ASan+UBSan build of the input-reading libraries' tests, then every fuzz target for MINIPUZZLE_FUZZ_SECONDS
# (default 60) under libFuzzer (scripts/reliability.sh, issue 11). MINIPUZZLE_RELIABILITY=0 skips it.
if [ "${MINIPUZZLE_RELIABILITY:-1}" != 0 ]; then
  "$root/scripts/reliability.sh"
fi
