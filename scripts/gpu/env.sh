#!/usr/bin/env bash
# Sourced by scripts/gpu/*.sh on the GPU host: header-only dependencies the image may lack (carried from a
# Debian machine in .carry/, never overwriting what is there), then a CUDA build directory (build-gpu).
set -euo pipefail
if [ -d .carry/root ]; then cp -rn .carry/root/* / 2>/dev/null || true; ldconfig 2>/dev/null || true; fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
PY="$(command -v python3)"
if [ ! -f build-gpu/build.ninja ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
    -DMINIPUZZLE_PYTHON="$PY" -DMINIPUZZLE_CUDA=ON > "$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
fi
# gpu_build TARGET...: builds only the named targets (helpers' work in progress may not compile yet).
gpu_build() { cmake --build build-gpu -j "$(nproc)" --target "$@" 2>&1 | tail -30; }
