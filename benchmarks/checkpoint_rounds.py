"""What checkpoint=True costs per round, against serialising the changed state once.

N collaborators each change a model of P float32 parameters per round; the join averages. A
round records N + 1 tasks (N trains, one join). "serialise once" = pickling every model that
changed in the round once (N + 1 models); the target is "added" at most 2x that. Every figure
is the median of REPEATS runs in fresh directories (page-cache writeback makes single runs of
the large case swing by 2x on a small VM). Disk used per round is measured on the store.
--dir puts the runs on another filesystem: on a tmpfs (/dev/shm) the disk drops out and what is
left is the CPU cost of checkpointing; on a disk that sustains less than the state changes per
round, writing it is the floor of any checkpoint ("write once" is measured there too).
Usage: python benchmarks/checkpoint_rounds.py [--quick] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedloom import FLSpec, LocalRuntime, aggregator, collaborator, fedavg
from fedloom.participants import Collaborator

ROUNDS = 10
REPEATS = 3


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


def measure(n: int, params: int, where: str | None
            ) -> tuple[float, float, float, float, float]:
    """One repetition: round time off and on, disk per round, pickling and writing once."""
    home = os.getcwd()
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        os.chdir(tmp)
        try:
            pickled, _ = serialise_once(n, params)  # before the runs fill memory
            off = per_round(n, params, checkpoint=False)
            on = per_round(n, params, checkpoint=True)
            disk = disk_mb(Path(tmp) / ".metaflow") / (ROUNDS + 0.5)
            _, written = serialise_once(n, params)  # as fast as the disk sustains, after the runs
        finally:
            os.chdir(home)
    return off, on, disk, pickled, written


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=None, help="run in a temporary folder under PATH")
    args = parser.parse_args()
    table = Table(title=f"Checkpoint overhead per round (N collaborators, {ROUNDS} rounds, "
                        f"in {args.dir or tempfile.gettempdir()})")
    for col in ("N", "P", "round, off (s)", "round, on (s)", "added (s)", "serialise once (s)",
                "write once (s)", "added / serialise", "added / (serialise + write)",
                "disk per round (MB)", "changed state (MB)"):
        table.add_column(col, justify="right")
    grid = [(8, 10**5)] if args.quick else [(8, 10**5), (8, 10**7)]
    import fedloom.checkpoint.metaflow_store  # noqa: F401  (one-time import, not per round)

    for n, params in grid:
        runs = [measure(n, params, args.dir) for _ in range(1 if args.quick else REPEATS)]
        off, on, disk, pickled, written, added = (
            statistics.median(column)
            for column in zip(*[(*run, run[1] - run[0]) for run in runs], strict=True))
        table.add_row(str(n), f"{params:.0e}", f"{off:.3f}", f"{on:.3f}", f"{added:.3f}",
                      f"{pickled:.3f}", f"{written:.3f}", f"{added / pickled:.1f}x",
                      f"{added / (pickled + written):.1f}x", f"{disk:.1f}",
                      f"{(n + 1) * params * 4 / 2**20:.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
