#!/usr/bin/env bash
# Sets up .venv and runs the demo dataflow (dataflows/demo.yml) with the real dora CLI (ends by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh .venv  # the demo runs on dora 1.1 only; scripts/test.sh sets up both
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
cd dataflows
exec dora run demo.yml
