#!/usr/bin/env bash
# The Python package's tests (issue 23), run by `make test`: installs python/ (minipuzzle_kernels, the KD kernels
# as torch custom ops) into the project venv when its sources changed, then runs its pytest suite on CPU.
# MINIPUZZLE_KERNELS_CUDA=0 (the default here): CPU kernels only; CI has no GPU and nvcc on the KD kernels takes
# minutes (scripts/gpu/py_kernels.sh builds and tests the CUDA flavour on the GPU host).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup.sh")"
py="$venv/bin/python"
export MINIPUZZLE_KERNELS_CUDA="${MINIPUZZLE_KERNELS_CUDA:-0}"

# pytest, and wheel (setuptools 65's pip build needs it), are pinned here, not in requirements-test.txt: that file's
# hash names the venv, so adding to it would make every checkout rebuild the whole environment (torch included).
"$py" -c 'import pytest' 2>/dev/null || "$py" -m pip install -q "pytest==9.2.0"
"$py" -c 'import wheel' 2>/dev/null || "$py" -m pip install -q "wheel==0.48.0"

# Reinstall only when something the build reads changed: a hash of those files (and the CUDA switch) is the stamp.
sources=$(cd "$root" && find python/setup.py python/pyproject.toml python/minipuzzle_kernels src/kernels \
  include/minipuzzle -type f \( -name '*.py' -o -name '*.toml' -o -name '*.cpp' -o -name '*.h' -o -name '*.cu' \
  -o -name '*.cuh' \) -not -path '*/__pycache__/*' | LC_ALL=C sort)
hash=$(cd "$root" && { echo "cuda=$MINIPUZZLE_KERNELS_CUDA"; sha256sum $sources; } | sha256sum | cut -c1-16)
stamp="$venv/.minipuzzle-kernels-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
  echo "python_tests: building minipuzzle_kernels into $venv (sources changed)" >&2
  # ccache through its compiler links (cpp_extension calls plain c++), sharing build.sh's cache.
  [ -d /usr/lib/ccache ] && export PATH="/usr/lib/ccache:$PATH"
  export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/minipuzzle/ccache}" CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  log="$(mktemp)"
  if ! "$py" -m pip install --no-build-isolation --no-deps --force-reinstall "$root/python" >"$log" 2>&1; then
    tail -40 "$log"; rm -f "$log"
    echo "python_tests: building minipuzzle_kernels failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$hash" > "$stamp"
fi

# From the tests' folder, so `import minipuzzle_kernels` is the installed package, not python/'s sources.
# pytest's exit 5 (no tests collected) fails this script like any other non-zero exit.
cd "$root/python/tests"
"$py" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} .
