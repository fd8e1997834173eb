# Sourced by scripts/test, scripts/demo and scripts/lock: puts the pinned uv in $UV.
#
# uv comes from scripts/uv.txt (a version and its hashes), installed with pip into
# .tools/uv, so a fresh machine needs only Python 3.11+ and the package index. uv never
# downloads an interpreter: the venvs use $PYTHON (default python3).

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Conveyor needs Python 3.11 or newer: run PYTHON=python3.12 $0" >&2
    exit 1
fi
export UV_PYTHON="$PYTHON" UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

tools=.tools/uv
UV="$tools/bin/uv"
if ! cmp -s scripts/uv.txt "$tools/uv.txt" 2>/dev/null || [ ! -x "$UV" ]; then
    rm -rf "$tools"
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --no-deps -r scripts/uv.txt
    cp scripts/uv.txt "$tools/uv.txt"
fi
