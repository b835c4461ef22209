#!/usr/bin/env bash
# Speed and memory of `minipuzzle prune` against copying the same files with `cp -r`.
#
# usage: scripts/bench_prune.sh [BUILD_DIR] [full|mid|small]
#   full  (default): a synthetic bf16 checkpoint of about 8.6 GB (Nemotron-H-8B's widths, 24 layers);
#   mid: the same widths, 8 layers (about 4 GB: small disks and 2-core machines);
#   small: the same pipeline on a few MB (the CI smoke run; timings there mean little).
# REF_BIN=/path/to/another/minipuzzle also times that build's prune on the same target and checks that both
# outputs are byte for byte the same (e.g. the main branch's build, before a change to the pruner).
# Work files go to $BENCH_DIR (default /tmp/mp-bench-prune-<scale>) and are removed at the end unless KEEP=1.
#
# Two prunes are timed: a Minitron-like target (hidden 7/8, FFN 3/4, Mamba heads 3/4, 2 layers dropped by
# importance; every tensor is gathered) and the identity target (a pure streamed copy). `cp -r` does not flush
# to disk, while the pruner fsyncs every shard before renaming its output, so cp is timed both alone and followed
# by `sync` of the copied files; the parent is flushed before any timing. Peak RSS comes from /usr/bin/time -v.
# Prints one JSON object on stdout.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
scale="${2:-full}"
work="${BENCH_DIR:-/tmp/mp-bench-prune-$scale}"
case "$scale" in
  full) synth_args=() ;;
  mid) synth_args=(--layers 8) ;;
  small) synth_args=(--layers 6 --hidden 256 --vocab 4096) ;;
  *) echo "scale must be full, mid or small" >&2; exit 2 ;;
esac
[ -x "$build/minipuzzle" ] && [ -x "$build/bench/bench_prune_synth" ] || {
  echo "build $build first (targets minipuzzle and bench_prune_synth)" >&2; exit 2; }

rm -rf "$work"
mkdir -p "$work"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
synth=$("$build/bench/bench_prune_synth" --out "$work" "${synth_args[@]}" 2>"$work/synth.log")
sync "$work"/parent/*  # the parent's dirty pages are flushed before anything is timed

time_cp() {  # prints "cp_seconds cp_plus_sync_seconds"
  local t0 t1 t2
  t0=$(now); cp -r "$work/parent" "$work/copy"; t1=$(now); sync "$work"/copy/*; t2=$(now)
  rm -rf "$work/copy"
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t0" | bc -l)"
}

time_prune() {  # $1: label, rest: extra prune args; prints "seconds max_rss_kb"; PRUNE_BIN overrides the binary
  local label="$1"; shift
  local t0 t1
  t0=$(now)
  MINIPUZZLE_PROGRESS=off /usr/bin/time -v -o "$work/time_$label.txt" \
    "${PRUNE_BIN:-$build/minipuzzle}" prune "$work/parent" -o "$work/out_$label" "$@" \
    --summary-json "$work/summary_$label.json" 2>"$work/prune_$label.log"
  t1=$(now)
  local rss
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time_$label.txt")
  echo "$(echo "$t1 - $t0" | bc -l) $rss"
}

same_bytes() {  # $1 $2: checkpoint directories; "true" when every safetensors file and the index are identical
  local f
  for f in "$1"/*.safetensors "$1"/model.safetensors.index.json; do
    [ -e "$f" ] || continue
    cmp -s "$f" "$2/$(basename "$f")" || { echo false; return; }
  done
  echo true
}

read -r cp1 cps1 < <(time_cp)
read -r pr_s pr_rss < <(time_prune minitron --scores "$work/scores.json" --target "$work/target.json")
out_bytes=$(du -sb "$work/out_minitron" | cut -f1)
# One thread, when the binary has the flag: what the parallel pieces gain on this machine, and the same bytes.
t1_s=0 t1_rss=0 t1_same=null kw_s=0 kw_rss=0 ref_s=0 ref_rss=0 ref_same=null
if "$build/minipuzzle" prune --help 2>&1 | grep -q -- --threads; then
  read -r t1_s t1_rss < <(time_prune threads1 --scores "$work/scores.json" --target "$work/target.json" --threads 1)
  t1_same=$(same_bytes "$work/out_minitron" "$work/out_threads1")
  rm -rf "$work/out_threads1"
  # Writeback started early by the flusher thread (sync_file_range): which is faster depends on the disk.
  read -r kw_s kw_rss < <(MINIPUZZLE_WRITEBACK=early time_prune early_writeback --scores "$work/scores.json" \
    --target "$work/target.json")
  rm -rf "$work/out_early_writeback"
fi
if [ -n "${REF_BIN:-}" ]; then
  read -r ref_s ref_rss < <(PRUNE_BIN="$REF_BIN" time_prune reference --scores "$work/scores.json" --target "$work/target.json")
  ref_same=$(same_bytes "$work/out_minitron" "$work/out_reference")
  rm -rf "$work/out_reference"
fi
rm -rf "$work/out_minitron"
read -r cp2 cps2 < <(time_cp)
read -r id_s id_rss < <(time_prune identity)
rm -rf "$work/out_identity"

python3 - "$synth" "$cp1" "$cps1" "$cp2" "$cps2" "$pr_s" "$pr_rss" "$id_s" "$id_rss" "$out_bytes" "$scale" \
  "$work/summary_minitron.json" "$t1_s" "$t1_rss" "$t1_same" "$ref_s" "$ref_rss" "$ref_same" "$(nproc)" "$kw_s" <<'EOF'
import json, sys
synth = json.loads(sys.argv[1])
cp1, cps1, cp2, cps2, pr_s, pr_rss, id_s, id_rss, out_bytes = map(float, sys.argv[2:11])
t1_s, t1_rss, t1_same, ref_s, ref_rss, ref_same = (float(sys.argv[13]), float(sys.argv[14]), json.loads(sys.argv[15]),
                                                   float(sys.argv[16]), float(sys.argv[17]), json.loads(sys.argv[18]))
cp, cps = min(cp1, cp2), min(cps1, cps2)
summary = json.load(open(sys.argv[12]))
gb = 1e9
print(json.dumps({
    "bench": "prune_speed", "scale": sys.argv[11],
    "parent_bytes": synth["bytes"], "parent_gb": synth["bytes"] / gb, "parent_parameters": synth["parameters"],
    "pruned_bytes": int(out_bytes), "pruned_parameters": summary["parameters"]["after"],
    "cp_seconds": [cp1, cp2], "cp_plus_sync_seconds": [cps1, cps2],
    "prune_seconds": pr_s, "prune_peak_rss_gib": pr_rss / 2**20,
    "identity_prune_seconds": id_s, "identity_prune_peak_rss_gib": id_rss / 2**20,
    "ratio_prune_vs_cp": pr_s / cp, "ratio_prune_vs_cp_plus_sync": pr_s / cps,
    "ratio_identity_vs_cp": id_s / cp, "ratio_identity_vs_cp_plus_sync": id_s / cps,
    "cores": int(sys.argv[19]),
    "early_writeback_prune_seconds": float(sys.argv[20]) or None,
    "one_thread": None if t1_s == 0 else {"prune_seconds": t1_s, "peak_rss_gib": t1_rss / 2**20,
                                          "parallel_speedup": t1_s / pr_s, "same_bytes": t1_same},
    "reference_binary": None if ref_s == 0 else {"prune_seconds": ref_s, "peak_rss_gib": ref_rss / 2**20,
                                                 "speedup": ref_s / pr_s, "same_bytes": ref_same},
    "criteria": {"time_at_most_1.3x_cp": pr_s <= 1.3 * cp, "time_at_most_1.3x_cp_plus_sync": pr_s <= 1.3 * cps,
                 "time_at_most_1.5x_cp": pr_s <= 1.5 * cp,
                 "peak_rss_at_most_2GB": pr_rss * 1024 <= 2 * gb and id_rss * 1024 <= 2 * gb},
}, indent=1))
EOF
