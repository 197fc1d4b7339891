#!/usr/bin/env bash
# The real S3 server the cowvol-backup tests run against: Garage, a single
# node on loopback ports that the tests start themselves (see
# cowvol_backup::testing::Garage and docs/backup.md, "The S3 server in
# tests"). Garage is not packaged in Debian; it is built from crates.io with
# `cargo install`, with only the features a one-node test server needs
# (bundled libraries, SQLite metadata): about 15 minutes on 2 idle cores,
# once per machine. Idempotent: nothing happens when the pinned version is
# already on PATH or in ~/.cargo/bin.
set -euo pipefail
version=2.5.0
bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
for candidate in "$(command -v garage || true)" "$bin"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && [[ "$("$candidate" --version 2>/dev/null)" == *"cargo:$version"* ]]; then
    echo "deps-s3: garage $version is installed ($candidate)"
    exit 0
  fi
done
command -v cc >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends build-essential
}
echo "deps-s3: building garage $version from crates.io (cargo install; about 15 minutes)"
# A target directory of its own, removed afterwards: the build shares
# nothing with the workspace's.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
CARGO_TARGET_DIR="$scratch" nice -n 5 cargo install garage --version "$version" --locked \
  --no-default-features --features bundled-libs,sqlite --quiet
"$bin" --version
