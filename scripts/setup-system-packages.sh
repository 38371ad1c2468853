#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when they are missing:
#   - protobuf-compiler (protoc) and libprotobuf-dev (the well-known types, e.g.
#     google/protobuf/descriptor.proto, which the etcd protos import; a recommended package of
#     protobuf-compiler, so not installed by --no-install-recommends): the etcd client's build
#     script generates its gRPC code;
#   - etcd-server: the registry tests run a real etcd on 127.0.0.1;
#   - the wasm32-wasip2 Rust target: the built-in plugins are compiled to Wasm by the build.
# Usage: setup-system-packages.sh [build|test]   (build: only what compiling needs)
# Idempotent and quiet when everything is present. Uses sudo when not root.
set -euo pipefail
what=${1:-test}

rustup target add wasm32-wasip2 >/dev/null 2>&1 || echo "setup: could not add the wasm32-wasip2 target (rustup)" >&2

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ "$what" = test ]; then
    command -v etcd >/dev/null || need+=(etcd-server)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "setup: installing ${need[*]} (apt-get)"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package may start an etcd service; the tests start their own.
if [ "$what" = test ] && pgrep -x etcd >/dev/null && command -v systemctl >/dev/null; then
    $sudo systemctl stop etcd >/dev/null 2>&1 || true
fi
