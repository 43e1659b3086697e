"""The federation tests' nodes: fedloom.federation.localhost with two users and envoys whose
private ``data`` is a vector of one value."""

from __future__ import annotations

import os
import select
import socket
import subprocess
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedloom.federation.localhost import (
    FX,
    LocalFederation,
    NodeProcess,
    local_federation,
    make_certificates,
)

__all__ = ["FX", "Node", "envoy_config", "experiment_processes", "federation", "fx",
           "lone_envoy", "make_certificates", "unused_port", "wait_gone"]

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
Node = NodeProcess

PRIVATE_ATTRIBUTES = '''
import numpy as np

aggregator_attrs = {"secret": "aggregator-only"}

def envoy_data(value):
    return {"data": np.full(3, float(value))}
'''



def director_config(review: bool | None = False, review_timeout: float | None = None,
                    health_check_period: float = 1,
                    settings: dict[str, object] | None = None) -> str:
    """Review is off unless asked for (None: the key is left out, so the default applies)."""
    flag = "" if review is None else f"  review_experiment: {str(review).lower()}\n"
    if review_timeout is not None:
        flag += f"  review_timeout: {review_timeout}\n"
    flag += "".join(f"  {key}: {value}\n" for key, value in (settings or {}).items())
    return ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
            f"  envoy_health_check_period: {health_check_period:g}\n{flag}"
            "aggregator:\n  private_attributes: private_attributes.aggregator_attrs\n")


def envoy_config(name: str, value: float, review: bool = False) -> str:
    return (f"settings:\n  review_experiment: {str(review).lower()}\n'{name}':\n"
            "  callable_func:\n    template: private_attributes.envoy_data\n"
            f"    settings: {{value: {value}}}\n")


@contextmanager
def federation(folder: Path, envoys: dict[str, float], tls: bool = True,
               director_review: bool | None = False, reviewing_envoys: Collection[str] = (),
               terminal: bool = False, review_timeout: float | None = None,
               health_check_period: float = 1,
               settings: dict[str, object] | None = None) -> Iterator[LocalFederation]:
    """A director and envoys (name -> the value of its private data), all registered; plans
    are reviewed by the director if ``director_review`` and by ``reviewing_envoys``; more of
    the director's ``settings`` if given."""
    pythonpath = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with local_federation(folder, {name: envoy_config(name, value, name in reviewing_envoys)
                                   for name, value in envoys.items()},
                          director_config(director_review, review_timeout,
                                          health_check_period, settings),
                          files={"private_attributes.py": PRIVATE_ATTRIBUTES},
                          tls=tls, users=("alice", "mallory"),
                          env={"PYTHONPATH": pythonpath}, director_terminal=terminal) as fed:
        yield fed


def experiment_processes(node_pid: int) -> list[int]:
    """The processes a node started with multiprocessing 'spawn' (its aggregator or
    collaborator processes; not multiprocessing's resource tracker), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == node_pid and b"spawn_main" in command:
            found.append(int(entry))
    return found


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ends within ``timeout`` seconds (an event: its pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def fx(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``fx ARGS`` run to its end in ``cwd``; its output captured."""
    return subprocess.run([*FX, *args], cwd=cwd, env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def unused_port() -> Iterator[int]:
    """A port where nothing listens (bound meanwhile, so nothing else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def lone_envoy(folder: Path, name: str, port: int, tls: list[str] | None = None) -> NodeProcess:
    """``fx envoy start`` for ``name`` in ``folder``, dialing 127.0.0.1:``port`` (plaintext
    unless ``tls`` gives -rc/-pk/-oc)."""
    (folder / "private_attributes.py").write_text(PRIVATE_ATTRIBUTES)
    config = folder / f"envoy_{name}.yaml"
    config.write_text(envoy_config(name, 1.0))
    return NodeProcess([*FX, "envoy", "start", "-n", name, "-ec", str(config), "-dh",
                        "127.0.0.1", "-dp", str(port),
                        *(tls if tls is not None else ["--disable-tls"])], folder, ENV)
