#!/usr/bin/env bash
# Usage: scripts/setup.sh [.venv | .venv-dora04]
# Creates .venv (dora 1.1) and .venv-dora04 (dora 0.4.1) if missing (or only the one named), and installs the
# project with everything the demo and the tests use into each. A dataflow runs on one daemon version, so each
# line gets its own environment: activate the one whose `dora` runs your dataflow. The project is installed
# editable, so a second run installs nothing unless pyproject.toml, this script or the backend changed (stamp
# in each venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
only=${1:-}
case "$only" in
  ""|.venv|.venv-dora04) ;;
  *) echo "setup: unknown environment '$only'; give .venv, .venv-dora04 or nothing (both)" >&2; exit 2 ;;
esac
# MLX's backend: its CUDA 13 build on a Linux machine with an NVIDIA driver, else the CPU build (on macOS
# the extra is ignored: plain mlx runs on Metal). Set MLX_EXTRA=cpu, cuda12 or cuda13 to choose.
extra=${MLX_EXTRA:-cpu}
if [ -z "${MLX_EXTRA:-}" ] && [ "$(uname -s)" = Linux ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=cuda13
fi
# What else goes in: the test extra (torch, transformers: the oracles) by default; the demo asks for plot alone.
extras="${SETUP_EXTRAS:-test},$extra"
# .venv-dora04 is also MoFA's environment: dora-primespeech pins numpy<2 beside dora-rs 0.4.1.
for line in "1.1.0 .venv" "0.4.1 .venv-dora04 numpy<2"; do
  set -- $line
  if [ -n "$only" ] && [ "$only" != "$2" ]; then
    continue
  fi
  if [ ! -x "$2/bin/python" ]; then
    "$PYTHON" -m venv "$2"
  fi
  stamp="$1 $extras $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$2/.setup-stamp" ] && [ "$(cat "$2/.setup-stamp")" = "$stamp" ]; then
    echo "setup: $2 is up to date (dora $1)"
    continue
  fi
  "$2/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$2/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]" "dora-rs==$1" "dora-rs-cli==$1" ${3:+"$3"}
  echo "$stamp" > "$2/.setup-stamp"
done
