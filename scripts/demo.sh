#!/usr/bin/env bash
# Run the demo: a real federated training on this machine — a director and 3 envoys as separate
# processes with mutual TLS, FedAvg of an MLP on scikit-learn's digits, each envoy with its own
# shard. Sets up .venv on first use. Options: --rounds N --envoys N --seed N --keep DIR
# The run is recorded in ./.metaflow; the demo ends saying where its page with the plots of the
# metrics each round logged is. (For the same flow in one process or on Ray:
# .venv/bin/python examples/digits_demo.py --help)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/digits_federation.py "$@"
