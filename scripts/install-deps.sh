#!/usr/bin/env bash
# Installs what the tests need beyond Go, from Debian's packages:
#   softhsm2 — a real PKCS#11 token for the HSM key tests.
# Idempotent: does nothing when everything is present.
set -euo pipefail

if command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: softhsm2 is missing and this user cannot install it (run as root: apt-get install softhsm2)" >&2
    exit 1
  fi
  sudo=sudo
fi
echo "install-deps: installing softhsm2"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 >/dev/null
