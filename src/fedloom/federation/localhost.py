"""A whole federation on this machine: a CA and certificates, a director and envoys as real
``fx`` processes on 127.0.0.1 (a free port). For trying a flow before going live, for the demo,
the benchmarks and the integration tests.

    with local_federation(folder, envoys={"site_a": "site_a: {...}"}) as fed:
        flow.runtime = FederatedRuntime(collaborators=["site_a"], director=fed.director_info())
        flow.run()

Every wait is for an event (a line a node prints), with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.errors import FedloomError

FX = [sys.executable, "-m", "fedloom.cli"]
START_TIMEOUT = 60.0

Certs = dict[tuple[str, str], tuple[Path, Path]]  # (kind, name) -> (certificate, key)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")  # colours, cursor, titles
_PARTIAL = "\x00partial:"


class NodeFailed(FedloomError):
    """A node did not print what was awaited: it ended, or took too long."""


class NodeProcess:
    """A running process whose output lines can be awaited (lines are the events).

    With ``terminal=True`` the process runs in a pseudo-terminal (as an admin's console):
    :meth:`type` answers its prompts, and :meth:`wait_for` also matches a prompt that is not
    yet a whole line."""

    def __init__(self, args: Sequence[str], cwd: Path,
                 env: Mapping[str, str] | None = None, terminal: bool = False) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._terminal: int | None = None
        self.process: subprocess.Popen[Any]
        if terminal:
            import pty

            self._terminal, child_end = pty.openpty()
            self.process = subprocess.Popen(list(args), cwd=cwd, env=environment,
                                            stdin=child_end, stdout=child_end,
                                            stderr=child_end, start_new_session=True)
            os.close(child_end)
            threading.Thread(target=self._read_terminal, daemon=True).start()
        else:
            self.process = subprocess.Popen(list(args), cwd=cwd, env=environment,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_terminal(self) -> None:
        assert self._terminal is not None
        pending = ""
        while True:
            try:
                chunk = os.read(self._terminal, 65536)
            except OSError:  # EIO: the process closed the terminal
                chunk = b""
            if not chunk:
                break
            pending += _ANSI.sub("", chunk.decode("utf-8", "replace")).replace("\r", "")
            *whole, pending = pending.split("\n")
            for line in whole:
                self.lines.put(line)
            if pending:
                self.lines.put(_PARTIAL + pending)  # a prompt waits on this line
        if pending:
            self.lines.put(pending)
        self.lines.put(None)

    def type(self, text: str) -> None:
        """Type ``text`` at the process's terminal."""
        if self._terminal is None:
            raise NodeFailed("this process has no terminal (start it with terminal=True)")
        os.write(self._terminal, text.encode())

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT,
                 since: int = 0) -> re.Match[str]:
        """The first line so far (from line ``since`` of :attr:`seen` on), or to come,
        matching ``pattern``."""
        regex = re.compile(pattern)
        for earlier in self.seen[since:]:
            found = regex.search(earlier)
            if found:
                return found
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise NodeFailed(f"no line matching {pattern!r} within {timeout:g} s; "
                                 f"output:\n{self.tail()}") from None
            if line is None:
                raise NodeFailed(f"the process ended before printing {pattern!r}; output:\n"
                                 f"{self.tail()}")
            if line.startswith(_PARTIAL):  # not a whole line yet: match it, don't keep it
                found = regex.search(line[len(_PARTIAL):])
                if found:
                    return found
                continue
            self.seen.append(line)
            found = regex.search(line)
            if found:
                return found

    def read_all(self, timeout: float = 30.0) -> list[str]:
        """Every line until the process ends (it must end within ``timeout``)."""
        self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            if not line.startswith(_PARTIAL):
                self.seen.append(line)
        return self.seen

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.seen[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._terminal is not None:
            with contextlib.suppress(OSError):
                os.close(self._terminal)
            self._terminal = None


def tls_args(certs: Certs | None, kind: str, name: str) -> list[str]:
    """``-rc/-pk/-oc`` for a node, or ``--disable-tls``."""
    if certs is None:
        return ["--disable-tls"]
    cert, key = certs[(kind, name)]
    return ["-rc", str(certs[("ca", "")][0]), "-pk", str(key), "-oc", str(cert)]


@dataclass
class LocalFederation:
    """A running director and its envoys; configs and certificates live in ``folder``."""

    folder: Path
    port: int
    certs: Certs | None
    director: NodeProcess
    env: dict[str, str] = field(default_factory=dict)
    envoys: dict[str, NodeProcess] = field(default_factory=dict)
    dial_port: int = 0  # where envoys and users connect, when not the director's own port

    @property
    def public_port(self) -> int:
        return self.dial_port or self.port

    def tls_args(self, kind: str, name: str) -> list[str]:
        return tls_args(self.certs, kind, name)

    def start_envoy(self, name: str, config_yaml: str,
                    cert_name: str | None = None) -> NodeProcess:
        """Start envoy ``name`` with this config (``cert_name``: another envoy's certificate,
        to see it refused)."""
        config = self.folder / f"envoy_{_safe(name)}.yaml"
        config.write_text(config_yaml)
        node = NodeProcess([*FX, "envoy", "start", "-n", name, "-ec", str(config),
                            "-dh", "127.0.0.1", "-dp", str(self.public_port),
                            *self.tls_args("envoy", cert_name or name)], self.folder, self.env)
        self.envoys[name] = node
        return node

    def director_info(self, user: str = "alice") -> dict[str, object]:
        """The ``director=`` dict a FederatedRuntime takes, for ``user``."""
        info: dict[str, object] = {"director_node_fqdn": "127.0.0.1",
                                   "director_port": self.public_port}
        if self.certs is not None:
            cert, key = self.certs[("user", user)]
            info.update(cert_chain=str(self.certs[("ca", "")][0]), api_cert=str(cert),
                        api_private_key=str(key))
        return info

    def stop(self) -> None:
        for node in self.envoys.values():
            node.stop()
        self.director.stop()


@contextmanager
def local_federation(folder: Path, envoys: Mapping[str, str], director_config_yaml: str = "",
                     files: Mapping[str, str] | None = None, tls: bool = True,
                     users: Sequence[str] = ("alice",), env: Mapping[str, str] | None = None,
                     timeout: float = START_TIMEOUT,
                     front: Callable[[int], int] | None = None,
                     director_terminal: bool = False) -> Iterator[LocalFederation]:
    """Start a director and ``envoys`` (name -> envoy config YAML) and wait until every envoy
    registered; stop them all on exit. ``files`` (name -> text) are written to ``folder`` first,
    e.g. the modules the configs name for private attributes. The director's config must leave
    ``listen_port`` 0 (or out): a free port is picked. ``front``, given the director's port,
    returns the port envoys and users dial instead (e.g. a proxy that counts bytes).
    ``director_terminal`` runs the director in a pseudo-terminal (its review prompt)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    (folder / "director.yaml").write_text(director_config_yaml or _DEFAULT_DIRECTOR)
    certs = make_certificates(folder / "pki", list(envoys), users) if tls else None
    extra = dict(env or {})
    director = NodeProcess([*FX, "director", "start", "-c", str(folder / "director.yaml"),
                            *tls_args(certs, "director", "director")], folder, extra,
                           terminal=director_terminal)
    try:
        port = int(director.wait_for(r"director listening on [^:]+:(\d+)", timeout).group(1))
    except BaseException:
        director.stop()
        raise
    fed = LocalFederation(folder, port, certs, director, extra)
    try:
        fed.dial_port = front(port) if front is not None else 0
    except BaseException:
        director.stop()
        raise
    try:
        for name, config in envoys.items():
            fed.start_envoy(name, config)
        for name in envoys:  # the envoy's own line first: one that fails says why, at once
            fed.envoys[name].wait_for(r"registered with the director", timeout)
            director.wait_for(rf"envoy '{re.escape(name)}' registered", timeout)
        yield fed
    finally:
        fed.stop()


_DEFAULT_DIRECTOR = ("settings:\n  listen_host: 127.0.0.1\n  listen_port: 0\n"
                     "  envoy_health_check_period: 5\n")  # review on: the config's default


def make_certificates(folder: Path, envoys: Sequence[str],
                      users: Sequence[str] = ("alice",)) -> Certs:
    """A CA, and certificates for the director (127.0.0.1, localhost), envoys and users."""
    from fedloom.federation.pki import create_ca, issue_certificate

    ca = create_ca(folder)
    certs: Certs = {("ca", ""): (ca.cert, ca.key)}
    made = [("director", "director", ["127.0.0.1", "localhost"]),
            *(("user", name, []) for name in users), *(("envoy", name, []) for name in envoys)]
    for kind, name, hosts in made:
        paths = issue_certificate(folder, kind, name, hosts=hosts)  # type: ignore[arg-type]
        certs[(kind, name)] = (paths.cert, paths.key)
    return certs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
