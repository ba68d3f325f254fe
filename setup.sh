#!/usr/bin/env bash
# Create .venv and install the pinned dependencies and drdm_engine (editable).
#   ./setup.sh          runtime only (drdm command line)
#   ./setup.sh --test   also the test dependencies (pytest, slicer-core)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
req=requirements.txt
[ "${1:-}" = "--test" ] && req=requirements-test.txt
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r "$req"
.venv/bin/python -m pip install -q --no-deps -e .
