"""The federation tests' nodes: fedloom.federation.localhost with two users and envoys whose
private ``data`` is a vector of one value."""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from fedloom.errors import FedloomError
from fedloom.federation.localhost import (
    FX,
    START_TIMEOUT,
    LocalFederation,
    NodeProcess,
    local_federation,
    make_certificates,
)
from fedloom.federation.transport.proto import fedloom_pb2 as pb

__all__ = ["FX", "Node", "SharedFederation", "envoy_config", "experiment_processes",
           "federation", "fx", "lone_envoy", "make_certificates", "unused_port", "wait_gone"]

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
Node = NodeProcess

# Envoys beat every half period and are lost after three periods of silence; a collaborator
# process is killed after three unanswered pings. The tests' default is the product's: a
# machine busy enough to starve a node for a few seconds must not make envoys "lost" in tests
# that are not about health checks. Those pass a short period of their own.
HEALTH_CHECK_PERIOD = 5.0

PRIVATE_ATTRIBUTES = '''
import numpy as np

aggregator_attrs = {"secret": "aggregator-only"}

def envoy_data(value):
    return {"data": np.full(3, float(value))}
'''



def director_config(review: bool | None = False, review_timeout: float | None = None,
                    health_check_period: float = HEALTH_CHECK_PERIOD,
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
               health_check_period: float = HEALTH_CHECK_PERIOD,
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
    """The aggregator or collaborator processes a node started, from /proc: the children of
    its multiprocessing fork server (see lifeline.context), or its own children made with
    'spawn'; not the fork server itself, nor multiprocessing's resource tracker."""
    table: dict[int, tuple[int, bytes]] = {}  # pid -> parent, command line
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        table[int(entry)] = (int(stat.rpartition(")")[2].split()[1]), command)
    servers = {pid for pid, (parent, command) in table.items()
               if parent == node_pid and b"multiprocessing.forkserver" in command}
    return [pid for pid, (parent, command) in table.items()
            if parent in servers or (parent == node_pid and b"spawn_main" in command)]


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


def fx(args: list[str], cwd: Path, timeout: float = 60,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fx ARGS`` run to its end in ``cwd`` (with ``env``, by default this process's and
    ENV); its output captured. As ``python -m fedloom.cli ARGS`` in a new process, but forked
    from one that imported fedloom's command line once (see FX_SERVER)."""
    return _fx_server().run(args, cwd, {**os.environ, **ENV} if env is None else env, timeout)


# Runs each request line {args, cwd, env, stdout, stderr} as ``python -m fedloom.cli ARGS``
# does, in a child forked from this process, which imported the command line's modules once
# (about a second of start-up otherwise); says the child's pid, then its exit code.
FX_SERVER = """
import json, os, runpy, sys, traceback
import fedloom.cli

requests = os.fdopen(0, "rb", buffering=0)
while line := requests.readline():
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(os.open(request["stdout"], os.O_WRONLY), 1)
            os.dup2(os.open(request["stderr"], os.O_WRONLY), 2)
            sys.stdin = open(os.devnull)
            sys.argv = [fedloom.cli.__file__, *request["args"]]
            del sys.modules["fedloom.cli"]  # as before python -m runs it: not imported yet
            try:
                runpy.run_module("fedloom.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class _FxServer:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", FX_SERVER], cwd=ROOT,
                                        env={**os.environ, **ENV}, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        self._lock = threading.Lock()
        self._pending = b""

    def run(self, args: list[str], cwd: Path, env: dict[str, str],
            timeout: float) -> subprocess.CompletedProcess[str]:
        with self._lock, tempfile.TemporaryDirectory(prefix="fx-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            out.touch()
            err.touch()
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out),
                       "stderr": str(err)}
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            pid = int(self._line(START_TIMEOUT))
            try:
                code = int(self._line(timeout))
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._line(START_TIMEOUT)
                raise subprocess.TimeoutExpired([*FX, *args], timeout, out.read_text(),
                                                err.read_text()) from None
            return subprocess.CompletedProcess([*FX, *args], code, out.read_text(),
                                               err.read_text())

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                raise FedloomError(f"the fx server ended (exit code {self.process.wait()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the server ends at the end of its requests
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


_server: list[_FxServer] = []


def _fx_server() -> _FxServer:
    if not _server or _server[0].process.poll() is not None:
        _server[:] = [_FxServer()]
        atexit.register(_server[0].stop)
    return _server[0]


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


def forget_output(node: NodeProcess) -> None:
    """Drop what ``node`` printed so far: its next ``wait_for`` matches only later lines."""
    while True:
        try:
            line = node.lines.get_nowait()
        except queue.Empty:
            break
        if line is None:  # the process ended: keep saying so
            node.lines.put(None)
            break
    node.seen.clear()


class SharedFederation:
    """One federation for many tests (starting one costs seconds of CPU).

    :meth:`ready` hands it to a test healthy and idle — the same processes alive, every envoy
    registered, online and connected, nothing unfinished on the director, no experiment left
    on any envoy — with its nodes' earlier output forgotten, so ``wait_for`` sees only what
    the test causes. An envoy the test killed is started again; a test that added a node,
    killed the director, or left work behind that does not end within ``settle`` seconds gets
    the next test a fresh federation instead.
    Tests sharing it must tell their experiments apart by id, and find files in
    ``fed.folder`` (not their own ``tmp_path``)."""

    def __init__(self, start: Callable[[Path], AbstractContextManager[LocalFederation]],
                 folders: pytest.TempPathFactory, name: str, settle: float = 30.0) -> None:
        self._start, self._folders, self._name, self._settle = start, folders, name, settle
        self._stack: ExitStack | None = None
        self._names: set[str] = set()
        self._channels: dict[str, grpc.Channel] = {}
        self._seen_nodes: list[NodeProcess] = []
        self.fed: LocalFederation | None = None
        self.started = 0  # federations started so far

    def ready(self) -> LocalFederation:
        if self.fed is not None and not self._reusable(self.fed):
            self.close()
        if self.fed is None:
            stack = ExitStack()
            try:
                self.fed = stack.enter_context(self._start(self._folders.mktemp(self._name)))
            except BaseException:
                stack.close()
                raise
            self._stack, self.started = stack, self.started + 1
            self._names = set(self.fed.envoys)
            self._seen_nodes = [self.fed.director, *self.fed.envoys.values()]
        for node in (self.fed.director, *self.fed.envoys.values()):
            forget_output(node)
        return self.fed

    def close(self) -> None:
        self._close_channels()
        stack, self._stack, self.fed = self._stack, None, None
        if stack is not None:
            stack.close()

    def _close_channels(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _reusable(self, fed: LocalFederation) -> bool:
        if set(fed.envoys) != self._names or fed.director.process.poll() is not None:
            return False  # a node was added, or the director is gone
        nodes = [fed.director, *fed.envoys.values()]
        if nodes != self._seen_nodes:  # one was restarted: its socket is new
            self._close_channels()
        for name, node in list(fed.envoys.items()):
            if node.process.poll() is not None:  # killed by the test: start it again
                self._close_channels()
                config = fed.folder / f"envoy_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.yaml"
                try:
                    fed.start_envoy(name, config.read_text()).wait_for(
                        r"registered with the director")
                except FedloomError:
                    return False
        self._seen_nodes = [fed.director, *fed.envoys.values()]
        deadline = time.monotonic() + self._settle
        pause = threading.Event()  # never set: waits between looks at the nodes' status
        while not self._idle(fed):
            if time.monotonic() > deadline:
                return False
            pause.wait(0.1)
        return True

    def _idle(self, fed: LocalFederation) -> bool:
        from fedloom.federation.review.cli import envoy_workdir
        from fedloom.federation.store import FINAL_STATES

        try:
            director = self._status(fed.folder / ".fedloom" / "director").director
            envoys = [self._status(envoy_workdir(name, fed.folder)).envoy for name in fed.envoys]
        except (grpc.RpcError, OSError):
            return False
        return ({e.name for e in director.envoys} == set(fed.envoys)
                and all(e.online and not e.experiment for e in director.envoys)
                and all(x.phase in FINAL_STATES for x in director.experiments)
                and all(e.connection == "connected" and not e.experiments for e in envoys))

    def _status(self, workdir: Path) -> pb.NodeStatus:
        """What ``fx director/envoy status`` shows, on a channel kept per node (a new
        channel takes a while to be ready)."""
        from fedloom.federation.review.service import ADDRESS_FILE
        from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

        address = (workdir / ADDRESS_FILE).read_text().strip()
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address)
        status: pb.NodeStatus = rpc.NodeStub(self._channels[address]).Status(  # type: ignore[no-untyped-call]
            pb.StatusRequest(), timeout=30, wait_for_ready=True)
        return status
