#!/usr/bin/env bash
# Benchmarks (not tests). Figures and how to read them: docs/benchmarks.md.
#   scripts/bench.sh proxy [seconds] [connections]   gateway vs nginx/haproxy/caddy, 3 runs
#   scripts/bench.sh plugins                          plugin runtime costs (+ auth verify cost)
#   scripts/bench.sh auth [seconds] [connections]    gateway with the built-in auth on the route
#   scripts/bench.sh tls [seconds] [connections]     HTTPS keep-alive (wrk), new TLS handshakes (openssl
#                                                    s_time -new, 4 at once) and h2 (h2load) vs nginx; 3 rounds
#   scripts/bench.sh grpc [seconds] [connections]    gRPC unary calls/s (h2load, h2c) direct to a tonic
#                                                    server, through nginx (grpc_pass) and through the gateway; 3 rounds
#   scripts/bench.sh rapid-reset [seconds]           p99 of a well-behaved h2c client (h2load) with and without
#                                                    an HTTP/2 rapid-reset flood on other connections; 3 rounds
#   scripts/bench.sh tracing [seconds] [connections] telemetry off vs collector live/down/blackholed
#                                                    (BENCH_PLUGINS="" for a route without the tracing plugin)
#   scripts/bench.sh chain [seconds] [connections]   the plugin path in one run: nginx, no plugins, the
#                                                    scaffold template, each built-in, all three; 3 rounds
#   scripts/bench.sh ab BIN_A BIN_B...               gateway binaries interleaved on the chain's built-in
#                                                    routes (ROUTES="all tracing", ROUNDS=3, SECS=5): req/s
#                                                    and CPU per request, medians
#   scripts/bench.sh load [seconds]                  p99 of a bare route while a Python template plugin
#                                                    compiles (cache off), and the Python/JS template
#                                                    routes vs the bare route; 3 rounds
#   scripts/bench.sh wasm-ab A.wasm B.wasm...        plugin builds (e.g. a template before and after a
#                                                    change) on a route each of one gateway, vs a bare
#                                                    route (ROUNDS=5, SECS=5, BIN=release sluice): req/s
#                                                    and CPU per request, medians
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
what=${1:-proxy}

# What every benchmark gateway starts with: listening on 18080 (admin 18081), one worker, no
# access log.
gateway_head() {
  cat <<TOML
[server]
listen = "127.0.0.1:18080"
admin = "127.0.0.1:18081"
workers = 1
[log]
access = false
level = "warn"
TOML
}
# The README's demo token (HS256, kid "demo", expires in 2100).
DEMO_TOKEN=eyJhbGciOiJIUzI1NiIsImtpZCI6ImRlbW8iLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.ka_d7VB0436yYEree1fwMrBqmNn1AOtWKcAKKCogkPM
# A benchmark gateway's plugins and routes (after gateway_head), all to the upstream on
# 127.0.0.1:19001: /none without plugins, then a route /PATH per PATH=PLUGIN[,PLUGIN...].
# Plugins load from DIR, compiled into CACHE ("" for no cache).
plugin_routes() { # DIR CACHE [PATH=PLUGINS...]
  local dir=$1 cache=$2 spec plugins
  shift 2
  printf '[plugins]\ndir = "%s"\ncache_dir = "%s"\n' "$dir" "$cache"
  printf '[services.up]\ninstances = ["127.0.0.1:19001"]\n'
  printf '[[routes]]\npath = "/none"\nservice = "up"\n'
  for spec in "$@"; do
    plugins=$(echo "${spec#*=}" | sed 's/[^,]*/"&"/g; s/,/, /g')
    printf '[[routes]]\npath = "/%s"\nservice = "up"\nplugins = [%s]\n' "${spec%%=*}" "$plugins"
  done
}
# The chain benchmark's routes: each built-in alone, the three together, and the scaffold
# template when DIR holds tmpl.wasm; `auth` checks the README's demo token.
chain_config() { # DIR CACHE
  local template=()
  if [ -f "$1/tmpl.wasm" ]; then template=(tmpl=tmpl); fi
  plugin_routes "$1" "$2" auth=auth breaker=breaker tracing=tracing all=auth,breaker,tracing "${template[@]}"
  demo_auth_config
}
# `[plugin.auth]` with the README's demo key, which DEMO_TOKEN is signed with.
demo_auth_config() {
  cat <<TOML
[plugin.auth]
[[plugin.auth.keys]]
kid = "demo"
alg = "HS256"
secret = "sluice-demo-secret-change-me"
TOML
}
# wrk -c64 on URL for SECS seconds after a 1 s warm-up (with HEADER, if given); prints
# "REQ_PER_S CPU_US_PER_REQ", the CPU (user + system, /proc/PID/stat) of the gateway PID.
measure_route() { # URL PID SECS [HEADER]
  local hdr=() cpu0 cpu1 reqs
  if [ -n "${4:-}" ]; then hdr=(-H "$4"); fi
  wrk -t1 -c64 -d1s "${hdr[@]}" "$1" >/dev/null
  cpu0=$(awk '{print $14 + $15}' "/proc/$2/stat")
  reqs=$(wrk -t1 -c64 -d"$3s" "${hdr[@]}" "$1" | awk '/requests in/ {print $1}')
  cpu1=$(awk '{print $14 + $15}' "/proc/$2/stat")
  echo "$((reqs / $3)) $(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / hz * 1e6 / n}')"
}
# The gateway in front of peers.sh's upstream (127.0.0.1:19001), one route with the plugins
# named in $1 (space-separated, may be empty).
bench_config() {
  local plugins=""
  for p in $1; do plugins="$plugins\"$p\", "; done
  gateway_head
  cat <<TOML
[services.up]
instances = ["127.0.0.1:19001"]
[[routes]]
path = "/"
service = "up"
plugins = [${plugins%, }]
TOML
}
# An nginx answering a fixed 20-byte body on 127.0.0.1:PORT (the upstream every gateway and
# peer in these benchmarks proxies to); its files and pid live in DIR.
start_upstream() { # DIR PORT
  cat > "$1/up.conf" <<C
worker_processes 1; pid $1/up.pid; error_log $1/up.err; daemon on;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$2; location / { return 200 "hello from upstream\n"; } } }
C
  nginx -c "$1/up.conf"
}
# Medians of rows "ROUND TARGET METRIC VALUE" (file $1) per target and metric, and each
# target's ratio to target $2 (taken per round, then the median of the rounds).
summarize() { # ROWS BASE
  python3 - "$1" "$2" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
base = sys.argv[2]
targets = list(dict.fromkeys(r[1] for r in rows))
metrics = list(dict.fromkeys(r[2] for r in rows))
def val(run, t, m):
    v = [float(r[3]) for r in rows if r[0] == run and r[1] == t and r[2] == m]
    return v[0] if v and v[0] > 0 else None
runs = sorted({r[0] for r in rows})
print(f"{'metric':<26} {'target':<10} {'median':>10} {'/' + base:>9}   rounds")
for m in metrics:
    for t in targets:
        vals = [v for v in (val(run, t, m) for run in runs) if v is not None]
        if not vals:
            continue
        ratios = [val(run, t, m) / val(run, base, m) for run in runs
                  if val(run, t, m) is not None and val(run, base, m) is not None]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        print(f"{m:<26} {t:<10} {statistics.median(vals):>10.1f} {ratio:>9}   {' '.join(f'{v:g}' for v in vals)}")
PY
}
# p99 in ms of an h2load --log-file (tab-separated: start µs, status, duration µs).
log_p99() { # FILE
  python3 - "$1" <<'PY'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
print(f"{d[min(len(d) - 1, int(len(d) * 0.99))] / 1000:.3f}" if d else 0)
PY
}
# Waits (at most 120 s) until the admin API on 18081 lists plugin $1 as active. JSON is read
# with python3: the plugin objects' fields are not in a fixed order a grep could rely on.
wait_active() {
  for _ in $(seq 1200); do
    curl -s http://127.0.0.1:18081/admin/plugins | python3 -c 'import json, sys
sys.exit(0 if any(p["name"] == sys.argv[1] and p["status"] == "active"
                  for p in json.load(sys.stdin)["plugins"]) else 1)' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "plugin $1 did not become active within 120 s" >&2
  return 1
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
  { bench_config auth; demo_auth_config; } > "$cfg"
  WRK_HEADER="Authorization: Bearer $DEMO_TOKEN" \
    GATEWAY_CMD="$CARGO_TARGET_DIR/release/sluice run --config $cfg" \
    GATEWAY_URL=http://127.0.0.1:18080/ bash ../shared/bench/peers.sh "$secs" "$conns"
  rm -f "$cfg"
  ;;
tls)
  # nginx and the gateway, each one worker, both terminating TLS (the same self-signed
  # P-256 certificate, ALPN h2 and http/1.1) in front of an nginx upstream on 127.0.0.1:19101 (ports apart from peers.sh).
  secs=${2:-8}; conns=${3:-64}
  export PATH=$PATH:/usr/sbin
  for t in nginx wrk h2load openssl; do
    command -v $t >/dev/null || apt-get install -y nginx-light wrk nghttp2-client openssl
  done
  cargo build --release -p sluice
  T=$(mktemp -d); trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  bash scripts/make-dev-cert.sh "$T" localhost 127.0.0.1 >/dev/null
  start_upstream "$T" 19101
  cat > $T/ngx.conf <<C
worker_processes 1; pid $T/ngx.pid; error_log $T/ngx.err; daemon on;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; upstream u { server 127.0.0.1:19101; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:19443 ssl http2; ssl_certificate $T/dev.pem; ssl_certificate_key $T/dev.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
  bench_config "" | sed 's/:18080/:18180/; s/:18081/:18181/; s/:19001/:19101/' > $T/gw.toml
  cat >> $T/gw.toml <<TOML
[server.tls]
listen = "127.0.0.1:18443"
cert = "$T/dev.pem"
key = "$T/dev.key"
TOML
  nginx -c $T/ngx.conf
  "$CARGO_TARGET_DIR/release/sluice" run --config $T/gw.toml >$T/gw.log 2>&1 & echo $! > $T/gw.pid
  sleep 1.5
  : > $T/rows
  for run in 1 2 3; do
    for target in nginx:19443 gateway:18443; do
      name=${target%%:*}; port=${target##*:}
      https=$(wrk -t1 -c$conns -d${secs}s https://127.0.0.1:$port/ | awk '/Requests\/sec/ {print $2}')
      # New handshakes: full ones (`-new`: no session resumption, which wrk with
      # `Connection: close` would do), 4 clients at once, each connecting, shaking hands
      # and closing in a loop; the sum of their connections per second.
      stimes=()
      for i in 1 2 3 4; do
        openssl s_time -connect 127.0.0.1:$port -new -time $secs > $T/stime.$i 2>/dev/null & stimes+=($!)
      done
      wait "${stimes[@]}" || true
      hs=$(cat $T/stime.* | awk '/connections in [0-9]+ real seconds/ {n += $1; s = $4} END {if (s > 0) printf "%.1f", n / s; else print 0}')
      h2=$(h2load -t1 -c$conns -m10 -D$secs https://127.0.0.1:$port/ 2>/dev/null | awk '/^finished in/ {print $4}')
      { echo "$run $name https_keepalive_req/s ${https:-0}"
        echo "$run $name new_handshakes/s ${hs:-0}"
        echo "$run $name h2_req/s ${h2:-0}"; } | tee -a $T/rows >&2
    done
  done
  summarize $T/rows nginx
  ;;
grpc)
  # gRPC unary calls per second, h2load over h2c (prior knowledge), to the same tonic echo
  # server (gateway/examples/grpc_echo.rs, one thread): direct, through nginx (grpc_pass,
  # one worker) and through the gateway (one worker, service protocol = "h2c").
  secs=${2:-8}; conns=${3:-16}
  export PATH=$PATH:/usr/sbin
  for t in nginx h2load curl; do
    command -v $t >/dev/null || apt-get install -y nginx-light nghttp2-client curl
  done
  cargo build --release -p sluice
  cargo build --release -p sluice --example grpc_echo
  T=$(mktemp -d); trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  "$CARGO_TARGET_DIR/release/examples/grpc_echo" 127.0.0.1:19051 > $T/echo.log 2>&1 & echo $! > $T/echo.pid
  cat > $T/ngx.conf <<C
worker_processes 1; pid $T/ngx.pid; error_log $T/ngx.err; daemon on;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; upstream g { server 127.0.0.1:19051; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:19280 http2; location / { grpc_pass grpc://g; } } }
C
  nginx -c $T/ngx.conf
  cat > $T/gw.toml <<TOML
[server]
listen = "127.0.0.1:18280"
admin = "127.0.0.1:18281"
workers = 1
[log]
access = false
level = "warn"
[services.echo]
instances = ["127.0.0.1:19051"]
protocol = "h2c"
[[routes]]
path = "/echo.Echo"
service = "echo"
TOML
  "$CARGO_TARGET_DIR/release/sluice" run --config $T/gw.toml > $T/gw.log 2>&1 & echo $! > $T/gw.pid
  sleep 1.5
  # One unary call's body: the 5-byte gRPC frame head (not compressed, length 6), then
  # echo.Msg { text: "hi", count: 1 } in protobuf.
  printf '\x00\x00\x00\x00\x06\x0a\x02hi\x10\x01' > $T/call.bin
  grpc_h=(-H 'content-type: application/grpc' -H 'te: trailers')
  for target in direct:19051 nginx:19280 gateway:18280; do
    # Each target answers a real call (grpc-status 0 in the trailers) before it is measured.
    st=$(curl -s --http2-prior-knowledge "${grpc_h[@]}" --data-binary @$T/call.bin -D - -o /dev/null \
      http://127.0.0.1:${target##*:}/echo.Echo/Unary | tr -d '\r' | awk -F': ' 'tolower($1) == "grpc-status" {print $2}')
    [ "$st" = 0 ] || { echo "bench: ${target%%:*} answered grpc-status '${st}'; logs:" >&2; cat $T/*.log $T/ngx.err >&2; exit 1; }
  done
  : > $T/rows
  for run in 1 2 3; do
    for target in direct:19051 nginx:19280 gateway:18280; do
      name=${target%%:*}; port=${target##*:}
      out=$(h2load -t1 -c$conns -m10 -D$secs "${grpc_h[@]}" -d $T/call.bin \
        http://127.0.0.1:$port/echo.Echo/Unary 2>/dev/null)
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
      { echo "$run $name unary_calls/s ${rps:-0}"; echo "$run $name http_2xx ${ok:-0}"; } | tee -a $T/rows >&2
    done
  done
  summarize $T/rows direct
  ;;
rapid-reset)
  # What an HTTP/2 rapid-reset flood (CVE-2023-44487) on other connections does to a
  # well-behaved client: h2load (h2c, 16 connections, one stream each) through the gateway
  # (one worker, nginx upstream), alone and while gateway/examples/h2_flood.rs floods 4
  # connections (HEADERS + RST_STREAM in batches, reconnecting each time the gateway cuts one
  # off). p99 from h2load's per-request log. The issue's goal: p99 under flood <= 2x.
  secs=${2:-10}
  export PATH=$PATH:/usr/sbin
  for t in nginx h2load; do
    command -v $t >/dev/null || apt-get install -y nginx-light nghttp2-client
  done
  cargo build --release -p sluice --example h2_flood
  cargo build --release -p sluice
  T=$(mktemp -d); trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  start_upstream "$T" 19301
  bench_config "" | sed 's/:18080/:18380/; s/:18081/:18381/; s/:19001/:19301/' > $T/gw.toml
  "$CARGO_TARGET_DIR/release/sluice" run --config $T/gw.toml > $T/gw.log 2>&1 & echo $! > $T/gw.pid
  sleep 1.5
  : > $T/rows
  for run in 1 2 3; do
    for mode in alone flood; do
      if [ $mode = flood ]; then
        "$CARGO_TARGET_DIR/release/examples/h2_flood" 127.0.0.1:18380 $((secs + 2)) 4 > $T/flood.out & flood=$!
        sleep 1
      fi
      out=$(h2load -t1 -c16 -m1 -D$secs --log-file=$T/req.log http://127.0.0.1:18380/ 2>/dev/null)
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      p99=$(log_p99 $T/req.log)
      { echo "$run $mode req/s ${rps:-0}"; echo "$run $mode p99_ms $p99"; } | tee -a $T/rows >&2
      if [ $mode = flood ]; then wait $flood; cat $T/flood.out >&2; fi
    done
  done
  summarize $T/rows alone
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
tracing)
  # The same gateway (route with the built-in tracing plugin, every trace sampled) with
  # telemetry off, exporting to a live OTLP/HTTP receiver, to a closed port (collector down),
  # and to a listener that accepts and never answers (blackholed); three rounds, interleaved.
  secs=${2:-8}; conns=${3:-64}
  command -v wrk >/dev/null || apt-get install -y nginx-light wrk
  export PATH=$PATH:/usr/sbin
  cargo build --release -p sluice
  T=$(mktemp -d)
  trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  start_upstream "$T" 19001
  # Live receiver: answers every OTLP/HTTP export with 200 and an empty (valid) protobuf body.
  python3 - > /dev/null 2>&1 <<'PY' & echo $! > "$T/live.pid"
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", 14318), H).serve_forever()
PY
  # Blackhole: accepts, never reads or answers.
  python3 - > /dev/null 2>&1 <<'PY' & echo $! > "$T/hole.pid"
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 14319)); s.listen(1024); held = []
while True:
    c, _ = s.accept(); held.append(c)
PY
  sleep 1
  for mode in off live down blackhole; do
    bench_config "${BENCH_PLUGINS-tracing}" > "$T/$mode.toml"
    case $mode in
      live) endpoint=http://127.0.0.1:14318 ;;
      down) endpoint=http://127.0.0.1:14320 ;;   # nothing listens there
      blackhole) endpoint=http://127.0.0.1:14319 ;;
      *) endpoint= ;;
    esac
    [ -n "$endpoint" ] && printf '[telemetry]\nendpoint = "%s"\nbatch_delay = "200ms"\n' "$endpoint" >> "$T/$mode.toml"
  done
  printf "%-10s %-4s %10s %9s %9s %8s %9s %12s %12s\n" mode run req/s p50 p99 cpu_us rss_kb exported dropped
  for run in 1 2 3; do
    for mode in off live down blackhole; do
      "$CARGO_TARGET_DIR/release/sluice" run --config "$T/$mode.toml" > "$T/gw.log" 2>&1 & gw=$!
      sleep 1.5
      cpu0=$(awk '{print $14 + $15}' /proc/$gw/stat)
      out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency http://127.0.0.1:18080/ 2>&1)
      cpu1=$(awk '{print $14 + $15}' /proc/$gw/stat)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      # Gateway CPU (all its threads: worker, export task, admin) per request, in µs.
      cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1=="50%" {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status)
      m=$(curl -s http://127.0.0.1:18081/metrics)
      exported=$(echo "$m" | awk '/^sluice_telemetry_spans_exported_total/ {s+=$2} END {print s+0}')
      dropped=$(echo "$m" | awk '/^sluice_telemetry_spans_dropped_total/ {s+=$2} END {print s+0}')
      printf "%-10s %-4s %10s %9s %9s %8s %9s %12s %12s\n" "$mode" "$run" "$rps" "$p50" "$p99" "$cpu_us" "$rss" "$exported" "$dropped"
      t0=$(date +%s%N); kill -TERM $gw; wait $gw 2>/dev/null
      echo "           shutdown $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
    done
  done
  ;;
chain)
  # One gateway, one route per plugin set, all to the same upstream; nginx proxying the same
  # upstream in the same run. Rounds interleave the targets; the table gives each target's
  # median req/s, p99, gateway CPU per request, and ratios to the bare route and to nginx.
  secs=${2:-5}; conns=${3:-64}
  command -v wrk >/dev/null || apt-get install -y nginx-light wrk
  export PATH=$PATH:/usr/sbin
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  cargo build --release -p sluice
  T=$(mktemp -d)
  trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  # The scaffold template, built as a user would.
  "$CARGO_TARGET_DIR/release/sluice" plugin new tmpl --lang rust --dir "$T" >/dev/null
  (cd "$T/tmpl" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/bench-template" cargo build --release --quiet --target wasm32-wasip2)
  mkdir -p "$T/plugins"
  cp "$CARGO_TARGET_DIR/bench-template/wasm32-wasip2/release/tmpl.wasm" "$T/plugins/tmpl.wasm"
  start_upstream "$T" 19001
  cat > "$T/ngx.conf" <<C
worker_processes 1; pid $T/ngx.pid; error_log $T/ngx.err; daemon on;
events { worker_connections 4096; }
http { access_log off; upstream u { server 127.0.0.1:19001; keepalive 64; }
  server { listen 127.0.0.1:19081; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
  nginx -c "$T/ngx.conf"
  { gateway_head; chain_config "$T/plugins" "$T/cache"; } > "$T/gw.toml"
  "$CARGO_TARGET_DIR/release/sluice" run --config "$T/gw.toml" > "$T/gw.log" 2>&1 & gw=$!
  echo $gw > "$T/gw.pid"
  # Up once the built-in plugins compiled (cold cache: seconds).
  for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:18081/healthz && break; sleep 0.2; done
  token=$DEMO_TOKEN
  for t in none tmpl auth breaker tracing all; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:18080/$t/")
    [ "$code" = 200 ] || { echo "bench: /$t/ answered $code before the run; gateway log:" >&2; cat "$T/gw.log" >&2; exit 1; }
  done
  : > "$T/rows"
  for run in 1 2 3; do
    for t in nginx none tmpl auth breaker tracing all; do
      if [ $t = nginx ]; then url=http://127.0.0.1:19081/; else url=http://127.0.0.1:18080/$t/; fi
      cpu0=$(awk '{print $14 + $15}' /proc/$gw/stat)
      out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $token" "$url" 2>&1)
      cpu1=$(awk '{print $14 + $15}' /proc/$gw/stat)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz * 1e6 / n}')
      [ $t = nginx ] && cpu_us=-
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}')
      non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
      echo "$run $t $rps $p99 $cpu_us ${non2xx:-0}" | tee -a "$T/rows" >&2
    done
  done
  echo
  python3 - "$T/rows" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
def med(t, i):
    vals = [r[i] for r in rows if r[1] == t]
    return vals
def ms(v):
    v = v.strip()
    if v.endswith("us"): return float(v[:-2]) / 1000
    if v.endswith("ms"): return float(v[:-2])
    if v.endswith("s"): return float(v[:-1]) * 1000
    return float(v)
targets = ["nginx", "none", "tmpl", "auth", "breaker", "tracing", "all"]
rps = {t: statistics.median(float(x) for x in med(t, 2)) for t in targets}
# Ratios are taken per round (same moment, same noise), then the median of the rounds.
def ratio(t, base):
    rs = []
    for run in sorted({r[0] for r in rows}):
        a = [float(r[2]) for r in rows if r[0] == run and r[1] == t]
        b = [float(r[2]) for r in rows if r[0] == run and r[1] == base]
        if a and b: rs.append(a[0] / b[0])
    return statistics.median(rs)
print(f"{'target':<9} {'req/s':>9} {'p99 ms':>8} {'cpu us/req':>10} {'/none':>6} {'/nginx':>7} {'non-2xx':>8}")
for t in targets:
    p99 = statistics.median(ms(x) for x in med(t, 3))
    cpu = "-" if t == "nginx" else f"{statistics.median(float(x) for x in med(t, 4)):.1f}"
    bad = sum(int(x) for x in med(t, 5))
    print(f"{t:<9} {rps[t]:>9.0f} {p99:>8.2f} {cpu:>10} {ratio(t, 'none'):>6.2f} {ratio(t, 'nginx'):>7.2f} {bad:>8}")
PY
  ;;
ab)
  # Gateway binaries (built elsewhere, e.g. before and after a change) interleaved on the
  # chain's built-in routes, one gateway at a time: req/s and the gateway's CPU (user +
  # system, /proc/PID/stat) per request under wrk -c64, medians of the rounds. CPU per request
  # is steadier than req/s on a shared machine; read differences, quote medians.
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/bench.sh ab BIN_A BIN_B..." >&2; exit 2; }
  command -v wrk >/dev/null || apt-get install -y nginx-light wrk
  export PATH=$PATH:/usr/sbin
  T=$(mktemp -d)
  trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  mkdir -p "$T/plugins"
  start_upstream "$T" 19001
  { gateway_head; chain_config "$T/plugins" "$T/cache"; } > "$T/gw.toml"
  secs=${SECS:-5}
  : > "$T/rows"
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for bin in "$@"; do
      "$bin" run --config "$T/gw.toml" > "$T/gw.log" 2>&1 & gw=$!
      echo $gw > "$T/gw.pid"
      for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:18081/healthz && break; sleep 0.2; done
      for r in ${ROUTES:-all tracing}; do
        url=http://127.0.0.1:18080/$r/
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $DEMO_TOKEN" "$url")
        [ "$code" = 200 ] || { echo "bench: $bin /$r/ answered $code; gateway log:" >&2; cat "$T/gw.log" >&2; exit 1; }
        echo "$bin:/$r $(measure_route "$url" "$gw" "$secs" "Authorization: Bearer $DEMO_TOKEN")" | tee -a "$T/rows" >&2
      done
      kill $gw; wait $gw 2>/dev/null || true
    done
  done
  python3 - "$T/rows" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    target, rps, cpu = line.split()
    rows.setdefault(target, []).append((int(rps), float(cpu)))
for target, v in rows.items():
    print(f"{target:48} req/s {statistics.median(r for r, _ in v):7.0f}   CPU µs/req "
          f"{statistics.median(c for _, c in v):6.2f}   rounds {[c for _, c in v]}")
PY
  ;;
load)
  # 1. What compiling a large plugin does to requests being served: wrk on the bare route,
  #    once idle and once while the Python template (18 MB) is dropped into the plugin
  #    directory and compiles (compile cache off). 2. The Python and JavaScript templates on a
  #    route each, against the bare route, interleaved.
  secs=${2:-10}
  command -v wrk >/dev/null || apt-get install -y nginx-light wrk
  export PATH=$PATH:/usr/sbin
  cargo build --release -p sluice
  bash scripts/setup-plugin-toolchains.sh >/dev/null
  T=$(mktemp -d)
  trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  for lang in python js; do "$CARGO_TARGET_DIR/release/sluice" plugin new "t-$lang" --lang "$lang" --dir "$T" >/dev/null; done
  (cd "$T/t-python" && ./build.sh >/dev/null)
  ln -s "$PWD/examples/js-cors/node_modules" "$T/t-js/node_modules"
  (cd "$T/t-js" && ./build.sh >/dev/null)
  start_upstream "$T" 19001
  mkdir -p "$T/plugins" "$T/langs"
  cp "$T/t-js/t-js.wasm" "$T/langs/"
  cp "$T/t-python/t-python.wasm" "$T/langs/"
  gw_config() { # plugin dir
    gateway_head
    plugin_routes "$1" "" python=t-python js=t-js
  }
  wrk_line() { # url secs -> "rps p99"
    local out; out=$(wrk -t1 -c64 -d"$2s" --latency "$1" 2>&1)
    echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="99%" {print $2}')"
  }
  echo "== requests on the bare route while the Python template compiles (cache off)"
  gw_config "$T/plugins" > "$T/compile.toml"
  printf "%-4s %-10s %10s %9s %12s\n" run phase req/s p99 compile_s
  for run in 1 2 3; do
    rm -f "$T/plugins/"*.wasm
    "$CARGO_TARGET_DIR/release/sluice" run --config "$T/compile.toml" > "$T/gw.log" 2>&1 & gw=$!; echo $gw > "$T/gw.pid"
    sleep 1.5
    read -r rps p99 <<< "$(wrk_line http://127.0.0.1:18080/none/ "$secs")"
    printf "%-4s %-10s %10s %9s %12s\n" "$run" idle "$rps" "$p99" -
    t0=$(date +%s%N)
    cp "$T/langs/t-python.wasm" "$T/plugins/t-python.wasm.tmp" && mv "$T/plugins/t-python.wasm.tmp" "$T/plugins/t-python.wasm"
    read -r rps p99 <<< "$(wrk_line http://127.0.0.1:18080/none/ "$secs")"
    wait_active t-python
    loaded=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf "%-4s %-10s %10s %9s %12s\n" "$run" compiling "$rps" "$p99" "$(awk -v m=$loaded 'BEGIN {printf "%.1f", m / 1000}')"
    kill -TERM $gw; wait $gw 2>/dev/null
  done
  echo "== the Python and JavaScript templates vs the bare route"
  gw_config "$T/langs" > "$T/langs.toml"
  "$CARGO_TARGET_DIR/release/sluice" run --config "$T/langs.toml" > "$T/gw.log" 2>&1 & gw=$!; echo $gw > "$T/gw.pid"
  wait_active t-python && wait_active t-js
  printf "%-4s %-7s %10s %9s %7s\n" run route req/s p99 /none
  for run in 1 2 3; do
    read -r base bp99 <<< "$(wrk_line http://127.0.0.1:18080/none/ "$secs")"
    printf "%-4s %-7s %10s %9s %7s\n" "$run" none "$base" "$bp99" 1.00
    for lang in python js; do
      read -r rps p99 <<< "$(wrk_line "http://127.0.0.1:18080/$lang/" "$secs")"
      printf "%-4s %-7s %10s %9s %7s\n" "$run" "$lang" "$rps" "$p99" "$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.2f", a / b}')"
    done
  done
  ;;
wasm-ab)
  # Plugin builds interleaved on one gateway: each file on a route of its own (/p1, /p2...,
  # config from NAME.toml beside it if there is one) and a bare route (/none), wrk -c64 per
  # route in turn; the gateway's CPU (user + system, /proc/PID/stat) per request and req/s,
  # medians of the rounds and ratios to the bare route. Same gateway, so the plugins' costs
  # are compared under the same load; CPU per request is steadier than req/s here.
  shift
  [ $# -ge 1 ] || { echo "usage: scripts/bench.sh wasm-ab A.wasm B.wasm..." >&2; exit 2; }
  command -v wrk >/dev/null || apt-get install -y nginx-light wrk
  export PATH=$PATH:/usr/sbin
  bin=${BIN:-$CARGO_TARGET_DIR/release/sluice}
  [ -n "${BIN:-}" ] || cargo build --release -p sluice
  T=$(mktemp -d)
  trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; rm -rf $T' EXIT
  mkdir -p "$T/plugins"
  start_upstream "$T" 19001
  routes=()
  i=0
  for wasm in "$@"; do
    i=$((i + 1))
    cp "$wasm" "$T/plugins/p$i.wasm"
    toml="${wasm%.wasm}.toml"
    if [ -f "$toml" ]; then cp "$toml" "$T/plugins/p$i.toml"; fi
    routes+=("p$i=p$i")
    echo "p$i = $wasm" >&2
  done
  { gateway_head; plugin_routes "$T/plugins" "$T/cache" "${routes[@]}"; } > "$T/gw.toml"
  "$bin" run --config "$T/gw.toml" > "$T/gw.log" 2>&1 & gw=$!; echo $gw > "$T/gw.pid"
  for i in $(seq 1 $#); do wait_active "p$i"; done
  secs=${SECS:-5}
  : > "$T/rows"
  for round in $(seq 1 "${ROUNDS:-5}"); do
    for r in none $(seq -f 'p%g' 1 $#); do
      url=http://127.0.0.1:18080/$r/
      code=$(curl -s -o /dev/null -w '%{http_code}' "$url")
      [ "$code" = 200 ] || { echo "bench: /$r/ answered $code; gateway log:" >&2; cat "$T/gw.log" >&2; exit 1; }
      read -r rps cpu < <(measure_route "$url" "$gw" "$secs")
      echo "$round $r req/s $rps" >> "$T/rows"
      echo "$round $r cpu_us/req $cpu" >> "$T/rows"
    done
  done
  summarize "$T/rows" none
  ;;
*) echo "usage: $0 proxy|plugins|auth|tls|grpc|rapid-reset|tracing|chain|ab|load|wasm-ab" >&2; exit 2 ;;
esac
