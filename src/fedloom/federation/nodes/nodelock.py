"""One node per work folder: a running director or envoy holds an exclusive ``flock`` on
``node.lock`` in its work folder, which also holds its pid. A second node started in the same
folder finds the lock taken and stops before it writes anything, so the running node's files
(its review socket and ``review.address``, its review log) stay as they are. The kernel
releases the lock when the node ends, however it ends (``kill -9`` included)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

from fedloom.errors import FedloomError

LOCK_FILE = "node.lock"
MAX_SOCKET_PATH = 100  # bytes; a Unix socket address holds 107 and a NUL

_held: dict[Path, IO[str]] = {}  # work folder -> its open lock file, while this process runs


class NodeRunning(FedloomError):
    """Another node runs with this work folder."""


def acquire(workdir: Path, what: str) -> None:
    """Lock ``workdir`` (made if missing) for this process, ``what`` (e.g. "the director") for
    messages; :class:`NodeRunning` if another process holds it. Held until :func:`release`
    or the end of this process."""
    workdir = workdir.resolve()
    if workdir in _held:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the node runs
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        pid = file.read().strip() or "unknown"
        file.close()
        raise NodeRunning(f"{what} is already running (pid {pid}) with the work folder "
                          f"{workdir}: stop it first, or start this one from another "
                          "folder") from None
    except OSError as exc:
        file.close()
        raise NodeRunning(f"cannot lock the work folder {workdir} ({path}: {exc})") from exc
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    _held[workdir] = file


def holder(workdir: Path) -> int | None:
    """The pid of the node that holds ``workdir``'s lock now (another process), or None when
    no node runs there."""
    path = workdir / LOCK_FILE
    try:
        file = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = file.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return None


def held(workdir: Path) -> bool:
    """Whether this process holds ``workdir``'s lock (so its leftovers are its own to clear)."""
    return workdir.resolve() in _held


def release(workdir: Path) -> None:
    file = _held.pop(workdir.resolve(), None)
    if file is not None:
        file.close()  # closing the file releases the lock


def socket_folder(workdir: Path, name: str, longest_socket: str) -> Path | None:
    """A new private (0700) folder ``name`` in ``workdir`` for Unix sockets named at most as
    long as ``longest_socket``, in place of what a killed earlier run of this node left there;
    None when this process does not hold ``workdir``'s lock, when a socket's path there would
    be too long, or when the folder cannot be made (the caller then uses the system's)."""
    if not held(workdir):
        return None
    folder = workdir.resolve() / name
    if len(os.fsencode(folder / longest_socket)) > MAX_SOCKET_PATH:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(mode=0o700, parents=True)
        folder.chmod(0o700)  # whatever the umask
    except OSError:
        return None  # e.g. left there by another user
    return folder
