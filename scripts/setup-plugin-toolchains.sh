#!/usr/bin/env bash
# Installs the toolchains that build the Python and JavaScript example plugins
# (examples/python-apikey, examples/js-cors) and their tests (tests/it/languages.rs):
#   - componentize-py, at the version pinned in examples/python-apikey/requirements.txt (pip);
#   - componentize-js and its toolchain in examples/js-cors/node_modules (npm ci, from
#     package-lock.json).
# Idempotent: when both are present at the pinned versions it only says so (well under a
# second). Needs python3 with pip, and Node.js with npm (Node 20 verified).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PY_REQ=examples/python-apikey/requirements.txt
JS_DIR=examples/js-cors

# --- Python: componentize-py ----------------------------------------------------------------
want=$(sed -n 's/^componentize-py==//p' "$PY_REQ")
[ -n "$want" ] || { echo "setup: no componentize-py==VERSION line in $PY_REQ" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (install python3 and python3-pip)" >&2; exit 1; }
have=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)
if [ "$have" = "$want" ]; then
    echo "componentize-py $want: already installed"
else
    echo "componentize-py: installing $want (found: ${have:-none}) with $PYTHON -m pip"
    if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$PY_REQ"; then
        # A Debian system python refuses pip installs (PEP 668) unless told otherwise.
        echo "setup: pip install failed; retrying with --break-system-packages" >&2
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages -r "$PY_REQ"
    fi
    have=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("componentize-py"))')
    [ "$have" = "$want" ] || { echo "setup: componentize-py is $have after installing, wanted $want" >&2; exit 1; }
    echo "componentize-py $want: installed"
fi
if ! command -v componentize-py >/dev/null; then
    echo "note: componentize-py is not on PATH; build.sh runs it through $PYTHON instead"
fi

# --- JavaScript: componentize-js in examples/js-cors/node_modules ---------------------------
command -v npm >/dev/null || { echo "setup: npm not found (install Node.js 20 and npm)" >&2; exit 1; }
stamp="$JS_DIR/node_modules/.sluice-lock.sha256"
lock_hash=$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)
if [ -x "$JS_DIR/node_modules/.bin/componentize-js" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_hash" ]; then
    echo "componentize-js: $JS_DIR/node_modules is up to date with package-lock.json"
else
    echo "componentize-js: npm ci in $JS_DIR (node $(node --version), npm $(npm --version))"
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$stamp"
    echo "componentize-js $(cd "$JS_DIR" && node -p "require('./node_modules/@bytecodealliance/componentize-js/package.json').version"): installed in $JS_DIR/node_modules"
fi
