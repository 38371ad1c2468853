#!/usr/bin/env bash
# Builds python-apikey.wasm from app.py (+ sluice.py) with componentize-py, against the
# gateway's WIT (../../wit, world `plugin`). Needs: pip install -r requirements.txt
set -euo pipefail
cd "$(dirname "$0")"
WIT=../../wit
WORLD=plugin
OUT=python-apikey.wasm

# componentize-py as installed by pip: the script if it is on PATH, else the module.
if command -v componentize-py >/dev/null 2>&1; then
    cpy() { componentize-py "$@"; }
elif "${PYTHON:-python3}" -c 'import componentize_py' 2>/dev/null; then
    cpy() { "${PYTHON:-python3}" -c 'import sys, componentize_py; sys.argv[0] = "componentize-py"; sys.exit(componentize_py.script())' "$@"; }
else
    echo "build.sh: componentize-py is not installed; run: pip install -r requirements.txt" >&2
    exit 1
fi

want=$(sed -n 's/^componentize-py==//p' requirements.txt)
have=$(cpy --version | awk '{print $2}')
if [ "$have" != "$want" ]; then
    echo "build.sh: warning: componentize-py $have, but this example was verified with $want" >&2
fi

# (a) Bindings. `componentize` generates its own from the WIT every time, so the build does
# not need these; they are written to bindings/ (ignored by git) for editors and type
# checkers, whenever the WIT is newer than them.
if [ ! -d bindings/wit_world ] || [ -n "$(find "$WIT" -name '*.wit' -newer bindings/wit_world)" ]; then
    rm -rf bindings
    cpy -q -d "$WIT" -w "$WORLD" bindings bindings
    touch bindings/wit_world
    echo "bindings: regenerated in bindings/ (for editors; the build does not use them)"
fi

# (b) The component: CPython + the app, pre-initialised (the module is imported at build time).
cpy -q -d "$WIT" -w "$WORLD" componentize app -p . -o "$OUT"
echo "built $(pwd)/$OUT ($(wc -c <"$OUT") bytes)"
