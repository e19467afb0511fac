#!/usr/bin/env bash
# Create the virtual environment and install gpupool with its development tools.
# Works on a fresh Debian machine as root: installs python3-venv with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to apt-get install $*" >&2; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$PYTHON" >/dev/null; then
  apt_install python3 python3-venv python3-pip
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: gpupool needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V))" >&2; exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import gpupool, fastapi, sqlalchemy, psycopg' # fail loudly if the install did not take
