"""Real director and envoy processes for the federation tests (127.0.0.1, free ports)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FX = [sys.executable, "-m", "fedloom.cli"]
ROOT = Path(__file__).resolve().parents[2]

PRIVATE_ATTRIBUTES = '''
import numpy as np

aggregator_attrs = {"secret": "aggregator-only"}

def envoy_data(value):
    return {"data": np.full(3, float(value))}
'''


class Node:
    """A running fx process whose output lines can be awaited (no sleeps: lines are events)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first (new) output line matching ``pattern``; fails after ``timeout`` seconds."""
        regex = re.compile(pattern)
        for line in self.seen:
            found = regex.search(line)
            if found:
                return found
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:"
                                     f"\n" + "\n".join(self.seen[-40:])) from None
            if line is None:
                raise AssertionError(f"process ended before {pattern!r}; output:\n" +
                                     "\n".join(self.seen[-40:]))
            self.seen.append(line)
            found = regex.search(line)
            if found:
                return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


Certs = dict[tuple[str, str], tuple[Path, Path]]  # (kind, name) -> (certificate, key)


def tls_args(certs: Certs | None, kind: str, name: str) -> list[str]:
    """-rc/-pk/-oc for a node, or --disable-tls."""
    if certs is None:
        return ["--disable-tls"]
    cert, key = certs[(kind, name)]
    return ["-rc", str(certs[("ca", "")][0]), "-pk", str(key), "-oc", str(cert)]


@dataclass
class Federation:
    folder: Path
    port: int
    certs: Certs | None
    director: Node
    envoys: dict[str, Node] = field(default_factory=dict)

    def tls_args(self, kind: str, name: str) -> list[str]:
        return tls_args(self.certs, kind, name)

    def start_envoy(self, name: str, value: float, cert_name: str | None = None) -> Node:
        config = self.folder / f"envoy_{_safe(name)}.yaml"
        config.write_text(f"'{name}':\n  callable_func:\n    template: private_attributes."
                          f"envoy_data\n    settings: {{value: {value}}}\n")
        node = Node([*FX, "envoy", "start", "-n", name, "-ec", str(config), "-dh", "127.0.0.1",
                     "-dp", str(self.port), *self.tls_args("envoy", cert_name or name)],
                    self.folder)
        self.envoys[name] = node
        return node

    def director_info(self, user: str = "alice") -> dict[str, object]:
        """The dict a FederatedRuntime takes, for ``user``."""
        info: dict[str, object] = {"director_node_fqdn": "127.0.0.1", "director_port": self.port}
        if self.certs is not None:
            cert, key = self.certs[("user", user)]
            info.update(cert_chain=str(self.certs[("ca", "")][0]), api_cert=str(cert),
                        api_private_key=str(key))
        return info

    def stop(self) -> None:
        for node in self.envoys.values():
            node.stop()
        self.director.stop()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@contextmanager
def federation(folder: Path, envoys: dict[str, float], tls: bool = True) -> Iterator[Federation]:
    """A director and envoys (name -> the value of its private data), all registered."""
    (folder / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    (folder / "director.yaml").write_text(
        "settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n  envoy_health_check_period: 1\n"
        "aggregator:\n  private_attributes: private_attributes.aggregator_attrs\n")
    certs = _make_certificates(folder / "pki", list(envoys)) if tls else None
    director = Node([*FX, "director", "start", "-c", str(folder / "director.yaml"),
                     *tls_args(certs, "director", "director")], folder)
    port = int(director.wait_for(r"director listening on [^:]+:(\d+)").group(1))
    fed = Federation(folder, port, certs, director)
    try:
        for name, value in envoys.items():
            fed.start_envoy(name, value)
        for name in envoys:
            director.wait_for(rf"envoy '{re.escape(name)}' registered")
        yield fed
    finally:
        fed.stop()


def _make_certificates(folder: Path, envoys: list[str]) -> Certs:
    from fedloom.federation.pki import create_ca, issue_certificate

    ca = create_ca(folder)
    certs: Certs = {("ca", ""): (ca.cert, ca.key)}
    made = [("director", "director", ["127.0.0.1", "localhost"]), ("user", "alice", []),
            ("user", "mallory", []), *(("envoy", name, []) for name in envoys)]
    for kind, name, hosts in made:
        paths = issue_certificate(folder, kind, name, hosts=hosts)  # type: ignore[arg-type]
        certs[(kind, name)] = (paths.cert, paths.key)
    return certs
