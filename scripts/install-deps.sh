#!/usr/bin/env bash
# Installs what the tests need beyond Go, from Debian's packages:
#   softhsm2   — a real PKCS#11 token for the HSM key tests;
#   libssl-dev — OpenSSL's headers, for the TPM 2.0 simulator (cgo) of the
#                tpm attestor's tests (built with -tags tpmsimulator);
#   prometheus — for promtool, which checks and unit-tests the alert rules
#                of docs/monitoring;
#   chromium   — headless, for the status page's browser test.
# Idempotent: does nothing when everything is present.
set -euo pipefail

missing=()
if ! command -v softhsm2-util >/dev/null 2>&1 || [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
  missing+=(softhsm2)
fi
if [ ! -e /usr/include/openssl/evp.h ]; then
  missing+=(libssl-dev)
fi
if ! command -v promtool >/dev/null 2>&1; then
  missing+=(prometheus)
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: ${missing[*]} missing and this user cannot install them (run as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  sudo=sudo
fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
