#!/usr/bin/env bash
# Run the demo: a real federated training (4 collaborators on scikit-learn's digits, FedAvg).
# Sets up .venv on first use. Usage: bash scripts/demo.sh [--rounds N] [--collaborators N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/digits_demo.py "$@"
