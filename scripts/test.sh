#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: the Rust wasm target (test plugins and the
# built-in plugins are built from source), Debian packages (protoc for the etcd client,
# etcd-server for the registry tests), the Python and JavaScript plugin toolchains
# (componentize-py, componentize-js), headless Chromium for the breaker dashboard test, then
# `cargo test` for the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system-packages.sh test
bash scripts/setup-plugin-toolchains.sh
bash scripts/setup-chromium.sh
cargo test --workspace --all-targets --all-features "$@"
cargo test --workspace --doc --all-features
