#!/usr/bin/env bash
# Python clients (Segment's and RudderStack's SDKs, grpcio, the examples in
# tools/examples) against a real `cohort serve`.
#
#   tests/python/run.sh [PYTEST ARGS...]
#
# Makes a virtualenv in tests/python/.venv on first use and installs
# tests/python/requirements.txt into it (again whenever that file changes),
# builds target/debug/cohort, then runs pytest. Needs python3 (3.9 or later)
# and, for the first install, PyPI. Fails, never skips, when it cannot.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

fail() { echo "tests/python/run.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || fail "$python not found: the Python client tests need Python 3"

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv"
    "$python" -m venv "$venv" || fail "could not create a virtualenv with $python -m venv (on Debian: apt-get install python3-venv)"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "== pip install -r tests/python/requirements.txt"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt" \
        || fail "pip could not install tests/python/requirements.txt (is PyPI reachable?)"
    echo "$want" > "$stamp"
fi

# Under `cargo test` (tests/python_clients.rs) the binary is given.
if [ -z "${COHORT_BIN:-}" ]; then
    echo "== cargo build (cohort)"
    (cd "$root" && cargo build --locked --bin cohort)
    target="${CARGO_TARGET_DIR:-target}"
    case "$target" in /*) ;; *) target="$root/$target" ;; esac
    export COHORT_BIN="$target/debug/cohort"
fi

echo "== pytest tests/python"
cd "$here"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest "$@"
