#!/usr/bin/env bash
# Set up (if needed) and run every check: ruff, the strict type gate (mypy --strict over
# services, gateway, mesh, cli, scripts and bench; see [tool.mypy] in pyproject.toml),
# and the tests (generated code current, real Redis, gRPC servers and Envoy).
# Exits non-zero on any failure (including pytest finding no tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
