#!/usr/bin/env bash
# Set-up (idempotent), configure and build. Usage: scripts/build.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"; shift || true
venv="$("$root/scripts/setup.sh")"
py="$venv/bin/python"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/minipuzzle/ccache}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"  # cache hits across clones at different paths
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
if [ ! -f "$build/build.ninja" ]; then
  torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DMINIPUZZLE_PYTHON="$py" "$@" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
