#!/usr/bin/env bash
# Schemathesis against a real `cowvol serve` on a temporary store: every
# phase (examples, coverage, fuzzing, stateful), all checks, bounded in
# time. Fails on any undocumented status code, 5xx other than the
# documented 504/507, or a response that does not match /openapi.json.
#
#   .ci/server-checks.sh            # ST_MAX_TIME=150 by default
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SCHEMATHESIS_VENV:-/opt/schemathesis}"
max_time="${ST_MAX_TIME:-150}"
port="${ST_PORT:-7499}"

if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi

cargo build --release -q -p cowvol-cli
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

token="schemathesis-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s fuzzer admin\n' "$token" > "$work/tokens"
chmod 600 "$work/tokens"
./target/release/cowvol --store "$work/store" serve --listen "127.0.0.1:$port" \
  --tokens "$work/tokens" --default-volume-size 16M > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done

status=0
"$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $token" \
  --phases examples,coverage,fuzzing,stateful \
  --checks all \
  --max-time "$max_time" \
  --max-examples "${ST_MAX_EXAMPLES:-40}" \
  --request-timeout 30 \
  --seed "${ST_SEED:-7}" \
  --no-color || status=$?

kill -TERM "$server_pid"
if ! wait "$server_pid"; then
  echo "server-checks: cowvol serve did not stop cleanly on SIGTERM"; cat "$work/server.log"; status=1
fi
server_pid=""
grep -q "cowvol serve: stopped" "$work/server.log" || { echo "server-checks: no clean stop in the log"; status=1; }
exit "$status"
