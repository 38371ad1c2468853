#!/usr/bin/env bash
# Benchmarks (not tests). Figures and how to read them: docs/benchmarks.md.
#   scripts/bench.sh proxy [seconds] [connections]   gateway vs nginx/haproxy/caddy, 3 runs
#   scripts/bench.sh plugins                          plugin runtime costs (+ auth verify cost)
#   scripts/bench.sh auth [seconds] [connections]    gateway with the built-in auth on the route
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
what=${1:-proxy}

# The gateway in front of peers.sh's upstream (127.0.0.1:19001): one worker, no access log,
# one route with the plugins named in $1 (space-separated, may be empty).
bench_config() {
  local plugins=""
  for p in $1; do plugins="$plugins\"$p\", "; done
  cat <<TOML
[server]
listen = "127.0.0.1:18080"
admin = "127.0.0.1:18081"
workers = 1
[log]
access = false
level = "warn"
[services.up]
instances = ["127.0.0.1:19001"]
[[routes]]
path = "/"
service = "up"
plugins = [${plugins%, }]
TOML
}
case "$what" in
proxy)
  secs=${2:-8}; conns=${3:-64}
  command -v wrk >/dev/null || apt-get install -y nginx-light haproxy caddy wrk
  cargo build --release -p sluice
  cfg=$(mktemp --suffix=.toml)
  bench_config "" > "$cfg"
  for run in 1 2 3; do
    echo "== run $run"
    GATEWAY_CMD="$CARGO_TARGET_DIR/release/sluice run --config $cfg" \
      GATEWAY_URL=http://127.0.0.1:18080/ bash ../shared/bench/peers.sh "$secs" "$conns"
  done
  rm -f "$cfg"
  ;;
auth)
  secs=${2:-8}; conns=${3:-64}
  command -v wrk >/dev/null || apt-get install -y nginx-light haproxy caddy wrk
  cargo build --release -p sluice
  cfg=$(mktemp --suffix=.toml)
  bench_config auth > "$cfg"
  cat >> "$cfg" <<TOML
[plugin.auth]
[[plugin.auth.keys]]
kid = "demo"
alg = "HS256"
secret = "sluice-demo-secret-change-me"
TOML
  # The README's demo token (HS256, kid "demo", expires in 2100).
  token=eyJhbGciOiJIUzI1NiIsImtpZCI6ImRlbW8iLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.ka_d7VB0436yYEree1fwMrBqmNn1AOtWKcAKKCogkPM
  WRK_HEADER="Authorization: Bearer $token" \
    GATEWAY_CMD="$CARGO_TARGET_DIR/release/sluice run --config $cfg" \
    GATEWAY_URL=http://127.0.0.1:18080/ bash ../shared/bench/peers.sh "$secs" "$conns"
  rm -f "$cfg"
  ;;
plugins)
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  (cd tests/fixtures && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-fixtures" cargo build --release --quiet)
  # The same trivial plugin in each language: `sluice plugin new`'s templates, built.
  cargo build --release -p sluice
  bash scripts/setup-plugin-toolchains.sh >/dev/null
  t=$(mktemp -d)
  for lang in rust python js; do "$CARGO_TARGET_DIR/release/sluice" plugin new "t-$lang" --lang "$lang" --dir "$t" >/dev/null; done
  (cd "$t/t-rust" && CARGO_TARGET_DIR="$t/target" cargo build --release --quiet --target wasm32-wasip2)
  (cd "$t/t-python" && ./build.sh >/dev/null)
  ln -s "$PWD/examples/js-cors/node_modules" "$t/t-js/node_modules"
  (cd "$t/t-js" && ./build.sh >/dev/null)
  cp "$t/target/wasm32-wasip2/release/t_rust.wasm" "$t/t-rust.wasm"
  SLUICE_BENCH_PLUGIN="$CARGO_TARGET_DIR/wasm-fixtures/wasm32-wasip2/release/noop.wasm" \
  SLUICE_BENCH_LANGS="rust=$t/t-rust.wasm,python=$t/t-python/t-python.wasm,js=$t/t-js/t-js.wasm" \
    cargo bench -p sluice --bench plugins
  rm -rf "$t"
  ;;
*) echo "usage: $0 proxy|plugins|auth" >&2; exit 2 ;;
esac
