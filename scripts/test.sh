#!/usr/bin/env bash
# Install everything the tests need into .venv and run them (lint, unit, integration, browser).
# The same script runs in CI (.ci/run). GPU tests (marked `gpu`) skip where no NVIDIA driver answers.
# Needs Node >= 20 and npm (the JupyterLab extension is built by `pip install`; Debian's are
# installed here when missing and run as root); the browser tests use Debian's Chromium, installed
# here the same way (they skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's chromium for the browser tests (tests/ui)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's nodejs and npm (pip install builds the JupyterLab extension with them)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if ! command -v npm >/dev/null || [ "$node_major" -lt 20 ]; then
    echo "Node >= 20 with npm is needed (found: $(node --version 2>/dev/null || echo none)): pip install" \
         "builds the JupyterLab extension from labextension/" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Builds labextension/ into tf_jupyter/labextension (npm) and installs it for JupyterLab.
.venv/bin/python -m pip install -q -e '.[test]'
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
