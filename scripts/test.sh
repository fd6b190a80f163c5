#!/usr/bin/env bash
# Install everything the tests need into .venv and run them (lint, unit, integration).
# The same script runs in CI (.ci/run). GPU tests (marked `gpu`) skip where no NVIDIA driver answers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
