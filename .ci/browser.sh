#!/usr/bin/env bash
# Debian's Chromium and its driver, for the results page's browser test (tests/test_results_page.py,
# which fails under CI=true without them). Idempotent; needs root and the Debian package registry.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
