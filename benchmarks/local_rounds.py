"""Per-round time of the serial LocalRuntime against the floor on the same machine.

For N collaborators and a model of P float32 parameters, a realistic flow fans the model out to
every collaborator (the state also carries ``self.collaborators``, the N names), each
collaborator holds private data (``--private-mib`` of float32 each, 1 MiB by default) and makes
an O(1) update to its own copy with it, and the join averages them with ``fedavg``. The floor is
what any serial runtime must do per round: one ``np.copy`` of N x P values, the same trivial
train step per collaborator, and the FedAvg itself. Targets (from the issues):

- N=8, P=1e7 and N=128, P=1e5: per round within 1.5x of the floor;
- N=1000, P=1e3: under 30 ms per round, setup under 1 s;
- peak memory about N+2 copies of the model plus the private data, no more.

Each configuration runs in its own subprocess so that peak RSS is its own.

    python benchmarks/local_rounds.py [--quick] [--rounds 5] [--max-gb 6] [--private-mib 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from machine_speed import speed_line
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from fedloom import Aggregator, Collaborator, FLSpec, LocalRuntime, aggregator, collaborator, fedavg

FULL_N = (2, 8, 128, 1000)
FULL_P = (1_000, 100_000, 10_000_000)
QUICK_N = (2, 8, 1000)
QUICK_P = (1_000, 100_000)

HEADER = """\
setup:  participants + runtime built, private data made, flow checked, up to the first fan-out
floor:  one np.copy of N x P float32 + the train step on each row + fedavg of N arrays of P.
        The copy faults in a fresh N x P buffer each time; the runtime's per-collaborator
        copies may reuse freed heap memory, hence some ratios below 1.
peak:   max RSS above the process before the model existed, less the collaborators' private
        data. The flow is given a model nobody else holds (a caller that keeps its own
        reference to it adds one copy from the second round on); at P=1e3 the peak is mostly
        per-collaborator bookkeeping, not the model."""


# -- the flow being measured --------------------------------------------------------------------


class RoundsFlow(FLSpec):
    """Fan out the model, touch it, FedAvg it; ``clock`` (an aggregator private attribute, so it
    is never copied) gets a timestamp at every fan-out."""

    def __init__(self, model: NDArray[np.float32], rounds: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.rounds = rounds

    @aggregator
    def start(self) -> None:
        self.collaborators = self.runtime.collaborators
        self.current_round = 0
        self.clock.append(time.perf_counter())
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self) -> None:
        # O(1) and in place: each collaborator has its own copy; the floor does the same.
        self.model[:1] += self.data[:1]
        self.next(self.join)

    @aggregator
    def join(self, inputs: Sequence[Any]) -> None:
        self.model = fedavg([i.model for i in inputs])
        self.current_round += 1
        self.clock.append(time.perf_counter())
        if self.current_round < self.rounds:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self) -> None:
        pass


# -- one configuration, in a subprocess ---------------------------------------------------------


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def private_data(index: int, floats: int) -> dict[str, NDArray[np.float32]]:
    """A collaborator's private data: ``floats`` float32 values (1 MiB by default)."""
    return {"data": np.full(floats, 1.0 + index % 7, np.float32)}


def measure_flow(n: int, p: int, rounds: int, private_floats: int) -> dict[str, Any]:
    """Setup time (participants and runtime built, flow checked, private data made, up to the
    first fan-out), per-round times, and peak RSS above the baseline of this process before the
    model exists."""
    baseline = max_rss_bytes()
    # Written, so its pages are resident like a real model's; handed to the flow alone, as in
    # RoundsFlow(make_model()) (a caller that keeps a reference of its own adds one copy).
    initial = [np.full(p, 0.5, np.float32)]
    clock: list[float] = []
    began = time.perf_counter()
    agg = Aggregator()
    agg.private_attributes = {"clock": clock}
    collaborators = [Collaborator(name=f"collab_{i}", private_attributes_callable=private_data,
                                  index=i, floats=private_floats) for i in range(n)]
    flow = RoundsFlow(initial.pop(), rounds)
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=collaborators)
    flow.run()
    peak = max_rss_bytes()
    return {"setup_s": clock[0] - began, "round_s": np.diff(clock).tolist(),
            "baseline_bytes": baseline, "peak_bytes": peak,
            "private_bytes": n * private_floats * 4}


def measure_floor(n: int, p: int, repeats: int) -> float:
    """Median time of one np.copy of N x P values, the train step on each copied row, and
    fedavg of the N rows."""
    source = np.full((n, p), 0.5, np.float32)
    data = np.ones(1, np.float32)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        copied = np.copy(source)
        rows = list(copied)
        for row in rows:
            row[:1] += data[:1]
        fedavg(rows)
        times.append(time.perf_counter() - began)
        del copied, rows  # free before the next copy, as a round frees the last round's copies
    return statistics.median(times)


def run_one(n: int, p: int, rounds: int, private_floats: int) -> dict[str, Any]:
    # The flow first, so the floor's arrays don't count in its peak.
    flow = measure_flow(n, p, rounds, private_floats)
    return {"n": n, "p": p, **flow, "floor_s": measure_floor(n, p, rounds)}


# -- the grid, in the parent --------------------------------------------------------------------


@dataclass
class Row:
    n: int
    p: int
    result: dict[str, Any] | None = None
    note: str = ""

    @property
    def round_s(self) -> float:
        """Median round after the first (which also pays for first-touch page faults)."""
        assert self.result is not None
        rounds = self.result["round_s"]
        return float(statistics.median(rounds[1:] or rounds))

    @property
    def ratio(self) -> float:
        assert self.result is not None
        return self.round_s / float(self.result["floor_s"])

    @property
    def copies(self) -> float:
        """Peak memory above baseline, in copies of the model."""
        assert self.result is not None
        r = self.result
        return float(r["peak_bytes"] - r["baseline_bytes"] - r["private_bytes"]) / (self.p * 4)


def measure_in_subprocess(n: int, p: int, rounds: int, private_mib: float) -> Row:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), str(p),
           "--rounds", str(rounds), "--private-mib", str(private_mib)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(n, p, note=f"failed (exit {done.returncode}): {last}")
    return Row(n, p, json.loads(done.stdout.strip().splitlines()[-1]))


def run_grid(ns: Sequence[int], ps: Sequence[int], rounds: int, max_bytes: float,
             private_mib: float) -> list[Row]:
    status = Console(stderr=True)  # a spinner on a terminal, silent in logs
    rows = []
    for n in ns:
        for p in ps:
            if n * p * 4 > max_bytes:  # N copies alone would not fit
                rows.append(Row(n, p, note=f"skipped ({n * p * 4 / 1e9:.0f} GB)"))
                continue
            with status.status(f"N={n}, P={_si(p)} ..."):
                rows.append(measure_in_subprocess(n, p, rounds, private_mib))
    return rows


# -- printing -------------------------------------------------------------------------------------


def _si(p: int) -> str:
    return f"1e{len(str(p)) - 1}" if str(p).strip("0") == "1" else str(p)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def results_table(rows: Sequence[Row], rounds: int, private_mib: float) -> Table:
    table = Table(title=f"serial LocalRuntime: median of {rounds} rounds after a first one; "
                        f"{private_mib:g} MiB of private data per collaborator")
    for name in ("N", "P", "setup", "per round", "floor", "ratio", "peak (model copies)",
                 "N+2", "peak MiB"):
        table.add_column(name, justify="right")
    for row in rows:
        if row.result is None:
            table.add_row(str(row.n), _si(row.p), row.note, *[""] * 6)
            continue
        r = row.result
        peak_mib = (r["peak_bytes"] - r["baseline_bytes"] - r["private_bytes"]) / 2**20
        table.add_row(str(row.n), _si(row.p), _ms(r["setup_s"]), _ms(row.round_s),
                      _ms(r["floor_s"]), f"{row.ratio:.2f}x",
                      f"{row.copies:,.1f}", str(row.n + 2), f"{peak_mib:,.1f}")
    return table


def targets_table(rows: Sequence[Row]) -> Table:
    found = {(row.n, row.p): row for row in rows if row.result is not None}
    table = Table(title="targets")
    for name in ("target", "measured", "verdict"):
        table.add_column(name)

    def add(target: str, measured: str, ok: bool) -> None:
        table.add_row(target, measured, "[green]met[/]" if ok else "[red]missed[/]")

    if (row := found.get((8, 10_000_000))) is not None:
        add("N=8, P=1e7: per round <= 1.5x floor", f"{row.ratio:.2f}x", row.ratio <= 1.5)
    if (row := found.get((128, 100_000))) is not None:
        add("N=128, P=1e5: per round <= 1.5x floor", f"{row.ratio:.2f}x", row.ratio <= 1.5)
    if (row := found.get((1000, 1_000))) is not None:
        add("N=1000, P=1e3: per round < 30 ms", _ms(row.round_s), row.round_s < 0.030)
        setup = row.result["setup_s"] if row.result else 0.0
        add("N=1000, P=1e3: setup < 1 s", _ms(setup), setup < 1.0)
    for (n, p), row in sorted(found.items()):
        if p >= 100_000 and n * p >= 10_000_000:  # where the model, not bookkeeping, dominates
            # "About N+2": allow 10% for allocator slack and interpreter noise.
            add(f"N={n}, P={_si(p)}: peak about N+2 = {n + 2} copies", f"{row.copies:,.1f}",
                row.copies <= 1.1 * (n + 2))
    return table


def machine_line() -> str:
    return (f"python {platform.python_version()}, numpy {np.__version__}, "
            f"{os.cpu_count()} CPUs, {platform.machine()} {platform.system()}")


# -- entry point ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small grid: N in {QUICK_N}, P in {QUICK_P}")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds per configuration, after a first one (5)")
    parser.add_argument("--max-gb", type=float, default=6.0,
                        help="skip configurations whose N x P float32 values exceed this (6)")
    parser.add_argument("--private-mib", type=float, default=1.0,
                        help="private data per collaborator, MiB of float32 (1)")
    parser.add_argument("--one", nargs=2, type=int, metavar=("N", "P"),
                        help=argparse.SUPPRESS)  # internal: measure one config, print JSON
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        n, p = args.one
        floats = max(1, int(args.private_mib * 2**20) // 4)
        print(json.dumps(run_one(n, p, args.rounds + 1, floats)))  # + the first round
        return
    ns, ps = (QUICK_N, QUICK_P) if args.quick else (FULL_N, FULL_P)
    speed = speed_line("before the grid")
    began = time.perf_counter()
    rows = run_grid(ns, ps, args.rounds, args.max_gb * 1e9, args.private_mib)
    console = Console(width=None if sys.stdout.isatty() else 120)  # logs: no wrapped tables
    console.print(machine_line())
    console.print(speed)
    console.print(HEADER, highlight=False)
    console.print(results_table(rows, args.rounds, args.private_mib))
    console.print(targets_table(rows))
    console.print(f"total time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
