#!/usr/bin/env bash
# Set up (if needed) and run the whole mesh on this machine. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m mesh "$@"
