#!/usr/bin/env bash
# Headless Chromium and its driver for the site check (tools/site_check.py, tests/test_site.py), from Debian/Ubuntu apt.
# Idempotent and quiet: does nothing when both are installed. Needs root (or sudo) when it has to install.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi
SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null
echo "installed $(chromium --version 2>/dev/null) and $(chromedriver --version | cut -d' ' -f1-2)"
