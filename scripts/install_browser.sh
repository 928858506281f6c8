#!/usr/bin/env bash
# Debian chromium + fonts for the browser tests (tests/browser). Playwright's own browser
# download does not work on these machines; the tests launch /usr/bin/chromium instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: /usr/bin/chromium"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO apt-get install -y chromium fonts-dejavu-core
/usr/bin/chromium --version
