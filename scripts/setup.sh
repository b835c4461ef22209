#!/usr/bin/env bash
# Installs what building and testing minipuzzle needs, idempotently: Debian -dev packages, and a Python
# virtual environment holding the pinned torch wheel (our LibTorch) plus transformers/safetensors/tokenizers
# for the reference tests. The product binary itself never runs Python.
#
# The environment lives outside the checkout (MINIPUZZLE_VENV, default ~/.cache/minipuzzle/venv-<hash of the
# requirements>) so fresh clones reuse it; a stamp file makes a second run a no-op.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements-test.txt"

apt_packages=(build-essential cmake ninja-build ccache python3-venv libeigen3-dev libcli11-dev
              nlohmann-json3-dev catch2 libpcre2-dev libicu-dev
              clang-14 libclang-rt-14-dev)  # clang + libFuzzer/ASan runtimes: scripts/reliability.sh
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

hash=$(sha256sum "$req" | cut -c1-12)
venv="${MINIPUZZLE_VENV:-$HOME/.cache/minipuzzle/venv-$hash}"
if [ ! -f "$venv/.minipuzzle-ready" ]; then
  echo "setup: creating Python environment $venv (torch wheel as LibTorch, reference packages)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
  touch "$venv/.minipuzzle-ready"
fi
echo "$venv"
