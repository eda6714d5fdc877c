#!/usr/bin/env bash
# Sets up .venv and runs the demo dataflow (dataflows/demo.yml) with the real dora CLI (ends by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=plot bash scripts/setup.sh .venv  # dora 1.1 and what the demo draws with; scripts/test.sh sets up both, with the test extra
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
cd dataflows
exec dora run demo.yml
