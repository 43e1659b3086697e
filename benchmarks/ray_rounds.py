"""Ray backend against the serial backend and the copy floor.

Prints three tables:
  1. per-round time and driver/total memory for N collaborators x P float32 parameters;
  2. a CPU-bound collaborator step (~0.5 s of single-threaded numpy work) serial vs Ray;
  3. Ray start-up (not counted in rounds).

Each configuration runs in its own subprocess so peak-memory numbers don't mix.
Usage: python benchmarks/ray_rounds.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# One BLAS thread everywhere, so "parallel" means Ray's processes, not numpy's threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from machine_speed import speed_line
from rich.console import Console
from rich.table import Table

from fedloom import (
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
    fedavg,
)

ROUNDS = 4


class Rounds(FLSpec):
    """Fan out the model, a step per collaborator, FedAvg at the join; timestamps per round."""

    def __init__(self, params: int, work_seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model = np.zeros(params, dtype=np.float32)
        self.work_seconds = work_seconds

    @aggregator
    def start(self) -> None:
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.stamps = [time.perf_counter()]
        self.next(self.train, foreach="collaborators", exclude=["stamps"])

    @collaborator
    def train(self) -> None:
        if self.work_seconds:
            busy(self.work_seconds)
        self.model[:1] += 1.0  # touch the copy without a full pass over it
        self.next(self.join)

    @aggregator
    def join(self, inputs: list[Rounds]) -> None:
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


def busy(seconds: float) -> None:
    """Single-threaded numpy work for about ``seconds``."""
    data = np.random.default_rng(0).random(200_000)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        np.sort(data)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cluster_rss_mb() -> float:
    """Resident memory of every Ray worker process on this machine (children of raylets)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
            if b"ray::" not in cmd and b"default_worker.py" not in cmd:
                continue
            with open(f"/proc/{pid}/status") as fh:
                rss = next(line for line in fh if line.startswith("VmRSS"))
            total += int(rss.split()[1])
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_one(backend: str, n: int, params: int, work: float) -> dict[str, float]:
    """Run one configuration in this process; returns timings and memory."""
    options = {"ray_init_kwargs": {"num_cpus": 2}} if backend == "ray" else {}
    runtime = LocalRuntime(collaborators=[Collaborator(name=f"c{i}") for i in range(n)],
                           backend=backend, **options)
    result: dict[str, float] = {}
    if backend == "ray":
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                 logging_level="ERROR")
        result["ray_init_s"] = time.perf_counter() - started
    flow = Rounds(params, work)
    flow.runtime = runtime
    started = time.perf_counter()
    flow.run()
    stamps = np.array(flow.stamps)
    result["setup_s"] = stamps[0] - started
    result["round_s"] = float(np.median(np.diff(stamps)[1:] if len(stamps) > 2 else
                                        np.diff(stamps)))
    result["first_round_s"] = float(stamps[1] - stamps[0])
    result["driver_mb"] = peak_rss_mb()
    result["workers_mb"] = cluster_rss_mb() if backend == "ray" else 0.0
    runtime.shutdown()
    return result


def floor_seconds(n: int, params: int) -> float:
    """One copy of N x P float32 values plus the FedAvg of N models."""
    models = [np.zeros(params, dtype=np.float32) for _ in range(n)]
    started = time.perf_counter()
    for m in models:
        m.copy()
    fedavg(models)
    return time.perf_counter() - started


def in_subprocess(backend: str, n: int, params: int, work: float) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--one", backend, str(n), str(params),
                           str(work)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": 1.0}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small grid")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        backend, n, params, work = args.one
        print(json.dumps(run_one(backend, int(n), int(params), float(work))))
        return
    console = Console(width=120)
    console.print(speed_line())
    grid = [(8, 10**5), (128, 10**5)] if args.quick else [
        (8, 10**5), (32, 10**5), (128, 10**5), (8, 10**7), (32, 10**7), (1000, 10**3)]
    table = Table(title=f"Per-round time, {ROUNDS} rounds (median after the first), 2 CPUs")
    for col in ("N", "P", "serial s/round", "ray s/round", "floor s", "ray/floor",
                "ray driver MB", "ray workers MB"):
        table.add_column(col, justify="right")
    startup = []
    for n, params in grid:
        serial = in_subprocess("single_process", n, params, 0.0)
        ray_run = in_subprocess("ray", n, params, 0.0)
        floor = floor_seconds(n, params)
        startup.append(ray_run.get("ray_init_s", float("nan")))
        table.add_row(str(n), f"{params:.0e}", f"{serial.get('round_s', float('nan')):.4f}",
                      f"{ray_run.get('round_s', float('nan')):.4f}", f"{floor:.4f}",
                      f"{ray_run.get('round_s', float('nan')) / floor:.1f}x",
                      f"{ray_run.get('driver_mb', float('nan')):.0f}",
                      f"{ray_run.get('workers_mb', float('nan')):.0f}")
    console.print(table)

    cpu = Table(title="CPU-bound step: 0.5 s of single-threaded numpy per collaborator")
    for col in ("N", "serial s/round", "ray s/round", "speed-up"):
        cpu.add_column(col, justify="right")
    for n in (2, 4):
        serial = in_subprocess("single_process", n, 1000, 0.5)
        ray_run = in_subprocess("ray", n, 1000, 0.5)
        cpu.add_row(str(n), f"{serial['round_s']:.2f}", f"{ray_run['round_s']:.2f}",
                    f"{serial['round_s'] / ray_run['round_s']:.2f}x")
    console.print(cpu)
    console.print(f"Ray start-up (ray.init, not counted in rounds): median "
                  f"{float(np.nanmedian(startup)):.1f} s")


if __name__ == "__main__":
    main()
