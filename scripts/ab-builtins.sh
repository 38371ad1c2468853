#!/bin/bash
# Interleaved A/B of gateway binaries on the built-in plugin routes of `scripts/bench.sh chain`
# (/none, /auth, /breaker, /tracing, /all; no template): req/s and the gateway's CPU (user +
# system, from /proc/PID/stat) per request, medians of the rounds. A benchmark, not a test.
# usage: [ROUTES="all tracing"] [ROUNDS=3] [SECS=5] scripts/ab-builtins.sh BIN_A BIN_B...
# Needs nginx (the upstream, on 127.0.0.1:19001) and wrk; uses ports 18080/18081.
set -u
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/ab-builtins.sh BIN..." >&2; exit 2; }
export PATH=$PATH:/usr/sbin
T=$(mktemp -d)
source <(sed -n '/^gateway_head()/,/^}/p; /^start_upstream()/,/^}/p' scripts/bench.sh)
start_upstream $T 19001
{ gateway_head; cat <<TOML; } > $T/gw.toml
[plugins]
cache_dir = "$T/cache"
[services.up]
instances = ["127.0.0.1:19001"]
[[routes]]
path = "/none"
service = "up"
[[routes]]
path = "/auth"
service = "up"
plugins = ["auth"]
[[routes]]
path = "/breaker"
service = "up"
plugins = ["breaker"]
[[routes]]
path = "/tracing"
service = "up"
plugins = ["tracing"]
[[routes]]
path = "/all"
service = "up"
plugins = ["auth", "breaker", "tracing"]
[plugin.auth]
[[plugin.auth.keys]]
kid = "demo"
alg = "HS256"
secret = "sluice-demo-secret-change-me"
TOML
token=eyJhbGciOiJIUzI1NiIsImtpZCI6ImRlbW8iLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjQxMDI0NDQ4MDB9.ka_d7VB0436yYEree1fwMrBqmNn1AOtWKcAKKCogkPM
D=${SECS:-5}; tck=$(getconf CLK_TCK)
for round in $(seq 1 ${ROUNDS:-3}); do
  for b in "$@"; do
    $b run --config $T/gw.toml > $T/gw.log 2>&1 & pid=$!
    for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:18081/healthz && break; sleep 0.2; done
    for r in ${ROUTES:-all tracing}; do
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:18080/$r/)
      [ "$code" = 200 ] || { echo "/$r answered $code"; cat $T/gw.log; }
      wrk -t1 -c64 -d1s -H "Authorization: Bearer $token" http://127.0.0.1:18080/$r/ >/dev/null
      read u0 s0 < <(awk '{print $14, $15}' /proc/$pid/stat)
      wrk -t1 -c64 -d${D}s -H "Authorization: Bearer $token" http://127.0.0.1:18080/$r/ > $T/wrk
      read u1 s1 < <(awk '{print $14, $15}' /proc/$pid/stat)
      n=$(grep "requests in" $T/wrk | awk '{print $1}')
      echo "$b:$r $((n/D)) $(python3 -c "print(round(($u1-$u0+$s1-$s0)*1e6/$tck/$n,2))")" | tee -a $T/rows
    done
    kill $pid; wait $pid 2>/dev/null
  done
done
python3 - $T/rows <<'PY'
import sys, statistics as st
rows={}
for l in open(sys.argv[1]):
    b,rps,c=l.split(); rows.setdefault(b,[]).append((int(rps),float(c)))
for b,v in rows.items():
    print(f"{b:40} req/s={st.median(x[0] for x in v):7.0f} cpu_us/req={st.median(x[1] for x in v):6.2f}  rounds={[x[1] for x in v]}")
PY
kill $(cat $T/up.pid); rm -rf $T
