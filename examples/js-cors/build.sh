#!/usr/bin/env bash
# Builds js-cors.wasm from cors.js with componentize-js, against the gateway's WIT
# (../../wit, world `plugin`). Installs the pinned toolchain into node_modules/ first if it
# is missing (npm ci, from package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x node_modules/.bin/componentize-js ]; then
    echo "build.sh: node_modules/ has no componentize-js; running npm ci" >&2
    npm ci --no-audit --no-fund >&2
fi

# The "build" script in package.json holds the componentize-js command line:
#   componentize-js --wit ../../wit --world-name plugin --disable http --disable fetch-event
#                   --out js-cors.wasm cors.js
# (`--disable http fetch-event`: the gateway links plain WASI 0.2 without wasi:http; with
# them enabled the component would import wasi:http and fail to load.)
npm run --silent build
echo "built $(pwd)/js-cors.wasm ($(wc -c <js-cors.wasm) bytes)"
