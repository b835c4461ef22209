#!/usr/bin/env bash
# Builds .carry/ on a Debian machine (this project's dev/CI kind) for the GPU host, whose image lacks Debian's
# header packages: .carry/root/ holds the unpacked packages that scripts/gpu/env.sh copies into / there (never
# overwriting a file the image has), .carry/data/ the corpora the GPU scripts read when ../shared is absent.
# Idempotent; pass it to the device tool as `carry: [".carry"]`. Usage: scripts/gpu/make_carry.sh [SHARED_DATA_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
carry="$root/.carry"
data_src="${1:-$root/../shared/data}"
# Header-only libraries the build needs (Eigen, CLI11, nlohmann-json, Catch2 with its CMake config) and PCRE2
# for tokenizer.json pre-tokenizers (headers, pkg-config file and the library it links).
packages=(libeigen3-dev libcli11-dev nlohmann-json3-dev catch2 libpcre2-dev libpcre2-8-0)
stamp="$carry/.packages"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${packages[*]}" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock | head -1)" ] || apt-get update -qq
  (cd "$work" && apt-get download -qq "${packages[@]}")
  rm -rf "$carry/root"
  mkdir -p "$carry/root"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$carry/root"; done
  rm -rf "$carry/root/usr/share/doc" "$carry/root/usr/share/man"
  echo "${packages[*]}" > "$stamp"
fi
mkdir -p "$carry/data"
for f in tinyshakespeare.txt wikitext-2-valid.txt; do
  if [ -f "$data_src/$f" ] && [ ! -f "$carry/data/$f" ]; then cp "$data_src/$f" "$carry/data/$f"; fi
done
# Pure-Python wheels the GPU host's python3 may lack, installed there offline into a private folder by
# scripts/gpu/py_kernels.sh: pytest (with its dependencies) and wheel.
if [ ! -f "$carry/wheels/.done" ]; then
  "$("$root/scripts/setup.sh")/bin/python" -m pip download -q --only-binary=:all: -d "$carry/wheels" \
    pytest==9.2.0 wheel==0.48.0 && touch "$carry/wheels/.done"
fi
du -sh "$carry" | sed 's/^/carry: /'
