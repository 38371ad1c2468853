#!/usr/bin/env bash
# Installs headless Chromium (Debian package `chromium`), which the dashboard test
# (tests/it/breaker.rs, `breaker::dashboard_tile_turns_open_in_chromium`) drives. Idempotent and
# quiet: when `chromium` is on PATH it only says so. Needs root (or sudo) and apt.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium: already installed ($(chromium --version 2>/dev/null | head -n1))"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: chromium is missing and neither root nor sudo is available" >&2; exit 1; }
    SUDO=sudo
fi
echo "chromium: installing with apt-get (Debian package chromium)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null || { echo "setup: chromium still not on PATH after apt-get install" >&2; exit 1; }
echo "chromium: installed ($(chromium --version 2>/dev/null | head -n1))"
