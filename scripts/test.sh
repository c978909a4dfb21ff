#!/usr/bin/env bash
# Set up (if needed) and run every check: generated code current, ruff, and the tests.
# Exits non-zero on any failure (including pytest finding no tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
