#!/usr/bin/env bash
# A one-command `cowvol snapshot create` (a whole process: exec, open,
# snapshot, close) beside `qemu-img snapshot -c` on a qcow2 image of the same
# data, taking turns. Each size gets a volume imported from random data.
#
#   crates/cowvol-cli/bench/snapshot-cmd-vs-qemu-img.sh [SIZE...]   (default 64M 1G)
#
# COWVOL_BINS: space-separated cowvol binaries to compare (for example an
# older build beside this one) [default: target/release/cowvol].
# WORK: scratch directory on the disk to measure [default: a temp dir].
set -euo pipefail
bins=(${COWVOL_BINS:-target/release/cowvol})
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }
[ $# -gt 0 ] || set -- 64M 1G
for size in "$@"; do
  bytes=$(numfmt --from=iec "$size")
  img="$work/img.raw"
  head -c "$bytes" /dev/urandom > "$img"
  for i in "${!bins[@]}"; do
    "${bins[$i]}" -q --store "$work/store$i" init
    "${bins[$i]}" -q --store "$work/store$i" volume import v "$img"
  done
  qemu-img convert -O qcow2 "$img" "$work/img.qcow2"
  rm -f "$img"
  sync
  declare -A runs=()
  for round in 1 2 3 4 5 6; do
    for i in "${!bins[@]}"; do
      runs[$i]+=" $(ms "${bins[$i]}" -q --store "$work/store$i" snapshot create v "s$round")"
    done
    runs[qemu]+=" $(ms qemu-img snapshot -c "s$round" "$work/img.qcow2")"
  done
  for i in "${!bins[@]}"; do
    # shellcheck disable=SC2086
    echo "$size ${bins[$i]}: runs${runs[$i]} ms, median $(median ${runs[$i]}) ms"
  done
  # shellcheck disable=SC2086
  echo "$size qemu-img snapshot -c: runs${runs[qemu]} ms, median $(median ${runs[qemu]}) ms"
  rm -rf "$work"/store* "$work/img.qcow2"
  unset runs
done
