"""Shared helpers for fedloom's tests."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fedloom import Aggregator, Collaborator, LocalRuntime

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]
BACKENDS = ["single_process", "ray"]


def make_runtime(names: Sequence[str] = NAMES, *, agg_private: dict[str, Any] | None = None,
                 collab_private: Callable[[int, str], dict[str, Any]] | None = None,
                 backend: str = "single_process", **options: Any) -> LocalRuntime:
    """A LocalRuntime over ``names``. ``collab_private(index, name)`` makes each collaborator's
    private attributes where the collaborator lives (as a private_attributes_callable)."""
    agg = Aggregator()
    if agg_private:
        agg.private_attributes = agg_private
    collaborators = [
        Collaborator(name=name, private_attributes_callable=(
            functools.partial(collab_private, i, name) if collab_private else None))
        for i, name in enumerate(names)]
    return LocalRuntime(aggregator=agg, collaborators=collaborators, backend=backend, **options)


# Every temporary file of the run — the tests', pytest's own (tmp_path), the worker processes'
# (pytest-xdist) and the nodes' they start (a node killed with -9 cannot clean up its review
# socket's folder) — goes in one folder, removed at the end: the suite leaves nothing in the
# machine's temp folder. Made before pytest picks its base temp folder; workers inherit it.
_TEMP_ENV = "FEDLOOM_TESTS_TEMP"
_OWN_TEMP = pytest.StashKey[tuple[str, str | None, str | None]]()  # folder, saved TMPDIR, tempdir


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get(_TEMP_ENV)
    if folder is None:  # the main process (a worker was given its folder)
        folder = tempfile.mkdtemp(prefix="fedloom-tests-")
        config.stash[_OWN_TEMP] = (folder, os.environ.get("TMPDIR"), tempfile.tempdir)
        os.environ[_TEMP_ENV] = folder
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    # The Metaflow client caches what it reads in /tmp/metaflow_client, whatever TMPDIR says.
    cache = str(Path(folder) / "metaflow_client")
    os.environ["METAFLOW_CLIENT_CACHE_PATH"] = cache
    for module in ("metaflow.metaflow_config", "metaflow.client.filecache"):
        if module in sys.modules:  # imported already: their copies
            sys.modules[module].CLIENT_CACHE_PATH = cache  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_TEMP, None)
    if own is None:
        return
    folder, saved_env, saved_dir = own
    left = _kill_processes_in(folder)
    if left:  # a test lost track of a node it started (e.g. one it meant to kill lived on)
        print(f"\nconftest: killed {len(left)} process(es) the tests left running: {left}",
              file=sys.stderr)
    tempfile.tempdir = saved_dir
    os.environ.pop(_TEMP_ENV, None)
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env
    # At exit, after multiprocessing has removed its own temporary folder (in this one, when
    # a test started a fork server here), which it would otherwise fail to find.
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(folder,),
                                  kwargs={"ignore_errors": True}, exitpriority=-200)


def _kill_processes_in(folder: str) -> list[str]:
    """Kill every other process working in ``folder`` (its current directory, or named on
    its command line): whatever nodes the tests started and did not stop."""
    killed = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        pid = int(entry)
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile, or not ours to look at
            continue
        if cwd.startswith(folder) or folder in command:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{pid} {command[:80]}")
    return killed


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One local Ray for the whole session (2 CPUs, 2 fake GPUs); runtimes join it."""
    ray = pytest.importorskip("ray")
    # Workers import test flows by module name, whatever directory a test has moved to. The
    # path goes in the environment Ray's processes start with, not in a runtime_env: workers
    # with a runtime_env of their own are set up one by one by Ray's agent, and cannot be
    # the workers Ray starts in advance.
    root = str(Path(__file__).resolve().parents[1])
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, saved) if p)
    try:
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=True)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test on every backend: the core suite proves they behave the same."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


@pytest.fixture
def metaflow_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory, and a Metaflow client that looks there: the client keeps its
    datastore root, namespace, provider and file cache process-wide, so each test resets them."""
    pytest.importorskip("metaflow")
    import metaflow.client.core as mf_core
    from metaflow import namespace
    from metaflow.client.filecache import FileCache
    from metaflow.plugins.datastores.local_storage import LocalStorage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USERNAME", raising=False)
    for key in [k for k in os.environ if k.startswith("METAFLOW_")]:
        monkeypatch.delenv(key)
    # and for the fx commands a test starts: their cache in the test's folder too
    monkeypatch.setenv("METAFLOW_CLIENT_CACHE_PATH", str(tmp_path / "mf-cache"))
    monkeypatch.setattr(LocalStorage, "datastore_root", None)  # the client's sticky root
    monkeypatch.setattr(LocalStorage, "SYSROOT_VAR", None)  # import-time config value
    monkeypatch.setattr(mf_core, "current_metadata", False)
    monkeypatch.setattr(mf_core, "current_namespace", False)
    monkeypatch.setattr(mf_core, "filecache", FileCache(cache_dir=str(tmp_path / "mf-cache")))
    namespace(None)
    yield tmp_path


# -- federations of real processes, shared by the tests that can (tests/federation) -------------

SHARED_ENVOYS = {"envoy_one": 1.0, "New York": 3.0}  # name -> the value of its private data


def _shared_federation(factory: pytest.TempPathFactory, tls: bool) -> Iterator[Any]:
    from tests.federation.nodes import SharedFederation, federation

    shared = SharedFederation(lambda folder: federation(folder, SHARED_ENVOYS, tls=tls),
                              factory, "federation-tls" if tls else "federation-plaintext")
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="session")
def shared_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A director (default settings, review off) and SHARED_ENVOYS over TLS, users alice and
    mallory, started once for the session (see tests.federation.nodes.SharedFederation)."""
    yield from _shared_federation(tmp_path_factory, tls=True)


@pytest.fixture(scope="session")
def shared_plaintext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The same, without TLS."""
    yield from _shared_federation(tmp_path_factory, tls=False)


@pytest.fixture
def fed(shared_tls: Any) -> Any:
    """The shared TLS federation, healthy and idle, its earlier output forgotten. Files of the
    federation are in ``fed.folder``, not in the test's ``tmp_path``."""
    return shared_tls.ready()
