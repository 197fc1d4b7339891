#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target, for CI (`.ci/run` calls this).
#
#   bash fuzz/run-ci.sh [SECONDS]      # per target; default 30
#
# Installs cargo-fuzz when it is missing. Uses the nightly toolchain with
# AddressSanitizer when rustup has one, else the default toolchain without a
# sanitizer (cargo-fuzz needs nightly only for the sanitizers). Each target
# starts from a temporary copy of its seed corpus, so the repository's corpus
# never grows. Exits non-zero when any target crashes, panics, times out or
# runs out of memory; the reproducer is kept in fuzz/artifacts/<target>/
# (git-ignored) and printed in hex when it is small.
set -euo pipefail

secs="${1:-30}"
case "$secs" in
  '' | *[!0-9]*) echo "run-ci.sh: seconds must be a whole number, got '$secs'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

targets=(wal_batch catalog ops stream)
# Per-target libFuzzer options: a WAL batch is padded to 4 KiB sectors and a
# tree node is a 4 KiB page (plus a 9-byte prefix), so let inputs reach two;
# a stream input holds whole 4 KiB data frames.
declare -A extra=(
  [wal_batch]="-max_len=8192"
  [catalog]="-max_len=8192"
  [ops]="-max_len=4096 -timeout=30"
  [stream]="-max_len=65536 -timeout=30"
)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

if command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
  sanitizer=()
  echo "== fuzzing on nightly with AddressSanitizer"
else
  fuzz=(cargo fuzz)
  sanitizer=(-s none)
  echo "== no nightly toolchain: fuzzing on $(rustc --version) without a sanitizer"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cowvol-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== building ${targets[*]}"
"${fuzz[@]}" build ${sanitizer[@]+"${sanitizer[@]}"}

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "artifacts/$t"
  cp corpus/"$t"/seed-* "$work/corpus/$t/"
  echo "== fuzz $t for ${secs}s"
  start=$(date +%s)
  # shellcheck disable=SC2086 # the extra options are meant to split
  if "${fuzz[@]}" run ${sanitizer[@]+"${sanitizer[@]}"} "$t" "$work/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 ${extra[$t]:-} >"$work/$t.log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|stat::number_of_executed_units' "$work/$t.log" || true
    echo "== $t: ok ($(($(date +%s) - start))s)"
  else
    failed+=("$t")
    # Everything from libFuzzer's first report of the failure on, with the
    # panic message and backtrace.
    sed -n '/panicked at\|==ERROR\|ERROR: libFuzzer\|deadly signal\|Test unit written/,$p' "$work/$t.log" | head -150
    if ! grep -q 'panicked at\|==ERROR\|ERROR: libFuzzer\|deadly signal' "$work/$t.log"; then
      tail -60 "$work/$t.log"
    fi
    for f in $(grep -o 'artifacts/[^ ]*' "$work/$t.log" | sort -u); do
      [ -f "$f" ] || continue
      size=$(wc -c <"$f")
      echo "== reproducer fuzz/$f ($size bytes)"
      if [ "$size" -le 4096 ]; then
        od -An -tx1 -v "$f" | tr -d ' \n' | fold -w 128
        echo
      fi
      echo "== replay: cd fuzz && ${fuzz[*]} run ${sanitizer[*]:-} $t $f"
    done
    echo "== $t: FAILED"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzzing found failures in: ${failed[*]}"
  exit 1
fi
echo "== fuzz: all ${#targets[@]} targets ran ${secs}s each without a failure"
