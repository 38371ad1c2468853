#!/usr/bin/env bash
# Makes a self-signed certificate for trying the TLS listener locally (README, "TLS").
#   bash scripts/make-dev-cert.sh [DIR] [NAME...]
# Writes DIR/dev.pem and DIR/dev.key (default DIR: certs; names: localhost, 127.0.0.1).
# Needs openssl (Debian: openssl). Not for production: clients must be told to trust it
# (curl --cacert DIR/dev.pem).
set -euo pipefail
dir=${1:-certs}
shift || true
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(localhost 127.0.0.1)
command -v openssl >/dev/null || { echo "make-dev-cert: openssl is missing (apt-get install openssl)" >&2; exit 1; }
san=""
for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=${names[0]}" -addext "subjectAltName=${san%,}" \
    -keyout "$dir/dev.key" -out "$dir/dev.pem" 2>/dev/null
chmod 600 "$dir/dev.key"
echo "wrote $dir/dev.pem and $dir/dev.key for ${names[*]}"
