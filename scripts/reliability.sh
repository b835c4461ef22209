#!/usr/bin/env bash
# Reliability checks (issue 11), run by scripts/test.sh after the ordinary tests, or alone:
#   1. an AddressSanitizer + UndefinedBehaviorSanitizer build (GCC, MINIPUZZLE_SANITIZE=ON) of the libraries that
#      read outside input and of their tests - io (safetensors, config, JSON, checkpoints), data (tokenizer,
#      token files) and every fuzz target's seed corpus replayed once - run under the sanitizers. Only those test
#      programs are built (not the CLI, kernels' benches, ...), which keeps the sanitized build a few minutes on
#      2 cores; the fault-injection tests (tests/faults) run in the ordinary build's ctest, and
#      RELIABILITY_ASAN_DIRS="io;data;fuzz;faults" adds them here (that builds the whole CLI with ASan);
#   2. a clang libFuzzer build (-fsanitize=fuzzer,address,undefined) of every fuzz target, each run for
#      MINIPUZZLE_FUZZ_SECONDS (default 20) from its seed corpus; any crash, leak, timeout, sanitizer report or
#      non-mp::Error exception fails the run, and the reproducer is left in BUILD/tests/fuzz/artifacts/.
# Environment: ASAN_BUILD_DIR (default build-asan), FUZZ_BUILD_DIR (default build-fuzz), MINIPUZZLE_FUZZ_SECONDS,
# RELIABILITY_SKIP=asan|fuzz to run only the other half. Needs clang-14 and its compiler-rt (scripts/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
asan_build="${ASAN_BUILD_DIR:-$root/build-asan}"
fuzz_build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
fuzz_seconds="${MINIPUZZLE_FUZZ_SECONDS:-20}"
skip="${RELIABILITY_SKIP:-}"
jobs="$(nproc)"
venv="$("$root/scripts/setup.sh")"
py="$venv/bin/python"
torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/minipuzzle/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# halt_on_error: a UBSan report fails the test instead of scrolling by. Leak checking stays on.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
start=$SECONDS

if [ "$skip" != "asan" ]; then
  echo "reliability: ASan+UBSan build in $asan_build (io, data, fuzz seed replays, fault injection)" >&2
  asan_dirs="${RELIABILITY_ASAN_DIRS:-io;data;fuzz}"
  # -O1 -g1: ASan's recommended optimisation with line tables only; much quicker to build than -O2 -g.
  cmake -S "$root" -B "$asan_build" -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" \
    -DMINIPUZZLE_SANITIZE=ON \
    -DMINIPUZZLE_CUDA=OFF -DCMAKE_PREFIX_PATH="$torch_prefix" -DMINIPUZZLE_PYTHON="$py" \
    "-DMINIPUZZLE_TEST_DIRS=$asan_dirs" >/dev/null
  # Every test program of those directories (test_* and fuzz_*), and what they depend on; nothing else.
  test_targets=$(ninja -C "$asan_build" -t targets all | sed -n 's/^\(\(test\|fuzz\)_[A-Za-z0-9_]*\): .*/\1/p' | sort -u)
  # shellcheck disable=SC2086
  cmake --build "$asan_build" -j "$jobs" --target $test_targets
  # Tests that drive the minipuzzle CLI (cli_*) run in the ordinary build; this one builds test programs only.
  (cd "$asan_build" && ctest --output-on-failure -j "$jobs" -LE gpu -E "^cli_")
  echo "reliability: sanitized tests passed ($((SECONDS - start)) s so far)" >&2
fi

if [ "$skip" != "fuzz" ]; then
  clangxx="$(command -v clang++-14 || command -v clang++ || true)"
  [ -n "$clangxx" ] || { echo "reliability: clang++ not found (scripts/setup.sh installs clang-14)" >&2; exit 1; }
  echo "reliability: libFuzzer build in $fuzz_build, ${fuzz_seconds} s per target" >&2
  if [ ! -f "$fuzz_build/build.ninja" ]; then
    cmake -S "$root" -B "$fuzz_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$clangxx" \
      -DMINIPUZZLE_CUDA=OFF -DMINIPUZZLE_FUZZ=ON -DMINIPUZZLE_TEST_DIRS=fuzz \
      "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
      -DCMAKE_PREFIX_PATH="$torch_prefix" -DMINIPUZZLE_PYTHON="$py" >/dev/null
  fi
  cmake "$fuzz_build" -DMINIPUZZLE_FUZZ_SECONDS="$fuzz_seconds" >/dev/null
  targets=$(cd "$root/tests/fuzz" && ls fuzz_*.cpp | sed 's/\.cpp$//')
  # shellcheck disable=SC2086
  cmake --build "$fuzz_build" -j "$jobs" --target $targets
  (cd "$fuzz_build" && ctest --output-on-failure -j "$jobs" -L '^fuzz$')
  # Executions per target, from libFuzzer's final statistics in the ctest log.
  python3 - "$fuzz_build/Testing/Temporary/LastTest.log" <<'PY' || true
import re, sys
name = None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\d+/\d+ Test: (\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"stat::number_of_executed_units: (\d+)", line)
    if m and name:
        print(f"reliability: {name}: {m.group(1)} executions, no finding")
PY
fi
echo "reliability: all checks passed in $((SECONDS - start)) s" >&2
