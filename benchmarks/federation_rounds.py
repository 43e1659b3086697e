"""The federation's speed: round latency, a whole run, throughput and bytes on the wire.

A director and two envoys run as real processes on 127.0.0.1 with mutual TLS; the flow
(``relay_flow.RelayFlow``) sends the model to both envoys and back each round, with no compute.

- round latency (tiny model): the median time between consecutive joins, on the director's
  clock (fan-out to both envoys, their steps, results back, the join);
- a whole 2-round run, from ``flow.run()`` to its return (packaging, queueing, processes);
- throughput: per-round time with a 100 MB model, with TLS and without, against a raw loopback
  TCP copy of the bytes a round moves (2 envoys x there and back);
- bytes on the wire per round, counted by a TCP relay in front of the director (TLS and HTTP/2
  framing included), against the state bytes a round carries.

    python benchmarks/federation_rounds.py [--rounds 11] [--big-mb 100]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from machine_speed import speed_line
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_flow import RelayFlow

from fedloom import FederatedRuntime
from fedloom.federation.localhost import LocalFederation, local_federation

ENVOYS = ("site_a", "site_b")
ENVOY_CONFIG = "settings: {{review_experiment: false}}\n"  # no private attributes
DIRECTOR_CONFIG = ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
                   "  review_experiment: false\n")


class CountingRelay:
    """Forwards TCP connections to the director and counts the bytes in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_director = 0
        self.from_director = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, inbound: bool) -> None:
        buffer = bytearray(1 << 20)
        try:
            while n := source.recv_into(buffer):
                sink.sendall(memoryview(buffer)[:n])
                with self._lock:
                    if inbound:
                        self.to_director += n
                    else:
                        self.from_director += n
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def total(self) -> tuple[int, int]:
        with self._lock:
            return self.to_director, self.from_director


@contextmanager
def federation(folder: Path, relay: list[CountingRelay] | None = None, tls: bool = True
               ) -> Iterator[LocalFederation]:
    def front(port: int) -> int:
        assert relay is not None
        relay.append(CountingRelay(port))
        return relay[0].port

    configs = {name: ENVOY_CONFIG.format(name=name) for name in ENVOYS}
    with local_federation(folder, configs, DIRECTOR_CONFIG, tls=tls,
                          front=front if relay is not None else None) as fed:
        yield fed


def run_flow(fed: LocalFederation, model: Any, rounds: int) -> tuple[float, list[float]]:
    """Seconds from run() to its return, and the seconds of each round."""
    flow = RelayFlow(model=model, rounds=rounds)
    flow.runtime = FederatedRuntime(collaborators=list(ENVOYS), director=fed.director_info(),
                                    tls=fed.certs is not None)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the review table, on every run
        flow.run()
    seconds = time.perf_counter() - start
    assert flow.round == rounds
    return seconds, list(np.diff(flow.stamps))


def run_seconds(fed: LocalFederation, model: Any, rounds: int) -> float:
    return run_flow(fed, model, rounds)[0]


def best(action: Callable[[], float], repeat: int) -> float:
    return min(action() for _ in range(repeat))


def loopback_seconds(nbytes: int) -> float:
    """One TCP copy of ``nbytes`` over loopback: send all, receive all."""
    payload = memoryview(bytearray(nbytes))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        into = bytearray(nbytes)
        start = time.perf_counter()
        thread = threading.Thread(target=sender.sendall, args=(payload,))
        thread.start()
        view, got = memoryview(into), 0
        while got < nbytes:
            got += receiver.recv_into(view[got:])
        thread.join()
        seconds = time.perf_counter() - start
        sender.close()
        receiver.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="rounds of the long runs (11)")
    parser.add_argument("--big-mb", type=int, default=100, help="the big model's size (100)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (3)")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)  # logs: no wrapped tables
    console.print(speed_line())
    tiny = np.zeros(1000, np.float32)
    big = np.zeros(args.big_mb * 250_000, np.float32)
    table = Table(title="federation: director + 2 envoys, 127.0.0.1, mutual TLS unless noted")
    for column in ("measure", "value", "target / reference"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as scratch:
        with federation(Path(scratch) / "tls") as fed:
            run_seconds(fed, tiny, 1)  # warm-up: imports in the node processes
            rounds = run_flow(fed, tiny, args.rounds)[1]
            two = best(lambda: run_seconds(fed, tiny, 2), args.repeat)
            table.add_row("round latency, 4 kB model",
                          f"{np.median(rounds) * 1e3:.1f} ms (min {min(rounds) * 1e3:.1f}, "
                          f"max {max(rounds) * 1e3:.1f})", "< 50 ms (reference: ~10 s)")
            table.add_row("2-round run, end to end", f"{two:.2f} s", "< 3 s (reference: ~35 s)")
            big_round = float(np.median(run_flow(fed, big, 4)[1]))
        with federation(Path(scratch) / "plaintext", tls=False) as fed:
            run_seconds(fed, tiny, 1)
            plain_round = float(np.median(run_flow(fed, big, 4)[1]))
        moved = big.nbytes * len(ENVOYS) * 2
        raw = best(lambda: loopback_seconds(moved), 3)
        for label, seconds in (("TLS", big_round), ("no TLS", plain_round)):
            table.add_row(f"round with a {args.big_mb} MB model, {label}",
                          f"{seconds:.2f} s ({moved / seconds / 1e6:.0f} MB/s)",
                          f"raw loopback copy of {moved / 1e6:.0f} MB: {raw:.2f} s "
                          f"({moved / raw / 1e6:.0f} MB/s); ratio {raw / seconds:.0%}")
        relay: list[CountingRelay] = []
        with federation(Path(scratch) / "counted", relay) as fed:
            for model, label in ((tiny, "4 kB"), (np.zeros(250_000, np.float32), "1 MB")):
                before = relay[0].total()
                run_seconds(fed, model, 1)
                middle = relay[0].total()
                run_seconds(fed, model, args.rounds)
                after = relay[0].total()
                rounds = args.rounds - 1
                up = ((after[0] - middle[0]) - (middle[0] - before[0])) / rounds
                down = ((after[1] - middle[1]) - (middle[1] - before[1])) / rounds
                carried = model.nbytes * len(ENVOYS) * 2
                table.add_row(f"bytes on the wire per round, {label} model",
                              f"{(up + down) / 1e3:,.1f} kB (to director {up / 1e3:,.1f}, "
                              f"from {down / 1e3:,.1f})",
                              f"state carried: {carried / 1e3:,.1f} kB")
    console.print(table)


if __name__ == "__main__":
    main()
