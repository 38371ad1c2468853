#!/usr/bin/env bash
# Sets up a fresh machine (Rust wasm target) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || echo "warning: could not add the wasm32-wasip2 target" >&2
cargo test --workspace --all-targets "$@"
