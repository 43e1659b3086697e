"""What checkpoint=True costs per round, against serialising the changed state once.

N collaborators each change a model of P float32 parameters per round; the join averages. A
round records N + 1 tasks (N trains, one join). "serialise once" = pickling every model that
changed in the round once (N + 1 models). Disk used per round is measured on the store.
Usage: python benchmarks/checkpoint_rounds.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedloom import FLSpec, LocalRuntime, aggregator, collaborator, fedavg
from fedloom.participants import Collaborator

ROUNDS = 10


class Train(FLSpec):
    def __init__(self, params: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model = np.zeros(params, dtype=np.float32)

    @aggregator
    def start(self) -> None:
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.stamps = [time.perf_counter()]
        self.next(self.train, foreach="collaborators", exclude=["stamps"])

    @collaborator
    def train(self) -> None:
        self.model += float(self.input[1:]) + 1.0  # a different model per collaborator
        self.next(self.join)

    @aggregator
    def join(self, inputs: list[Train]) -> None:
        self.model = fedavg([i.model for i in inputs])
        self.round += 1
        self.stamps.append(time.perf_counter())
        if self.round < ROUNDS:
            self.next(self.train, foreach="collaborators", exclude=["stamps"])
        else:
            self.next(self.end)

    @aggregator
    def end(self) -> None:
        pass


def per_round(n: int, params: int, checkpoint: bool) -> float:
    """Whole run (including the checkpoint writer draining at the end) divided by rounds."""
    flow = Train(params, checkpoint=checkpoint)
    flow.runtime = LocalRuntime(collaborators=[Collaborator(name=f"c{i}") for i in range(n)])
    started = time.perf_counter()
    flow.run()
    return (time.perf_counter() - started) / ROUNDS


def serialise_once(n: int, params: int) -> tuple[float, float]:
    """Pickling the round's N + 1 changed models once, and writing those bytes to files in the
    working directory (the disk's own floor for any checkpoint)."""
    models = [np.full(params, float(i), dtype=np.float32) for i in range(n + 1)]
    started = time.perf_counter()
    blobs = [pickle.dumps(m, protocol=5) for m in models]
    pickled = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        started = time.perf_counter()
        for i, blob in enumerate(blobs):
            (Path(tmp) / str(i)).write_bytes(blob)
        written = time.perf_counter() - started
    return pickled, written


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    table = Table(title=f"Checkpoint overhead per round (N collaborators, {ROUNDS} rounds)")
    for col in ("N", "P", "round, off (s)", "round, on (s)", "added (s)", "serialise once (s)",
                "write once (s)", "added / (serialise + write)", "disk per round (MB)",
                "changed state (MB)"):
        table.add_column(col, justify="right")
    grid = [(8, 10**5)] if args.quick else [(8, 10**5), (8, 10**7)]
    home = os.getcwd()
    import fedloom.checkpoint.metaflow_store  # noqa: F401  (one-time import, not per round)

    for n, params in grid:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)
            try:
                off = per_round(n, params, checkpoint=False)
                on = per_round(n, params, checkpoint=True)
                disk = disk_mb(Path(tmp) / ".metaflow") / (ROUNDS + 0.5)
            finally:
                os.chdir(home)
        pickled, written = serialise_once(n, params)
        added = on - off
        table.add_row(str(n), f"{params:.0e}", f"{off:.3f}", f"{on:.3f}", f"{added:.3f}",
                      f"{pickled:.3f}", f"{written:.3f}", f"{added / (pickled + written):.1f}x",
                      f"{disk:.1f}", f"{(n + 1) * params * 4 / 2**20:.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
