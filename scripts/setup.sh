#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with everything the demo and the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" "dora-rs==1.1.0" "dora-rs-cli==1.1.0"
