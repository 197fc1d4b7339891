#!/usr/bin/env bash
# Throughput of cowvol's NBD export beside its peers, measured in one run on
# one disk with fio's nbd engine (libnbd): qemu-nbd on a raw file, qemu-nbd
# on a qcow2 file, nbdkit's file plugin, and `cowvol nbd`.
#
#   bash crates/cowvol-nbd/bench/nbd-vs-peers.sh [DIR]   (default /var/tmp/cowvol-nbd-bench)
#
# Env: SIZE (image size, default 1G), RUNTIME (seconds per fio run, default 5),
# RUNS (runs per cell, median reported, default 5), COWVOL (the binary to
# measure, default this tree's release build), BASE (optional second cowvol
# binary, e.g. a build of an older commit, measured as one more column on a
# store of its own), WORKLOADS (a subset of the default list, same syntax). Needs fio, qemu-utils, nbdkit, libnbd-bin
# (.ci/deps-nbd.sh installs them) and a release build.
#
# Every server runs for the whole measurement and the cells are interleaved:
# each round runs every workload once against every server (the order of
# the servers rotating from one workload to the next), so a slow minute on
# the shared machine lands on all of them alike. The load average is printed
# with every round. Prints a markdown table (MiB/s for 1 MiB sequential,
# IOPS for 4 KiB random): medians of RUNS rounds, and each ratio to qemu-nbd
# the median of the ratios within a round. Not run by the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIR=${1:-/var/tmp/cowvol-nbd-bench}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-5}
RUNS=${RUNS:-5}
for t in fio qemu-nbd qemu-img nbdkit; do
  command -v "$t" >/dev/null || { echo "$t missing: run .ci/deps-nbd.sh" >&2; exit 1; }
done
if [ -z "${COWVOL:-}" ]; then
  cargo build --release -q -p cowvol-cli
  COWVOL=$PWD/target/release/cowvol
fi
BASE=${BASE:-}

TARGETS="raw qcow2 nbdkit cowvol"
[ -n "$BASE" ] && TARGETS="$TARGETS base"

rm -rf "$DIR" && mkdir -p "$DIR"
declare -A PID
stop() { # stop TARGET
  local p=${PID[$1]:-}
  if [ -n "$p" ]; then
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    PID[$1]=
  fi
}
stop_all() { for t in "${!PID[@]}"; do stop "$t"; done; }
trap stop_all EXIT

wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; exit 1; }

start() { # start TARGET: serves export "disk" on $DIR/TARGET.sock
  local sock="$DIR/$1.sock"
  rm -f "$sock"
  case $1 in
    raw) qemu-nbd -t -f raw --cache=writeback -k "$sock" -x disk "$DIR/disk.raw" & ;;
    qcow2) qemu-nbd -t -f qcow2 --cache=writeback -k "$sock" -x disk "$DIR/disk.qcow2" & ;;
    nbdkit) nbdkit -f -U "$sock" -e disk file "$DIR/nbdkit.raw" & ;;
    cowvol) "$COWVOL" --store "$DIR/store" -q nbd --listen "unix:$sock" & ;;
    base) "$BASE" --store "$DIR/store-base" -q nbd --listen "unix:$sock" & ;;
  esac
  PID[$1]=$!
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
load() { cut -d' ' -f1-3 /proc/loadavg; }
fill() { fio --name=fill --ioengine=nbd --uri="$(uri "$1")" --rw=write --bs=1M --iodepth=8 --size="$SIZE" >/dev/null 2>&1; }

# Prepare: every target holds the same fully written image, so no target
# reads holes.
echo "preparing $SIZE images in $DIR" >&2
qemu-img create -q -f raw "$DIR/disk.raw" "$SIZE"
start raw && fill raw && stop raw
cp --sparse=never "$DIR/disk.raw" "$DIR/nbdkit.raw"
qemu-img convert -f raw -O qcow2 "$DIR/disk.raw" "$DIR/disk.qcow2"
for t in cowvol base; do
  case " $TARGETS " in *" $t "*) ;; *) continue ;; esac
  bin=$COWVOL store=$DIR/store
  [ "$t" = base ] && bin=$BASE store=$DIR/store-base
  "$bin" --store "$store" -q init
  "$bin" --store "$store" -q volume create disk --size "$SIZE"
  start "$t" && fill "$t" && stop "$t"
done
sync

WORKLOADS=${WORKLOADS:-"randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32 read:1M:1 read:1M:32 write:1M:1 write:1M:32"}
read -ra TS <<<"$TARGETS"
declare -A VALS RESULT
for t in "${TS[@]}"; do start "$t"; done
rot=0
for r in $(seq "$RUNS"); do
  echo "round $r, load average $(load)" >&2
  for w in $WORKLOADS; do
    IFS=: read -r rw bs qd <<<"$w"
    for k in $(seq 0 $((${#TS[@]} - 1))); do
      t=${TS[$(((k + rot) % ${#TS[@]}))]}
      VALS[$t,$w]="${VALS[$t,$w]:-} $(run_fio "$t" "$rw" "$bs" "$qd")"
    done
    rot=$((rot + 1))
  done
done
echo "after the rounds, load average $(load)" >&2
for w in $WORKLOADS; do
  for t in "${TS[@]}"; do
    # shellcheck disable=SC2086
    RESULT[$t,$w]=$(median ${VALS[$t,$w]})
    echo "$t $w:${VALS[$t,$w]} -> ${RESULT[$t,$w]}" >&2
  done
done

# 4 KiB random writes right after a snapshot: every first write to a block
# after the snapshot has to preserve the old block. qcow2 takes an internal
# snapshot with its server stopped; cowvol snapshots through the control
# socket while serving.
SNAP_TARGETS="qcow2 cowvol"
[ -n "$BASE" ] && SNAP_TARGETS="$SNAP_TARGETS base"
for i in $(seq "$RUNS"); do
  echo "snapshot round $i, load average $(load)" >&2
  for t in $SNAP_TARGETS; do
    case $t in
      qcow2) stop qcow2 && qemu-img snapshot -c "s$i" "$DIR/disk.qcow2" && start qcow2 ;;
      cowvol) "$COWVOL" --store "$DIR/store" -q snapshot create disk "s$i" ;;
      base) "$BASE" --store "$DIR/store-base" -q snapshot create disk "s$i" ;;
    esac
    VALS[$t,snap]="${VALS[$t,snap]:-} $(run_fio "$t" randwrite 4k 32)"
  done
done
for t in $SNAP_TARGETS; do
  # shellcheck disable=SC2086
  RESULT[$t,snap]=$(median ${VALS[$t,snap]})
  echo "$t after snapshot:${VALS[$t,snap]} -> ${RESULT[$t,snap]}" >&2
done
echo "done, load average $(load)" >&2

# The table: each cell the median of its runs; each ratio the median of the
# ratios within a round (runs seconds apart compared only with each other),
# which cancels the drift of a shared machine better than a ratio of medians.
for k in "${!VALS[@]}"; do echo "$k${VALS[$k]}"; done >"$DIR/runs.txt"
python3 - "$DIR/runs.txt" "$WORKLOADS" "$TARGETS" <<'PY'
import statistics, sys
vals = {}
for line in open(sys.argv[1]):
    key, *runs = line.split()
    t, w = key.split(",")
    vals[t, w] = [float(x) for x in runs]
workloads, targets = sys.argv[2].split(), sys.argv[3].split()
def cell(t, w):
    return str(round(statistics.median(vals[t, w]))) if (t, w) in vals else "-"
def ratio(a, b, w):
    if (a, w) not in vals or (b, w) not in vals:
        return "-"
    pairs = [x / y for x, y in zip(vals[a, w], vals[b, w]) if y]
    return f"{statistics.median(pairs):.2f}" if pairs else "-"
names = {"raw": "qemu-nbd raw", "qcow2": "qemu-nbd qcow2", "nbdkit": "nbdkit file", "cowvol": "cowvol", "base": "cowvol (base)"}
mine = [t for t in ("base", "cowvol") if t in targets]
cols = ["raw", "qcow2", "nbdkit"] + mine
print()
print("| workload | " + " | ".join(names[t] for t in cols) + " | " + " | ".join(f"{names[t]} / raw" for t in mine) + " |")
print("| --- |" + " ---: |" * (len(cols) + len(mine)))
for w in workloads:
    rw, bs, qd = w.split(":")
    unit = "MiB/s" if bs == "1M" else "IOPS"
    row = [f"{bs} {rw} QD{qd} ({unit})"] + [cell(t, w) for t in cols] + [ratio(t, "raw", w) for t in mine]
    print("| " + " | ".join(row) + " |")
row = ["4k randwrite QD32 right after a snapshot (IOPS)", "-", cell("qcow2", "snap"), "-"]
row += [cell(t, "snap") for t in mine] + [f"/ qcow2: {ratio(t, 'qcow2', 'snap')}" for t in mine]
print("| " + " | ".join(row) + " |")
PY
