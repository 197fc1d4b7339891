#!/usr/bin/env bash
# Packages the cowvol-server tests need: Debian's chromium and chromedriver
# for the panel's browser test, wrk for the load test, python3-venv for
# schemathesis (.ci/server-checks.sh). Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v wrk >/dev/null || need+=(wrk)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps-server: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
else
  echo "deps-server: chromium, chromedriver, wrk, python3-venv and curl are present"
fi
