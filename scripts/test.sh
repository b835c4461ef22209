#!/usr/bin/env bash
# The README's test command (make test) and CI's: set-up, build, then every CPU test through ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/scripts/build.sh" "$build"
cd "$build"
ctest --output-on-failure -j "$(nproc)" ${CTEST_ARGS:-}
