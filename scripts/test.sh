#!/usr/bin/env bash
# Sets up .venv and .venv-dora04 and runs every test: lint, the recipe parity matrix, store, node replay, real
# dataflows; then all but the dataflows and the slow ones again in MoFA's environment (.venv-dora04: numpy<2,
# dora-rs 0.4.1). Arguments go to the first pytest run alone, and skip the second.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
ruff check .
set +e
python -m pytest "$@"
status=$?
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  # Once more in MoFA's environment (.venv-dora04: numpy<2, dora-rs 0.4.1): every test but the dataflows
  # (they run both dora lines already) and the slow ones.
  echo "== again in MoFA's environment: $(.venv-dora04/bin/python -c 'import numpy, pyarrow, dora; print("numpy", numpy.__version__, "pyarrow", pyarrow.__version__, "dora-rs", dora.__version__)')"
  .venv-dora04/bin/python -m pytest -m "not dataflow and not slow"
  status=$?
fi
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
