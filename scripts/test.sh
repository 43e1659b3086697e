#!/usr/bin/env bash
# Run fedloom's test suite (pytest), after setting up .venv if needed.
# Usage: bash scripts/test.sh [pytest args...]
# Tests run in parallel, a whole file per worker (pytest-xdist): one per CPU, at most 4 (most
# tests wait on real processes more than they compute). -n 0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile "$@"
