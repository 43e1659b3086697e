#!/usr/bin/env bash
# Run fedloom's test suite (pytest), after setting up .venv if needed.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
