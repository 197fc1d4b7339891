#!/usr/bin/env bash
# Load test of `cowvol serve` on loopback with wrk: snapshot create, get
# and list (a 50-row page at a random offset) with SNAPSHOTS snapshots in
# the store. Prints requests/s and p99 for each as a markdown table.
#
#   .ci/server-load.sh                  # LOAD_SECS=10 SNAPSHOTS=10000
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${LOAD_SECS:-10}"
total="${SNAPSHOTS:-10000}"
port="${LOAD_PORT:-7498}"
conns="${LOAD_CONNS:-8}"
lua=crates/cowvol-server/load
command -v wrk >/dev/null || { echo "wrk is missing: run .ci/deps-server.sh"; exit 1; }

cargo build --release -q -p cowvol-cli
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export TOKEN="load-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s bench admin\n' "$TOKEN" > "$work/tokens"
chmod 600 "$work/tokens"
./target/release/cowvol --store "${LOAD_STORE:-$work/store}" serve --listen "127.0.0.1:$port" \
  --tokens "$work/tokens" --default-volume-size 1G > "$work/server.log" 2>&1 &
server_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 50); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.2; done

export VOLUMES=64 THREADS=2
for i in $(seq "$VOLUMES"); do
  curl -sf -X POST -H "Authorization: Bearer $TOKEN" -d "{\"name\":\"load-$i\"}" "$base/api/v1/sandboxvolumes" >/dev/null
done

count() { curl -sf -H "Authorization: Bearer $TOKEN" "$base/api/v1/snapshots?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["total"])'; }
summary() { # name file
  local rps p99 errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$2")
  p99=$(awk '$1 == "99%" {print $2}' "$2")
  errors=$(awk '/Non-2xx/ {print $5}' "$2")
  printf '| %s | %s | %s | %s |\n' "$1" "${rps:-?}" "${p99:-?}" "${errors:-0}"
}

# Fill the store first, so every figure is taken with $total snapshots
# present. wrk runs for its whole duration even when its threads stop at
# TARGET, so fill in short runs.
round=0
while [ "$(count)" -lt "$total" ]; do
  round=$((round + 1))
  TARGET=$((total - $(count))) PREFIX="fill$round" wrk -t"$THREADS" -c"$conns" -d3s -s "$lua/create.lua" "$base" > "$work/fill.txt"
done
echo "store filled: $(count) snapshots"

curl -sf -H "Authorization: Bearer $TOKEN" "$base/api/v1/snapshots?limit=1000" | python3 -c '
import json, sys
for s in json.load(sys.stdin)["data"]["items"]:
    print("/api/v1/sandboxvolumes/%s/snapshots/%s" % (s["volume_id"], s["id"]))' > "$work/ids"
IDS="$work/ids" wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -s "$lua/get.lua" "$base" > "$work/get.txt"
SNAPSHOTS="$(count)" wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -s "$lua/list.lua" "$base" > "$work/list.txt"
# Creation last: it adds snapshots, and get and list are measured at $total.
PREFIX=bench wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -s "$lua/create.lua" "$base" > "$work/create.txt"

echo
echo "wrk -t$THREADS -c$conns -d${secs}s on loopback, $(nproc) cores; get and list with $total snapshots in the store, create from $total to $(count)"
echo
echo "| operation | requests/s | p99 latency | non-2xx |"
echo "|---|---|---|---|"
summary "snapshot create (POST .../snapshots)" "$work/create.txt"
summary "snapshot get (GET .../snapshots/{sid})" "$work/get.txt"
summary "snapshot list (GET /api/v1/snapshots?limit=50&cursor=N)" "$work/list.txt"
