#!/usr/bin/env bash
# Sets up what building needs (wasm32-wasip2 target, protoc) and runs the gateway. With no
# arguments it serves the embedded default config (demo upstream, built-in auth); any
# arguments are passed to `sluice run` (e.g. `--config examples/gateway.toml`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system-packages.sh build
exec cargo run --release -p sluice -- run "$@"
