#!/usr/bin/env bash
# Installs the NBD clients and tools the cowvol-nbd tests drive (and the
# benchmark script uses). Idempotent: installs only what is missing, and
# runs `apt-get update` at most once. Needs root (CI runs as root).
set -euo pipefail

# command-to-check:package
needs=(
  qemu-io:qemu-utils
  qemu-img:qemu-utils
  qemu-nbd:qemu-utils
  nbdinfo:libnbd-bin
  nbdcopy:libnbd-bin
  nbdfuse:nbdfuse
  nbdkit:nbdkit
  fio:fio
  fusermount3:fuse3
  mkfs.ext4:e2fsprogs
  e2fsck:e2fsprogs
  losetup:mount
  fsfreeze:util-linux
)
missing=()
for n in "${needs[@]}"; do
  command -v "${n%%:*}" >/dev/null 2>&1 || missing+=("${n#*:}")
done
# libnbd's Python bindings (used as nbdsh scripts) for the system Python.
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=(python3-libnbd)

if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps-nbd: every NBD test tool is installed"
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "deps-nbd: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
