"""Experiment processes die with their node: an aggregator with its director, a collaborator
with its envoy, also when the node is killed with ``kill -9`` (which runs no clean-up).

Two mechanisms, both set up by :func:`bind_to_parent` first thing in the child:

- The lifeline, which does not depend on which thread started the child: multiprocessing
  ('spawn', or the fork server, which passes it on) gives the child the read end of a pipe
  whose write end only the node holds (``multiprocessing.parent_process().sentinel``); the
  kernel closes it when the node dies, however it dies. A daemon thread in the child waits
  on it and ends the process at once. It needs the interpreter, so a child stuck in C code
  that holds the GIL is not ended by it.
- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), which the kernel sends
  even to a child that holds the GIL or is stopped. Linux ties it to the *thread* that forked
  the child: it fires when that thread ends, even if the parent process lives on. So it is
  armed only for children started by :func:`start`, which forks them from one thread that
  lives as long as the node process (whichever thread asks).

After arming the signal the child checks that its parent is still the process that started
it: one that died before ``prctl`` sent no signal.

Where the children come from: see :func:`context` (on Linux a fork server that has fedloom
imported; its children's parent is that server, itself a child of the node that ends with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any

from fedloom.federation.nodes import nodelock

PR_SET_PDEATHSIG = 1
ORPHANED_EXIT_CODE = 70  # what an orphaned child exits with (it is usually killed first)
_ARMED = "_fedloom_parent_death_signal"  # on the Process object, which 'spawn' pickles
TEMP_FOLDER = "process-temp"  # in a node's work folder: see keep_temp_files_in()

# What a fork server imports once, so that its children start with it imported: the
# experiment processes' code (the engine, numpy, the wire format).
_PRELOAD = ["fedloom.federation.nodes.experiment_process"]
_context: ForkServerContext | SpawnContext | None = None
_context_lock = threading.Lock()

_requests: queue.SimpleQueue[tuple[BaseProcess | None, Future[None]]] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def context() -> ForkServerContext | SpawnContext:
    """The multiprocessing context that experiment processes are made with. On Linux, a fork
    server that has imported fedloom once: each child is a fork of it and starts in
    milliseconds, where a fresh interpreter ('spawn') spends about half a second of CPU on
    the same imports, for every experiment at every site. The server starts when the node's
    first experiment arrives (:func:`warm_up`; a node that runs none pays nothing) and ends
    with the node. Elsewhere, 'spawn'."""
    global _context
    with _context_lock:
        if _context is None:
            if sys.platform.startswith("linux") and \
                    "forkserver" in multiprocessing.get_all_start_methods():
                _context = multiprocessing.get_context("forkserver")
                _context.set_forkserver_preload(_PRELOAD)
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


def start(process: BaseProcess) -> None:
    """Start ``process`` (not yet started; its target calls :func:`bind_to_parent` first) from
    this module's spawner thread, so that its parent-death signal fires only when this process
    dies. Raises what ``process.start()`` raises."""
    setattr(process, _ARMED, True)
    _ask_spawner(process).result()


def keep_temp_files_in(workdir: Path) -> None:
    """Keep this node's multiprocessing files (the fork server's socket) in ``workdir``
    instead of the system's temporary folder: a node killed with ``kill -9`` runs no clean-up,
    and its next start clears what it left there. Only for a process that holds the folder's
    lock (see :mod:`nodelock`), before its first experiment; where the folder's path is too
    long for a Unix socket, or the folder cannot be made, the system's temporary folder is
    kept."""
    config = getattr(multiprocessing.current_process(), "_config", None)
    if not isinstance(config, dict) or config.get("tempdir"):
        return  # multiprocessing has its folder already (or works otherwise)
    # multiprocessing names its socket "listener-" and 8 random characters in that folder.
    folder = nodelock.socket_folder(workdir, TEMP_FOLDER, "listener-12345678")
    if folder is None:
        return
    config["tempdir"] = str(folder)  # where multiprocessing.util.get_temp_dir() looks first
    # Removed at exit, as multiprocessing removes its own (after its own finalizers).
    Finalize(None, shutil.rmtree, args=(str(folder), True), exitpriority=-100)


def warm_up() -> None:
    """Start the fork server now, in the background, when an experiment is on its way (its
    plan is being reviewed): its process then starts at once when it is wanted. Nothing to
    do where experiment processes are fresh interpreters ('spawn')."""
    if isinstance(context(), ForkServerContext):
        _ask_spawner(None)  # not waited for: a failure shows when a process is started


def _ask_spawner(process: BaseProcess | None) -> Future[None]:
    """Have the spawner thread start ``process`` (``None``: the fork server alone)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawn_forever, name="fedloom-spawner",
                                        daemon=True)
            _spawner.start()
    done: Future[None] = Future()
    _requests.put((process, done))
    return done


def _spawn_forever() -> None:
    while True:  # never returns: its children's parent-death signal is tied to this thread
        process, started = _requests.get()
        try:
            if process is None:
                from multiprocessing import forkserver  # not on every platform

                with _main_module_hidden():
                    forkserver.ensure_running()
                started.set_result(None)
                continue
            # A target defined in __main__ needs it imported in the child: only then keep it.
            target = getattr(process, "_target", None)
            with contextlib.nullcontext() if getattr(target, "__module__", "__main__") == \
                    "__main__" else _main_module_hidden():
                process.start()
        except BaseException as exc:
            started.set_exception(exc)
        else:
            started.set_result(None)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a child is started: 'spawn' (and the fork server alike) would have it import the
    node's ``__main__`` again (the whole ``fx`` command line, about 0.1 s of CPU per experiment
    process), though its target lives in a module of its own and it needs nothing from there."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved: dict[str, Any] = {key: main.__dict__[key] for key in ("__spec__", "__file__")
                             if key in main.__dict__}
    main.__dict__["__spec__"] = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def bind_to_parent(expected_parent: int) -> None:
    """In a child process, first thing: end this process when its parent (pid
    ``expected_parent``, the node) dies. Ends it now if the parent is gone already."""
    me = multiprocessing.current_process()
    if getattr(me, _ARMED, False):
        _parent_death_signal(signal.SIGKILL)
    # A fork server's child: its parent is the server, itself the node's child.
    forked = getattr(me, "_start_method", None) == "forkserver"
    parent_now = _parent_of(os.getppid()) if forked else os.getppid()
    if parent_now != expected_parent:  # it died before the signal was armed
        os._exit(ORPHANED_EXIT_CODE)
    if forked:
        _let_go_of_fork_server()
    parent = multiprocessing.parent_process()
    if parent is None:
        return  # not started by multiprocessing: the signal (if armed) is all there is
    sentinel = parent.sentinel
    if wait([sentinel], timeout=0):
        os._exit(ORPHANED_EXIT_CODE)
    threading.Thread(target=_exit_when_ready, args=(sentinel,), daemon=True,
                     name="fedloom-lifeline").start()


def _let_go_of_fork_server() -> None:
    """A fork server ends when every holder of its 'alive' pipe has closed it: the node and,
    as multiprocessing passes it on, each of the server's children. Its end is what fires this
    child's parent-death signal, so the child must not keep it alive past the node (a child
    stuck in C code would otherwise outlive the node, server and all): it closes its copy."""
    from multiprocessing import forkserver  # not on every platform

    server = getattr(forkserver, "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _parent_of(pid: int) -> int | None:
    try:  # /proc/<pid>/stat: "pid (command) state ppid ...", the command may hold ")"
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _exit_when_ready(sentinel: int) -> None:
    wait([sentinel])  # readable (end of file) only once the parent process is gone
    os._exit(ORPHANED_EXIT_CODE)


def _parent_death_signal(signum: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # no prctl: the lifeline remains
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
