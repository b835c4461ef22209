#!/usr/bin/env bash
# The README's first command (make demo): set-up, build, the demo corpus from a Debian package (the Python
# documentation's reStructuredText sources, python3.11-doc), then the whole pipeline on the embedded recipe.
# Uses the GPU when there is one (DEVICE=cuda), else the CPU. Re-running resumes where it stopped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
"$root/scripts/build.sh" "$build"
docs=$(ls -d /usr/share/doc/python3*/html/_sources 2>/dev/null | head -1 || true)
if [ -z "$docs" ]; then
  echo "demo: installing the demo corpus (Debian package python3.11-doc)" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3.11-doc >/dev/null
  docs=$(ls -d /usr/share/doc/python3*/html/_sources | head -1)
fi
run="${RUN_DIR:-$root/runs/demo}"
mkdir -p "$run/data"
if [ ! -f "$run/data/corpus.train.tokens" ]; then
  find "$docs/tutorial" "$docs/library" "$docs/reference" -name '*.txt' | sort > "$run/data/files.txt"
  "$build/minipuzzle" data $(cat "$run/data/files.txt") --tokenizer byte --valid-fraction 0.02 -o "$run/data/corpus"
fi
device="${DEVICE:-auto}"
if [ "$device" = auto ]; then
  device=cpu
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && device=cuda
fi
"$build/minipuzzle" pipeline --config "$root/configs/recipes/demo.json" --run-dir "$run" \
  --set data="$run/data/corpus" --set device="$device" "${@:2}"
