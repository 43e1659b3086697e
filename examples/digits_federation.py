"""The digits demo across a real federation on this machine: a director and envoys as separate
``fx`` processes on 127.0.0.1, mutual TLS with certificates made for the occasion, and the same
``DigitsFlow`` as ``digits_demo.py`` submitted with a FederatedRuntime.

Each envoy makes its own shard of scikit-learn's digits (its private attributes, configured in
its envoy YAML); the director's aggregator holds the held-out test set. Only models, sample
counts and metrics cross the wire. The run is recorded (``checkpoint=True``) and fetched into
``.metaflow`` here, where its page (``fedloom-run.html``) plots every metric.

    python examples/digits_federation.py [--rounds 5] [--envoys 3] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))

from digits_demo import DigitsFlow, _digits_split, _positive, init_params, run_page  # noqa: E402

from fedloom import FederatedRuntime  # noqa: E402
from fedloom.federation.localhost import local_federation  # noqa: E402

MAX_ENVOYS = 16

# The sites' side: modules the node configs name (written into the federation's folder).
SITES_MODULE = '''"""Private attributes of the demo's director and envoys."""
from digits_demo import _digits_split, collaborator_private_attributes  # noqa: F401


class PrintReporter:
    """One line per round; the director streams it to the user, attributed to the join."""

    def __init__(self, rounds):
        self.rounds = rounds

    def round_done(self, round_no, global_acc, agg_acc, local_acc, loss):
        print(f"round {round_no:>3}/{self.rounds}  train loss {loss:.4f}  test acc "
              f"{global_acc:.4f}  local val acc {agg_acc:.4f} -> {local_acc:.4f}")


def aggregator_attributes(seed, rounds):
    _, x_test, _, y_test = _digits_split(seed)
    return {"test_x": x_test, "test_y": y_test, "reporter": PrintReporter(rounds)}
'''


def director_config(seed: int, rounds: int) -> str:
    # The demo's admins are you: plans are approved automatically (review_experiment: false).
    return ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
            "  envoy_health_check_period: 5\n  review_experiment: false\n"
            "aggregator:\n  callable_func:\n    template: demo_sites.aggregator_attributes\n"
            f"    settings: {{seed: {seed}, rounds: {rounds}}}\n")


def envoy_config(name: str, index: int, count: int, seed: int) -> str:
    return (f"settings:\n  review_experiment: false\n{name}:\n  callable_func:\n"
            "    template: demo_sites.collaborator_private_attributes"
            f"\n    settings: {{index: {index}, n_collaborators: {count}, seed: {seed}}}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=_positive, default=5, help="FedAvg rounds (5)")
    parser.add_argument("--envoys", type=_positive, default=3,
                        help="number of envoys, each with its own shard (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, init, shuffling")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep configs, certificates and logs in this folder")
    args = parser.parse_args(argv)
    if args.envoys > MAX_ENVOYS:
        parser.error(f"--envoys must be at most {MAX_ENVOYS} (each is a process here)")
    return args


def main(argv: Sequence[str] | None = None) -> float:
    """Run the demo; returns the final accuracy of the global model on the held-out test set."""
    args = parse_args(argv)
    console = Console(highlight=False)
    names = [f"site_{i}" for i in range(args.envoys)]
    with tempfile.TemporaryDirectory(prefix="fedloom-demo-") as scratch, ExitStack() as nodes:
        folder = args.keep or Path(scratch)
        with console.status(f"starting a director and {args.envoys} envoys (TLS) ..."):
            started = time.perf_counter()
            fed = nodes.enter_context(local_federation(
                folder, {n: envoy_config(n, i, len(names), args.seed) for i, n in enumerate(names)},
                director_config(args.seed, args.rounds), files={"demo_sites.py": SITES_MODULE},
                env={"PYTHONPATH": str(EXAMPLES)}))
        console.print(f"federation up in {time.perf_counter() - started:.1f} s: director on "
                      f"127.0.0.1:{fed.port}, envoys {', '.join(names)}")
        n_features = _digits_split(args.seed)[0].shape[1]
        flow = DigitsFlow(model=init_params(n_features, args.seed), rounds=args.rounds,
                          checkpoint=True)
        flow.runtime = FederatedRuntime(collaborators=names, director=fed.director_info())
        began = time.perf_counter()
        flow.run()
        elapsed = time.perf_counter() - began
    final = float(flow.final_accuracy)
    console.print(f"final global test accuracy: {final:.4f}  ({args.rounds} rounds across "
                  f"{args.envoys} envoys in {elapsed:.1f} s)")
    console.print(f"plots of every metric: {run_page('DigitsFlow', flow)}  (fx run metrics "
                  f"DigitsFlow/{flow._run_id} for the numbers)", soft_wrap=True)
    return final


if __name__ == "__main__":
    main()
