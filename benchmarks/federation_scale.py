"""The federation at scale: one real director, with hundreds of real envoys or a thousand
simulated ones, and hundreds of idle calls from one certificate.

Everything runs on 127.0.0.1 on free ports, with mutual TLS and certificates made for the
occasion (``make_certificates``), in a temporary folder that is removed at the end; every
process started here is stopped, also on Ctrl-C or an error, and every wait has a timeout.

1. ``--real-envoys`` (100) ``fx envoy`` processes against ``fx director start`` (health check
   every ``--real-health-period`` s, review off everywhere): the time until all registered, a
   1-round flow over all of them (``self.collaborators`` in the state, private data made on
   every envoy from its config, a few steps of numpy least squares per round, FedAvg in the
   join), then a ``--rounds``-round run for the time between successive joins (on the
   director's clock), and the RSS of the director and of its aggregator process.
2. ``--sim-envoys`` (1000) simulated envoys (``sim_envoys.py``: ``--sim-procs`` processes, one
   asyncio loop and one TLS channel per envoy, each with its own certificate) on the real
   protocol, health check every 1 s: the time until all registered, whether they all stay
   online for ``--soak`` s (the director's Envoys call before and after, and its log), a
   1-round flow over all of them, and the director's RSS and CPU seconds over the soak.
3. ``--idle-envoys`` (20) simulated envoys heartbeat while one user certificate holds
   ``--idle`` (64,500) Submit calls open that never send their first message: heartbeat
   round trips (p50/p99) without and with them, under the director's default limits (most
   are refused) and with limits raised so that all are held.

    python benchmarks/federation_scale.py [--parts 1,2,3] [--real-envoys 100]
        [--sim-envoys 1000] [--soak 300] [--idle 64,500] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from machine_speed import speed_line
from rich.console import Console
from rich.table import Table

from fedloom import FederatedRuntime
from fedloom.federation.localhost import (
    FX,
    Certs,
    LocalFederation,
    NodeProcess,
    make_certificates,
    tls_args,
)

HERE = Path(__file__).resolve().parent
SIM = HERE / "sim_envoys.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MISSED = "missed its health checks"
REGISTERED = re.compile(r"envoy '([^']+)' registered from")
console = Console(highlight=False, width=180)

FLOW_MODULE = "scale_flow"
FLOW_SOURCE = '''"""The scale benchmark's flow: least squares on each envoy's private data."""

import time

import numpy as np

from fedloom import FLSpec, aggregator, collaborator, fedavg


class ScaleFlow(FLSpec):
    def __init__(self, model=None, rounds=1, steps=5, lr=0.05, **kwargs):
        super().__init__(**kwargs)
        self.model = model if model is not None else np.zeros(16)
        self.rounds = rounds
        self.steps = steps
        self.lr = lr

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.stamps = [time.time()]  # when each round ended, on the director's clock
        self.next(self.train, foreach="collaborators", exclude=["stamps"])

    @collaborator
    def train(self):
        x, y = self.features, self.targets  # this envoy's private data
        w = self.model
        for _ in range(self.steps):
            w = w - self.lr * (x.T @ (x @ w - y)) / len(y)
        self.model = w
        self.loss = float(np.mean((x @ w - y) ** 2))
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = fedavg([i.model for i in inputs])
        losses = [i.loss for i in inputs if hasattr(i, "loss")]  # simulated envoys: none
        self.loss = float(np.mean(losses)) if losses else float("nan")
        self.contributors = len(inputs)
        self.round += 1
        self.stamps.append(time.time())
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators", exclude=["stamps"])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass
'''

PRIVATE_SOURCE = '''"""Each envoy's private data, made where the envoy runs."""

import numpy as np


def site_data(seed, rows=200, features=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    w = np.linspace(-1.0, 1.0, features)
    return {"features": x, "targets": x @ w + rng.normal(scale=0.1, size=rows)}
'''


class BenchError(Exception):
    """A part could not go on: what was awaited did not happen in time."""


# -- processes -------------------------------------------------------------------------------

class Processes:
    """Every process started here; :meth:`stop_all` ends them all (terminate, then kill)."""

    def __init__(self) -> None:
        self.nodes: list[NodeProcess] = []

    def start(self, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None
              ) -> NodeProcess:
        node = NodeProcess(args, cwd, env)
        self.nodes.append(node)
        return node

    def add(self, node: NodeProcess) -> NodeProcess:
        self.nodes.append(node)
        return node

    def stop(self, nodes: Iterable[NodeProcess], timeout: float = 15.0) -> None:
        nodes = [n for n in nodes if n.process.poll() is None]
        for node in nodes:
            with contextlib.suppress(OSError):
                node.process.terminate()
        deadline = time.monotonic() + timeout
        for node in nodes:
            with contextlib.suppress(Exception):  # still running: killed below
                node.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for node in nodes:
            if node.process.poll() is None:
                with contextlib.suppress(OSError):
                    node.process.kill()
                with contextlib.suppress(Exception):
                    node.process.wait(timeout=5)

    def stop_all(self) -> None:
        self.stop(self.nodes)
        self.nodes.clear()


def drain(node: NodeProcess) -> list[str]:
    """The lines ``node`` printed since the last call (they are kept in ``node.seen``)."""
    new = []
    while True:
        try:
            line = node.lines.get_nowait()
        except queue.Empty:
            return new
        if line is None:
            node.lines.put(None)  # the end stays visible to wait_for
            return new
        node.seen.append(line)
        new.append(line)


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def process_table() -> dict[int, tuple[int, str, float]]:
    """Every process: pid -> (parent, state, CPU seconds so far)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0],
                             (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def kind_of(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
    return "resource tracker" if "resource_tracker" in command else \
        "fork server" if "multiprocessing.forkserver" in command else \
        "experiment process" if "spawn_main" in command else command[:40]


def children_of(table: dict[int, tuple[int, str, float]]) -> dict[int, list[int]]:
    """Parent -> its live children, from :func:`process_table`."""
    children: dict[int, list[int]] = {}
    for pid, (parent, state, _) in table.items():
        if state != "Z":  # a zombie has ended
            children.setdefault(parent, []).append(pid)
    return children


def experiment_processes(node: int, children: dict[int, list[int]]) -> dict[int, str]:
    """A node's helper processes (fork server, resource tracker: by kind) and its experiment
    processes (the fork server's children, or its own 'spawn' children)."""
    found: dict[int, str] = {}
    for pid in children.get(node, []):
        if kind := kind_of(pid):
            found[pid] = kind
            if kind == "fork server":
                found.update(dict.fromkeys(children.get(pid, []), "experiment process"))
    return found


P = TypeVar("P", bound="Periodic")


class Periodic:
    """Calls :meth:`tick` every ``every`` s on a thread of its own while in a ``with`` block."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self: P) -> P:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.every)

    def tick(self) -> None:
        raise NotImplementedError


class Sampler(Periodic):
    """Samples a process's RSS and its children's (by kind) while running; keeps the peaks."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(every)
        self.pid = pid
        self.peak = 0.0
        self.load = 0.0  # the 1-minute load average, at its highest
        self.child_peak: dict[str, float] = {}

    def tick(self) -> None:
        self.peak = max(self.peak, rss_mb(self.pid))
        with contextlib.suppress(OSError, ValueError):
            self.load = max(self.load, float(Path("/proc/loadavg").read_text().split()[0]))
        for child, kind in experiment_processes(self.pid, children_of(process_table())).items():
            self.child_peak[kind] = max(self.child_peak.get(kind, 0.0), rss_mb(child))


class RoleCpu(Periodic):
    """Samples, every ``every`` s, the CPU seconds so far of each role of a running experiment:
    the director, its aggregator process, the envoys and their collaborator processes (one
    scan of /proc a sample). :meth:`per_round` then divides what they used between two
    samples inside the run's steady part by the rounds that ended meanwhile."""

    def __init__(self, director: int, envoys: Sequence[int], every: float = 0.5) -> None:
        super().__init__(every)
        self.director, self.envoys = director, set(envoys)
        # when, and pid -> (role, CPU seconds so far); roles: director, aggregator, envoys,
        # collaborators (with the nodes' fork servers and resource trackers, idle)
        self.samples: list[tuple[float, dict[int, tuple[int, float]]]] = []

    def tick(self) -> None:
        self.samples.append((time.time(), self._sample()))

    def _sample(self) -> dict[int, tuple[int, float]]:
        table = process_table()
        by_parent = children_of(table)
        found: dict[int, tuple[int, float]] = {}
        for node, role in [(self.director, 0), *((envoy, 2) for envoy in self.envoys)]:
            if node in table:
                found[node] = (role, table[node][2])
            for child in by_parent.get(node, []):  # experiment processes and helpers
                for pid in [child, *by_parent.get(child, [])]:  # a fork server's children
                    found[pid] = (role + 1, table[pid][2])
        return found

    def per_round(self, stamps: Sequence[float], skip: float = 0.25) -> tuple[np.ndarray, int]:
        """CPU seconds a round of each role, from the first sample after ``skip`` of the
        rounds ended to the last one before the run's last join; and how many rounds that
        window held (0: too short a run to tell). Only processes alive at both ends count:
        one that ended meanwhile (a previous run's, late to go) takes its CPU time along."""
        if len(stamps) < 4:
            return np.zeros(4), 0
        begin, end = stamps[max(1, int(len(stamps) * skip))], stamps[-1]
        inside = [(t, cpu) for t, cpu in self.samples if begin <= t <= end]
        if len(inside) < 2:
            return np.zeros(4), 0
        (t0, first), (t1, last) = inside[0], inside[-1]
        rounds = sum(1 for stamp in stamps if t0 < stamp <= t1)
        if not rounds:
            return np.zeros(4), 0
        used = np.zeros(4)
        for pid, (role, cpu) in last.items():
            if pid in first:
                used[role] += cpu - first[pid][1]
        return used / rounds, rounds


# -- the director, flows, envoys' status --------------------------------------------------------

def start_director(procs: Processes, folder: Path, certs: Certs, settings: dict[str, Any],
                   timeout: float) -> tuple[NodeProcess, int]:
    lines = ["settings:", "  listen_host: 127.0.0.1", "  listen_port: 0",
             *(f"  {key}: {json.dumps(value)}" for key, value in settings.items())]
    (folder / "director.yaml").write_text("\n".join(lines) + "\n")
    director = procs.start([*FX, "director", "start", "-c", str(folder / "director.yaml"),
                            *tls_args(certs, "director", "director")], folder)
    port = int(director.wait_for(r"director listening on [^:]+:(\d+)", timeout).group(1))
    return director, port


def director_info(certs: Certs, port: int, user: str = "alice") -> dict[str, object]:
    cert, key = certs[("user", user)]
    return {"director_node_fqdn": "127.0.0.1", "director_port": port,
            "cert_chain": str(certs[("ca", "")][0]), "api_cert": str(cert),
            "api_private_key": str(key)}


def online(info: dict[str, object], among: Sequence[str] | None = None) -> tuple[int, int]:
    """(online, known) envoys (of ``among``), as the director tells a user."""
    envoys = FederatedRuntime(collaborators=["-"], director=info).get_envoys()
    if among is not None:
        wanted = set(among)
        envoys = [e for e in envoys if e.name in wanted]
    return sum(e.online for e in envoys), len(envoys)


def load_flow(root: Path) -> type:
    (root / f"{FLOW_MODULE}.py").write_text(FLOW_SOURCE)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(FLOW_MODULE).ScaleFlow  # type: ignore[no-any-return]


@dataclass
class FlowRun:
    seconds: float = 0.0
    began: float = 0.0  # time.time() at run(), the clock of the stamps (one machine)
    stamps: list[float] = field(default_factory=list)
    error: str = ""
    contributors: int = 0


def run_flow(flow_cls: type, info: dict[str, object], names: list[str], rounds: int,
             features: int, timeout: float) -> FlowRun:
    """``flow.run()`` in a thread (its console output kept aside), at most ``timeout`` s."""
    outcome = FlowRun()
    flow = flow_cls(model=np.zeros(features), rounds=rounds)
    flow.runtime = FederatedRuntime(collaborators=names, director=info)

    def run() -> None:
        started, outcome.began = time.perf_counter(), time.time()
        try:
            flow.run()
            outcome.stamps = list(flow.stamps)
            outcome.contributors = int(flow.contributors)
        except BaseException as exc:
            outcome.error = f"{type(exc).__name__}: {str(exc)[:500]}"
        outcome.seconds = time.perf_counter() - started

    with contextlib.redirect_stdout(io.StringIO()):  # review tables, task output
        thread = threading.Thread(target=run, daemon=True, name="flow-run")
        thread.start()
        thread.join(timeout)
    if thread.is_alive():
        outcome.error = f"run() did not return within {timeout:g} s"
        outcome.seconds = timeout
    return outcome


def certificates(folder: Path, envoys: Sequence[str], users: Sequence[str]
                 ) -> tuple[Certs, float]:
    started = time.perf_counter()
    certs = make_certificates(folder, envoys, users)
    return certs, time.perf_counter() - started


def log_lines(director: NodeProcess, pattern: str) -> list[str]:
    drain(director)
    return [line for line in director.seen if pattern in line]


def problems(director: NodeProcess, since: int = 0) -> list[str]:
    """WARNING/ERROR lines of the director's log (from line ``since``)."""
    drain(director)
    return [line for line in director.seen[since:]
            if " WARNING " in line or " ERROR " in line or "Traceback" in line]


def keep_log(args: argparse.Namespace, name: str, node: NodeProcess) -> None:
    if args.log_dir:
        drain(node)
        folder = Path(args.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("\n".join(node.seen) + "\n")


def excerpt(lines: list[str], count: int = 3) -> str:
    if not lines:
        return ""
    shown = [line[:240] for line in lines[:count]]
    more = f" (+{len(lines) - count} more)" if len(lines) > count else ""
    return " | ".join(shown) + more


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- simulated envoys ---------------------------------------------------------------------------

class SimFleet:
    """``sim_envoys.py`` processes; :meth:`poll` reads their stats lines."""

    def __init__(self, procs: Processes, folder: Path, pki: Path, names: Sequence[str],
                 processes: int, port: int, extra: Sequence[str] = ()) -> None:
        self.procs = procs
        self.extra = list(extra)
        self.folder = folder
        self.pki = pki
        self.names = list(names)
        self.count = max(1, min(processes, len(self.names)))
        self.port = port
        self.go_file = folder / f"go-{id(self)}"
        self.nodes: list[NodeProcess] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self.latencies: list[tuple[float, list[float]]] = []  # (received, ms samples)
        self.errors: Counter[str] = Counter()
        self.go_at = 0.0

    def start(self, timeout: float) -> float:
        """Starts the processes and waits until each loaded its certificates; seconds taken."""
        started = time.perf_counter()
        for i in range(self.count):
            names = self.names[i::self.count]
            names_file = self.folder / f"sim-names-{id(self)}-{i}.txt"
            names_file.write_text("\n".join(names) + "\n")
            self.nodes.append(self.procs.start(
                [sys.executable, str(SIM), "--address", f"127.0.0.1:{self.port}",
                 "--pki", str(self.pki), "--names", str(names_file),
                 "--go", str(self.go_file), *self.extra], self.folder))
        for node in self.nodes:
            node.wait_for(r"^ready \d+", timeout)
        return time.perf_counter() - started

    def go(self) -> None:
        self.go_at = time.time()
        self.go_file.write_text("go")

    def poll(self) -> None:
        for index, node in enumerate(self.nodes):
            for line in drain(node):
                if not line.startswith("stats "):
                    continue
                stats = json.loads(line[6:])
                self.latest[index] = stats
                self.latencies.append((time.monotonic(), stats["lat"]))
                self.errors.update(stats["errors"])
            if node.process.poll() is not None:
                raise BenchError(f"a simulator process ended (exit code "
                                 f"{node.process.returncode}):\n{node.tail()}")

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.latest.values())

    def counter(self, key: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for stats in self.latest.values():
            total.update(stats.get(key, {}))
        return total

    def last_first(self) -> float:
        return max((s["last_first"] for s in self.latest.values()), default=0.0)

    def window(self, start: float, end: float) -> list[float]:
        """Heartbeat latencies (ms) reported within [start, end] (monotonic)."""
        return [x for at, samples in self.latencies if start < at <= end for x in samples]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise BenchError(f"{what}: not within {timeout:g} s")
            time.sleep(0.2)
            self.poll()
        return time.monotonic() - started

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))
            self.poll()

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes]


# -- part 1: real envoys ------------------------------------------------------------------------

def part_real(args: argparse.Namespace, root: Path, procs: Processes, flow_cls: type,
              period: float, note: str = "") -> bool:
    """Part 1 with the director's health check every ``period`` s; False if a flow failed."""
    n = args.real_envoys
    folder = root / f"real-{period:g}"
    folder.mkdir()
    (folder / "private_data.py").write_text(PRIVATE_SOURCE)
    names = [f"site_{i:03d}" for i in range(n)]
    probes = [f"probe_{i}" for i in range(args.probes)]
    certs, cert_seconds = certificates(folder / "pki", names + probes, ("alice",))
    director, port = start_director(procs, folder, certs, {
        "envoy_health_check_period": period, "review_experiment": False}, args.start_timeout)
    fed = LocalFederation(folder, port, certs, director)
    info = director_info(certs, port)
    table = Table(title=f"part 1: {n} real `fx envoy` processes + `fx director start` (health "
                        f"check every {period:g} s, review off), mutual TLS, 127.0.0.1{note}",
                  title_justify="left")
    for column in ("measure", "value", "target / note"):
        table.add_column(column)
    table.add_row("certificates: CA, director, user and the envoys'", f"{cert_seconds:.2f} s", "")
    started = time.perf_counter()
    for i, name in enumerate(names):
        config = (f"settings: {{review_experiment: false}}\n'{name}':\n  callable_func:\n"
                  f"    template: private_data.site_data\n    settings: {{seed: {i}, rows: "
                  f"{args.rows}, features: {args.features}}}\n")
        procs.add(fed.start_envoy(name, config))
    launched = time.perf_counter() - started
    registered = wait_registered(director, fed, names, started, args.start_timeout)
    all_in = max(registered.values())
    up, known = online(info, names)
    envoy_pids = [node.process.pid for node in fed.envoys.values()]
    envoy_cpu = [cpu_seconds(pid) for pid in envoy_pids]
    envoy_rss = sum(rss_mb(pid) for pid in envoy_pids)
    table.add_row(f"{n} `fx envoy start` launched", f"{launched:.2f} s", "")
    table.add_row(f"all {n} registered (director's log), from the first launch",
                  f"{all_in:.1f} s", f"first {min(registered.values()):.1f} s, median "
                  f"{statistics.median(registered.values()):.1f} s; the Envoys call: "
                  f"{up}/{known} online")
    table.add_row("an envoy's CPU to start and register (mean)",
                  f"{statistics.mean(envoy_cpu):.2f} s",
                  f"x {n} = {sum(envoy_cpu):.0f} CPU-s on {os.cpu_count()} cores")
    idle_rss = rss_mb(director.process.pid)
    table.add_row(f"director RSS, idle with {n} envoys", f"{idle_rss:.0f} MB",
                  f"the {n} envoy processes: {envoy_rss:.0f} MB in all")
    # Probes: simulated envoys outside the experiments that heartbeat through it all and do
    # not give up after a slow one, to show how long the director takes to answer meanwhile.
    fleet = SimFleet(procs, folder, folder / "pki", probes, 1, port, ["--keep-beating"])
    if probes:
        fleet.start(args.start_timeout)
        fleet.go()
        fleet.wait(lambda: fleet.total("online") >= len(probes), 60, "the probes registered")
        fleet.sleep(2)
    before = len(director.seen)
    ok = True
    with Sampler(director.process.pid) as sampler:
        flows = []
        for rounds in (1, args.rounds):
            fail0 = fleet.total("hb_fail")
            began = time.monotonic()
            with RoleCpu(director.process.pid, envoy_pids) as steady:
                flow = run_flow(flow_cls, info, names, rounds, args.features,
                                args.flow_timeout)
            wait_reaped(director.process.pid, envoy_pids, 30)
            fleet.poll()
            flows.append((flow, fleet.window(began, time.monotonic() + 1),
                          fleet.total("hb_fail") - fail0))
            ok = ok and not flow.error
    (one, one_beats, one_failed), (several, several_beats, several_failed) = flows
    table.add_row(f"1-round flow over all {n}, run() to return",
                  f"{one.seconds:.1f} s" if not one.error else f"FAILED ({one.error})",
                  f"joined {one.contributors} results; the federation's first run: each "
                  "envoy starts its fork server (a Python importing fedloom and numpy), then "
                  "forks its collaborator process" if not one.error else "")
    if several.error:
        table.add_row(f"{args.rounds}-round flow", f"FAILED ({several.error})", "")
    else:
        gaps = np.diff(several.stamps)  # [first round (from start), then join to join]
        later = gaps[1:] if len(gaps) > 1 else gaps
        table.add_row(f"{args.rounds}-round flow over all {n}, run() to return",
                      f"{several.seconds:.1f} s", "the collaborator processes are forks of "
                      "the fork servers the first run started; run() to the first join "
                      f"{several.stamps[1] - several.began:.1f} s"
                      if len(several.stamps) > 1 else "")
        # Sampled while the rounds go on: start-up (seconds of CPU per process) is left out.
        per_round, measured = steady.per_round(several.stamps)
        table.add_row("CPU a round, per collaborator: director / aggregator / envoy / "
                      "collaborator process",
                      " / ".join(ms(x / n) for x in per_round) if measured else
                      "(the run was too short to sample: more --rounds)",
                      f"all together {ms(float(per_round.sum()))} a round on "
                      f"{os.cpu_count()} cores (sampled over {measured} rounds of the "
                      f"{args.rounds}-round run)" if measured else "")
        table.add_row("round latency: between successive joins (director's clock)",
                      f"median {ms(float(np.median(later)))}",
                      f"min {ms(float(later.min()))}, max {ms(float(later.max()))}; first round "
                      f"(start to join) {ms(float(gaps[0]))}; target < 200 ms")
    if probes:
        for label, beats, failed in (("1-round", one_beats, one_failed),
                                     (f"{args.rounds}-round", several_beats, several_failed)):
            table.add_row(f"heartbeat round trip during the {label} run ({len(probes)} probes)",
                          f"p50 {pct(beats, 50):.0f} ms, p99 {pct(beats, 99):.0f} ms",
                          f"max {max(beats, default=float('nan')):.0f} ms; {failed} of "
                          f"{len(beats)} failed (deadline {period:g} s: fx envoy stops "
                          "heartbeating after one)")
    table.add_row("load average (1 min), peak during the flows", f"{sampler.load:.0f}",
                  f"{os.cpu_count()} cores")
    table.add_row("director RSS, peak (VmHWM) / sampled during the flows",
                  f"{rss_mb(director.process.pid, 'VmHWM'):.0f} MB",
                  f"sampled peak {sampler.peak:.0f} MB; idle {idle_rss:.0f} MB")
    for kind, peak in sorted(sampler.child_peak.items()):
        table.add_row(f"director's child: {kind}, RSS peak", f"{peak:.0f} MB", "")
    missed = log_lines(director, MISSED)
    trouble = problems(director, before)
    table.add_row(f"'{MISSED}' in the director's log", str(len(missed)), excerpt(missed, 2))
    table.add_row("director WARNING/ERROR lines during the flows", str(len(trouble)),
                  excerpt(trouble, 2))
    keep_log(args, f"part1-{period:g}s-director.log", director)
    if args.log_dir:
        lines = []
        for name, node in fed.envoys.items():
            drain(node)
            lines += [f"[{name}] {line}" for line in node.seen]
        (Path(args.log_dir) / f"part1-{period:g}s-envoys.log").write_text("\n".join(lines))
    procs.stop([*fleet.nodes, *fed.envoys.values(), director])
    console.print(table)
    console.print(
        f"[bold]What limits these figures[/bold]: {os.cpu_count()} CPU cores shared by the "
        f"director, {n} envoy processes and, per experiment, {n} collaborator processes that "
        "each envoy forks from its fork server (the server starts with the first run and "
        f"costs about what an envoy's own start does, ~{statistics.mean(envoy_cpu):.1f} CPU-s; "
        "later runs only fork), so registration and a first run's start-up are bound by "
        "process start-up on 2 cores; a round's latency by the director relaying "
        f"{n} small states each way through Python gRPC (grpc.aio {grpc.__version__}) and the "
        "aggregator decoding them one by one.\n")
    return ok


def wait_reaped(director: int, envoys: Sequence[int], timeout: float) -> None:
    """Until the experiment's processes have ended (not the nodes' fork servers and resource
    trackers, which stay), so that their CPU time is counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = children_of(process_table())
        if not any(kind == "experiment process" for node in (director, *envoys)
                   for kind in experiment_processes(node, children).values()):
            return
        time.sleep(0.1)


def wait_registered(director: NodeProcess, fed: LocalFederation, names: list[str],
                    started: float, timeout: float) -> dict[str, float]:
    """Seconds from ``started`` until the director logged each envoy's registration."""
    pending, seen = set(names), {}
    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{len(pending)} envoys did not register within {timeout:g} s "
                             f"(e.g. {sorted(pending)[:5]})")
        try:
            line = director.lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            line = ""
        if line is None:
            raise BenchError(f"the director ended:\n{director.tail()}")
        if line:
            director.seen.append(line)
            found = REGISTERED.search(line)
            if found and found.group(1) in pending:
                pending.discard(found.group(1))
                seen[found.group(1)] = time.perf_counter() - started
        if time.monotonic() - checked > 2:
            checked = time.monotonic()
            for name, node in fed.envoys.items():
                if name in pending and node.process.poll() is not None:
                    drain(node)
                    raise BenchError(f"envoy {name} ended before registering:\n{node.tail()}")
    return seen


# -- part 2: simulated envoys -------------------------------------------------------------------

def settle(fleet: SimFleet, director: NodeProcess, info: dict[str, object], names: list[str],
           quiet: float, timeout: float) -> float:
    """Seconds until all ``names`` are online and no envoy was lost for ``quiet`` seconds."""
    started = time.monotonic()
    calm_since, lost = time.monotonic(), len(log_lines(director, MISSED))
    while time.monotonic() - calm_since < quiet:
        if time.monotonic() - started > timeout:
            raise BenchError(f"the envoys did not settle within {timeout:g} s")
        fleet.sleep(0.5)
        now_lost = len(log_lines(director, MISSED))
        if now_lost != lost or online(info, names)[0] < len(names):
            calm_since, lost = time.monotonic(), now_lost
    return time.monotonic() - started


def part_sim(args: argparse.Namespace, root: Path, procs: Processes, flow_cls: type,
             period: float, soak: float, note: str = "") -> bool:
    """Part 2 with the director's health check every ``period`` s and a soak of ``soak`` s;
    False if envoys were lost or the flow failed."""
    n = args.sim_envoys
    folder = root / f"sim-{period:g}"
    folder.mkdir()
    names = [f"sim_{i:04d}" for i in range(n)]
    probes = [f"probe_{i}" for i in range(max(args.probes, 1))]  # they time the answers
    certs, cert_seconds = certificates(folder / "pki", names + probes, ("alice",))
    director, port = start_director(procs, folder, certs, {
        "envoy_health_check_period": period, "review_experiment": False}, args.start_timeout)
    info = director_info(certs, port)
    pid = director.process.pid
    fleet = SimFleet(procs, folder, folder / "pki", names, args.sim_procs, port)
    table = Table(title=f"part 2: {n} simulated envoys ({fleet.count} processes, one asyncio "
                        "loop each, one TLS channel and certificate per envoy) + `fx director "
                        f"start` (health check every {period:g} s, review off), 127.0.0.1{note}",
                  title_justify="left")
    for column in ("measure", "value", "target / note"):
        table.add_column(column)
    table.add_row(f"certificates for {n} envoys (+ CA, director, user)",
                  f"{cert_seconds:.1f} s", f"{cert_seconds / n * 1e3:.1f} ms each")
    spawn = fleet.start(args.start_timeout)
    table.add_row(f"{fleet.count} simulator processes started, certificates loaded",
                  f"{spawn:.1f} s", "")
    prober = SimFleet(procs, folder, folder / "pki", probes, 1, port, ["--keep-beating"])
    prober.start(args.start_timeout)
    fleet.go()
    prober.go()
    fleet.wait(lambda: fleet.total("ever") >= n, args.start_timeout,
               f"all {n} simulated envoys registered")
    register = fleet.last_first() - fleet.go_at
    fleet.wait(lambda: online(info, names)[0] >= n, 60,
               "the director counting all online")
    table.add_row(f"all {n} registered (go to the last first registration)",
                  f"{register:.1f} s", f"reconnects meanwhile: "
                  f"{fleet.total('registrations') - n}")
    after_register_rss = rss_mb(pid)
    # -- the soak, once the registration storm has settled: all online and no envoy lost for
    # four health-check periods (a thousand TLS handshakes at once starve the simulators'
    # own loops, and some envoys are lost and come back meanwhile: counted above)
    settled = settle(fleet, director, info, names, 4 * period + 1, 120)
    table.add_row("settled after registering (all online, none lost for 4 periods)",
                  f"{settled:.1f} s", f"envoys lost meanwhile: "
                                      f"{len(log_lines(director, MISSED))}")
    up_before, known = online(info, names)
    missed_before = len(log_lines(director, MISSED))
    lines_before = len(director.seen)
    cpu0, sims0 = cpu_seconds(pid), [cpu_seconds(p) for p in fleet.pids()]
    hb0, fail0, ends0 = fleet.total("hb_ok"), fleet.total("hb_fail"), fleet.total("stream_ends")
    prober.poll()
    soak_start = time.monotonic()
    regs0 = fleet.total("registrations")
    fleet.sleep(soak)
    prober.poll()
    soak_end = time.monotonic()
    cpu = cpu_seconds(pid) - cpu0
    sims_cpu = sum(cpu_seconds(p) for p in fleet.pids()) - sum(sims0)
    up_after, known_after = online(info, names)
    beats = fleet.total("hb_ok") - hb0
    failed = fleet.total("hb_fail") - fail0
    ends = fleet.total("stream_ends") - ends0
    regs = fleet.total("registrations") - regs0
    missed = log_lines(director, MISSED)[missed_before:]
    lat = prober.window(soak_start, soak_end)
    soak_rss = rss_mb(pid)
    table.add_row(f"soak {soak:g} s: online before -> after (the Envoys call)",
                  f"{up_before}/{known} -> {up_after}/{known_after}",
                  "all stay online" if up_before == up_after == n and not missed else
                  "ENVOYS LOST")
    table.add_row(f"soak: '{MISSED}' lines in the director's log", str(len(missed)),
                  excerpt(missed))
    table.add_row("soak: work streams ended / re-registrations / heartbeats failed "
                  "(simulator side)", f"{ends} / {regs} / {failed}",
                  excerpt([f"{count} x {error}" for error, count in fleet.errors.most_common(2)],
                          2))
    table.add_row(f"soak: heartbeat round trip ({len(probes)} probes, unary calls)",
                  f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms",
                  f"max {max(lat, default=float('nan')):.1f} ms; {beats:,} heartbeats sent on "
                  f"Beat streams ({beats / soak:,.0f}/s; {n / period:,.0f}/s are due)")
    table.add_row("soak: director CPU", f"{cpu:.1f} s ({cpu / soak:.0%} of a core)",
                  f"{cpu / max(beats, 1) * 1e6:.0f} µs per heartbeat; the simulators used "
                  f"{sims_cpu:.1f} CPU-s")
    table.add_row("director RSS: registered / after the soak",
                  f"{after_register_rss:.0f} MB / {soak_rss:.0f} MB", "target < 1 GB")
    soak_trouble = problems(director, lines_before)
    # -- one round over all of them
    lines_before = len(director.seen)
    with Sampler(pid) as sampler:
        flow = run_flow(flow_cls, info, names, 1, args.features, args.flow_timeout)
        fleet.poll()
    table.add_row(f"1-round flow over all {n}, run() to return",
                  f"{flow.seconds:.1f} s" if not flow.error else f"FAILED ({flow.error})",
                  f"joined {flow.contributors} results" if not flow.error else "")
    table.add_row("director RSS peak (VmHWM) / sampled during the flow",
                  f"{rss_mb(pid, 'VmHWM'):.0f} MB", f"sampled {sampler.peak:.0f} MB; "
                  "target < 1 GB")
    for kind, peak in sorted(sampler.child_peak.items()):
        table.add_row(f"director's child: {kind}, RSS peak", f"{peak:.0f} MB", "")
    fleet.sleep(2)
    up_end, known_end = online(info, names)
    flow_trouble = problems(director, lines_before)
    table.add_row("online after the flow", f"{up_end}/{known_end}",
                  f"answered: {dict(fleet.counter('answered'))}")
    table.add_row("director WARNING/ERROR lines: soak / flow",
                  f"{len(soak_trouble)} / {len(flow_trouble)}",
                  excerpt(soak_trouble + flow_trouble))
    sim_rss = sum(rss_mb(p) for p in fleet.pids())
    keep_log(args, f"part2-{period:g}s-director.log", director)
    procs.stop([*fleet.nodes, *prober.nodes, director])
    console.print(table)
    console.print(
        f"[bold]What limits these figures[/bold]: {os.cpu_count()} CPU cores shared by the "
        f"director and the {fleet.count} simulator processes ({sim_rss:.0f} MB in all), which "
        f"themselves used {sims_cpu / soak:.0%} of a core over the soak; "
        f"{n} envoys heartbeat every {period:g} s ({n / period:,.0f} messages/s on Beat "
        "streams through Python "
        f"grpc.aio {grpc.__version__} on one event loop in the director, each with its "
        "certificate checked); registration is bound by the TLS handshakes of "
        f"{n} connections at once and by the simulators' own CPU.\n")
    return up_before == up_after == n and not missed and not flow.error


# -- part 3: idle streams -----------------------------------------------------------------------

class IdleCalls:
    """``count`` Submit calls from one certificate that never send a message, on a loop of
    their own; counts how each one ended."""

    def __init__(self, info: dict[str, object], port: int, count: int) -> None:
        self.info, self.port, self.count = info, port, count
        self.ended: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    def __enter__(self) -> IdleCalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def open(self) -> int:
        return self.count - sum(self.ended.values())

    async def _main(self) -> None:
        from fedloom.federation.pki import TlsFiles, channel_credentials
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        self._stop = asyncio.Event()
        files = TlsFiles(*(Path(str(self.info[k])) for k in ("cert_chain", "api_cert",
                                                              "api_private_key")))
        async with grpc.aio.secure_channel(f"127.0.0.1:{self.port}",
                                           channel_credentials(files)) as channel:
            stub = rpc.DirectorStub(channel)
            calls = [stub.Submit(self._nothing()) for _ in range(self.count)]
            tasks = [asyncio.ensure_future(self._outcome(call)) for call in calls]
            await self._stop.wait()
            for call in calls:
                call.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _nothing(self):  # type: ignore[no-untyped-def]
        assert self._stop is not None
        await self._stop.wait()
        return
        yield

    async def _outcome(self, call: Any) -> None:
        try:
            await call
            self.ended["answered"] += 1
        except asyncio.CancelledError:
            self.ended["cancelled"] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.ended[exc.code().name] += 1


def part_idle(args: argparse.Namespace, root: Path, procs: Processes) -> None:
    counts = [int(c) for c in args.idle.split(",") if c.strip()]
    folder = root / "idle"
    folder.mkdir()
    names = [f"beat_{i:03d}" for i in range(args.idle_envoys)]
    certs, _ = certificates(folder / "pki", names, ("alice", "mallory"))
    table = Table(title=f"part 3: {args.idle_envoys} simulated envoys time unary heartbeats "
                        "(every 0.5 s) "
                        "while one user certificate holds idle Submit calls (no first "
                        "message), mutual TLS, 127.0.0.1", title_justify="left")
    for column in ("director limits", "idle calls", "refused (RESOURCE_EXHAUSTED)",
                   "held open", "other ends", "heartbeat p50", "p99", "max", "samples",
                   "missed health checks", "director RSS"):
        table.add_column(column)
    configs = [("defaults (64 streams, 8 uploads, first message 30 s)", {}),
               ("raised (1000 streams, 1000 uploads, first message 600 s)",
                {"max_streams_per_peer": 1000, "max_uploads_per_peer": 1000,
                 "first_message_timeout": 600})]
    for label, limits in configs:
        sub = folder / ("raised" if limits else "defaults")
        sub.mkdir()
        director, port = start_director(procs, sub, certs, {
            "envoy_health_check_period": 1, "review_experiment": False, **limits},
            args.start_timeout)
        # Probes: each heartbeat a unary call whose answer is timed (fx envoy's Beat stream
        # has no answer to time); what they see is what any new call sees.
        fleet = SimFleet(procs, sub, folder / "pki", names, 1, port, ["--keep-beating"])
        fleet.start(args.start_timeout)
        fleet.go()
        fleet.wait(lambda f=fleet: f.total("online") >= len(names), args.start_timeout,
                   "the heartbeating envoys registered")
        fleet.sleep(2)
        info = director_info(certs, port, "mallory")
        for count in [0, *counts]:
            missed0 = len(log_lines(director, MISSED))
            with IdleCalls(info, port, count) if count else contextlib.nullcontext() as idle:
                fleet.sleep(args.settle)
                start = time.monotonic()
                fleet.sleep(args.phase)
                lat = fleet.window(start, time.monotonic())
                ended = Counter(idle.ended) if idle is not None else Counter()
                held = idle.open if idle is not None else 0
                rss = rss_mb(director.process.pid)
            refused = ended.pop("RESOURCE_EXHAUSTED", 0)
            missed = len(log_lines(director, MISSED)) - missed0
            table.add_row(label if count == 0 else "", str(count), str(refused), str(held),
                          ", ".join(f"{k} {v}" for k, v in ended.items()) or "-",
                          f"{pct(lat, 50):.2f} ms", f"{pct(lat, 99):.2f} ms",
                          f"{max(lat, default=float('nan')):.1f} ms", str(len(lat)),
                          str(missed), f"{rss:.0f} MB")
            fleet.sleep(1)  # the idle calls' ends reach the director
        keep_log(args, f"part3-{sub.name}-director.log", director)
        procs.stop([*fleet.nodes, director])
    console.print(table)
    console.print(
        f"[bold]What limits these figures[/bold]: the heartbeats' round trip is one unary "
        f"call through Python grpc.aio {grpc.__version__} on each side, on {os.cpu_count()} "
        "cores shared with the idle client's event loop; held idle calls cost the director "
        f"a coroutine each, not a thread. Each phase: {args.settle:g} s to settle, then "
        f"{args.phase:g} s measured (the default first_message_timeout, 30 s, would end the "
        "held calls after that).\n")


# -- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3", help="which parts to run (1,2,3)")
    parser.add_argument("--real-envoys", type=int, default=100, help="part 1: fx envoys (100)")
    parser.add_argument("--real-health-period", type=float, default=5.0,
                        help="part 1: the director's envoy_health_check_period (5)")
    parser.add_argument("--probes", type=int, default=3,
                        help="part 1: simulated envoys outside the flows that time heartbeats "
                             "meanwhile (3)")
    parser.add_argument("--retry-period", type=float, default=60.0,
                        help="part 1: if a flow fails, run part 1 again with this health-check "
                             "period (60; 0: don't)")
    parser.add_argument("--rounds", type=int, default=5, help="part 1: rounds of the timed "
                        "run (5)")
    parser.add_argument("--rows", type=int, default=200, help="rows of each envoy's data (200)")
    parser.add_argument("--features", type=int, default=16, help="the model's size (16)")
    parser.add_argument("--sim-envoys", type=int, default=1000,
                        help="part 2: simulated envoys (1000)")
    parser.add_argument("--sim-procs", type=int, default=4,
                        help="part 2: processes they run in (4)")
    parser.add_argument("--soak", type=float, default=300.0, help="part 2: seconds (300)")
    parser.add_argument("--sim-retry-period", type=float, default=5.0,
                        help="part 2: if envoys were lost or the flow failed, run part 2 again "
                             "with this health-check period (5; 0: don't)")
    parser.add_argument("--retry-soak", type=float, default=60.0,
                        help="part 2: the soak of that second run, seconds (60)")
    parser.add_argument("--idle", default="64,500", help="part 3: idle calls (64,500)")
    parser.add_argument("--idle-envoys", type=int, default=20,
                        help="part 3: heartbeating envoys (20)")
    parser.add_argument("--phase", type=float, default=20.0,
                        help="part 3: seconds measured per phase (20)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="part 3: seconds after opening the idle calls (3)")
    parser.add_argument("--start-timeout", type=float, default=600.0,
                        help="seconds for nodes to start and envoys to register (600)")
    parser.add_argument("--flow-timeout", type=float, default=900.0,
                        help="seconds for one flow.run() (900)")
    parser.add_argument("--log-dir", default="", help="keep the directors' logs here")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",")}
    if args.phase + args.settle >= 30:
        parser.error("--phase + --settle must stay under the default first_message_timeout "
                     "(30 s)")

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    console.print(f"fedloom federation at scale: {os.cpu_count()} CPUs, Python "
                  f"{platform.python_version()}, grpcio {grpc.__version__}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    console.print(speed_line("at the start") + "\n")
    root = Path(tempfile.mkdtemp(prefix="fedloom-scale-"))
    procs = Processes()
    failed = False
    try:
        flow_cls = load_flow(root)
        def real() -> None:
            if not part_real(args, root, procs, flow_cls, args.real_health_period) and \
                    args.retry_period:
                procs.stop_all()
                part_real(args, root, procs, flow_cls, args.retry_period,
                          f" — again, with a longer health-check period, for the figures "
                          f"the run with {args.real_health_period:g} s could not give")

        def sim() -> None:
            if not part_sim(args, root, procs, flow_cls, 1.0, args.soak) and \
                    args.sim_retry_period:
                procs.stop_all()
                part_sim(args, root, procs, flow_cls, args.sim_retry_period, args.retry_soak,
                         " — again, with a longer health-check period, for the figures the "
                         "run with 1 s could not give")

        for part, run in (("1", real),
                          ("2", sim),
                          ("3", lambda: part_idle(args, root, procs))):
            if part not in parts:
                continue
            try:
                run()
            except (BenchError, grpc.RpcError, OSError) as exc:
                failed = True
                console.print(f"[bold red]part {part} stopped[/bold red]: {exc}")
                for node in procs.nodes[:1]:  # the part's director comes first
                    drain(node)
                    console.print("director's last lines:\n" + node.tail(30))
                    keep_log(args, f"part{part}-director-failed.log", node)
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        console.print("interrupted: stopping every process")
        failed = True
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    console.print(speed_line("at the end"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
