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
# ROUNDS: snapshots taken by each side, taking turns [default: 11].
set -euo pipefail
bins=(${COWVOL_BINS:-target/release/cowvol})
work="${WORK:-$(mktemp -d)}"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
# Wall time of one command in ms (two decimals), read from bash's own clock
# so that no timing process is counted in it.
ms() {
  local t0 t1
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>&1
  t1=${EPOCHREALTIME/./}
  printf '%d.%02d' $(((t1 - t0) / 1000)) $((((t1 - t0) % 1000) / 10))
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {printf "%.2f\n", (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }
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
  for round in $(seq 1 "${ROUNDS:-11}"); do
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
