#!/usr/bin/env bash
# Throughput of cowvol's NBD export beside its peers, measured in one run on
# one disk with fio's nbd engine (libnbd): qemu-nbd on a raw file, qemu-nbd
# on a qcow2 file, nbdkit's file plugin, and `cowvol nbd`.
#
#   bash crates/cowvol-nbd/bench/nbd-vs-peers.sh [DIR]   (default /var/tmp/cowvol-nbd-bench)
#
# Env: SIZE (image size, default 1G), RUNTIME (seconds per fio run, default 5),
# RUNS (runs per cell, median reported, default 3). Needs fio, qemu-utils,
# nbdkit, libnbd-bin (.ci/deps-nbd.sh installs them) and a release build.
# Prints a markdown table (MiB/s for 1 MiB sequential, IOPS for 4 KiB random).
# Not run by the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIR=${1:-/var/tmp/cowvol-nbd-bench}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-5}
RUNS=${RUNS:-3}
for t in fio qemu-nbd qemu-img nbdkit; do
  command -v "$t" >/dev/null || { echo "$t missing: run .ci/deps-nbd.sh" >&2; exit 1; }
done
cargo build --release -q -p cowvol-cli
COWVOL=$PWD/target/release/cowvol

rm -rf "$DIR" && mkdir -p "$DIR"
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; exit 1; }

start() { # start TARGET: serves export "disk" on $DIR/TARGET.sock
  local sock="$DIR/$1.sock"
  rm -f "$sock"
  case $1 in
    raw) qemu-nbd -t -f raw --cache=writeback -k "$sock" -x disk "$DIR/disk.raw" & ;;
    qcow2) qemu-nbd -t -f qcow2 --cache=writeback -k "$sock" -x disk "$DIR/disk.qcow2" & ;;
    nbdkit) nbdkit -f -U "$sock" -e disk file "$DIR/nbdkit.raw" & ;;
    cowvol) "$COWVOL" --store "$DIR/store" -q nbd --listen "unix:$sock" & ;;
  esac
  SERVER_PID=$!
  wait_sock "$sock"
}

uri() { echo "nbd+unix:///disk?socket=$DIR/$1.sock"; }

# fio TARGET RW BS QD -> prints IOPS (4k) or MiB/s (1M)
run_fio() {
  local out="$DIR/fio.json"
  fio --name=b --ioengine=nbd --uri="$(uri "$1")" --rw="$2" --bs="$3" --iodepth="$4" \
    --size="$SIZE" --runtime="$RUNTIME" --time_based --randrepeat=0 --norandommap \
    --output-format=json --output="$out" >/dev/null 2>&1
  python3 - "$out" "$2" "$3" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["read"] if "read" in sys.argv[2] else j["write"]
print(round(side["bw_bytes"] / 2**20) if sys.argv[3] == "1M" else round(side["iops"]))
EOF
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Prepare: every target holds the same fully written image, so no target
# reads holes.
echo "preparing $SIZE images in $DIR" >&2
qemu-img create -q -f raw "$DIR/disk.raw" "$SIZE"
"$COWVOL" --store "$DIR/store" -q init
"$COWVOL" --store "$DIR/store" -q volume create disk --size "$SIZE"
start raw
fio --name=fill --ioengine=nbd --uri="$(uri raw)" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null 2>&1
stop_server
cp --sparse=never "$DIR/disk.raw" "$DIR/nbdkit.raw"
qemu-img convert -f raw -O qcow2 "$DIR/disk.raw" "$DIR/disk.qcow2"
start cowvol
fio --name=fill --ioengine=nbd --uri="$(uri cowvol)" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null 2>&1
stop_server
sync

TARGETS="raw qcow2 nbdkit cowvol"
WORKLOADS="randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32 read:1M:1 read:1M:32 write:1M:1 write:1M:32"
declare -A RESULT
for t in $TARGETS; do
  start "$t"
  for w in $WORKLOADS; do
    IFS=: read -r rw bs qd <<<"$w"
    vals=()
    for _ in $(seq "$RUNS"); do vals+=("$(run_fio "$t" "$rw" "$bs" "$qd")"); done
    RESULT[$t,$w]=$(median "${vals[@]}")
    echo "$t $w: ${vals[*]} -> ${RESULT[$t,$w]}" >&2
  done
  stop_server
done

# 4 KiB random writes right after a snapshot: every first write to a block
# after the snapshot has to preserve the old block.
for t in qcow2 cowvol; do
  vals=()
  for i in $(seq "$RUNS"); do
    if [ "$t" = qcow2 ]; then
      qemu-img snapshot -c "s$i" "$DIR/disk.qcow2"
      start qcow2
    else
      start cowvol
      "$COWVOL" --store "$DIR/store" -q snapshot create disk "s$i"
    fi
    vals+=("$(run_fio "$t" randwrite 4k 32)")
    stop_server
  done
  RESULT[$t,snap]=$(median "${vals[@]}")
  echo "$t after snapshot: ${vals[*]} -> ${RESULT[$t,snap]}" >&2
done

ratio() { python3 -c "print(f'{$1 / $2:.2f}' if $2 else '-')"; }
echo
echo "| workload | qemu-nbd raw | qemu-nbd qcow2 | nbdkit file | cowvol | cowvol / raw |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for w in $WORKLOADS; do
  IFS=: read -r rw bs qd <<<"$w"
  unit=IOPS; [ "$bs" = 1M ] && unit=MiB/s
  echo "| $bs $rw QD$qd ($unit) | ${RESULT[raw,$w]} | ${RESULT[qcow2,$w]} | ${RESULT[nbdkit,$w]} | ${RESULT[cowvol,$w]} | $(ratio "${RESULT[cowvol,$w]}" "${RESULT[raw,$w]}") |"
done
echo "| 4k randwrite QD32 right after a snapshot (IOPS) | - | ${RESULT[qcow2,snap]} | - | ${RESULT[cowvol,snap]} | cowvol / qcow2: $(ratio "${RESULT[cowvol,snap]}" "${RESULT[qcow2,snap]}") |"
