# mypy: allow-untyped-calls
# (Metaflow ships py.typed but leaves most functions unannotated.)
"""Checkpoints that the real Metaflow client reads: ``Flow(name).latest_run``, ``Step``, ``Task``.

Everything on disk is written by Metaflow's own classes: :class:`FlowDataStore` /
``TaskDataStore`` (content-addressed artifacts, logs, ``DONE`` markers) and a
:class:`LocalMetadataProvider` (runs, steps, tasks, metadata, artifact index). fedloom only
decides the ids and hands over artifacts it has already pickled.

Choices worth knowing (see also the notes in ``tests/test_checkpoint_store.py``):

* Artifacts are pickled with cloudpickle, protocol 5, and labelled ``pickle-v4``: that label
  routes them to Metaflow's ``PickleSerializer``, whose loader is ``pickle.loads`` (it reads
  every protocol). Protocol 5 pickles large numpy arrays about twice as fast as protocol 4.
* Blobs go to the content-addressed store uncompressed (``cas_raw``, which the loader honours):
  Metaflow's default gzip costs ~2 s per 40 MB of float weights and saves ~7 %. Identical
  bytes have the same sha1 key and are written once (``compress=True`` restores gzip).
  Large values can be pickled straight into the store (:attr:`MetaflowStore.sink`, see
  ``cas_stream``), in the same layout, without an in-memory copy.
* The metadata provider writes under a storage class bound to this store's root, so the
  process-wide ``LocalStorage.datastore_root`` that the client uses is never touched.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pickle
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, NamedTuple

from metaflow.datastore.flow_datastore import FlowDataStore
from metaflow.datastore.task_datastore import TaskDataStore
from metaflow.exception import MetaflowUnknownUser
from metaflow.metadata_provider.metadata import MetaDatum
from metaflow.metaflow_environment import MetaflowEnvironment
from metaflow.mflog import TASK_LOG_SOURCE
from metaflow.mflog.mflog import decorate
from metaflow.plugins.datastores.local_storage import LocalStorage
from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

from fedloom.checkpoint.artifacts import PROTOCOL, Artifact, StoredBlob, serialize_artifacts
from fedloom.checkpoint.cas_stream import StreamingCas
from fedloom.tracking.records import METRICS_ARTIFACT

__all__ = ["RESERVED_ARTIFACTS", "MetaflowStore", "default_datastore_root", "serialize_artifacts"]

ENCODING = "pickle-v4"  # the label Metaflow's PickleSerializer claims; its loader is pickle.loads
SYSROOT_ENV = "METAFLOW_DATASTORE_SYSROOT_LOCAL"
# Written on every task, as Metaflow's own runtime does; the client's Task.finished/successful/
# exception and Run.finished/successful (= those of the 'end' step's task) read them.
# And the task's metrics, written by fedloom under a name no flow attribute may take.
RESERVED_ARTIFACTS = frozenset({"_task_ok", "_success", "_exception", METRICS_ARTIFACT})


def default_datastore_root() -> str:
    """The ``.metaflow`` directory the client would use from the current directory:
    ``$METAFLOW_DATASTORE_SYSROOT_LOCAL/.metaflow`` if set, else the nearest ``.metaflow`` up
    from the cwd, else a new ``./.metaflow`` (Metaflow's own lookup, which also honours a
    ``DATASTORE_SYSROOT_LOCAL`` from the Metaflow config profile)."""
    sysroot = os.environ.get(SYSROOT_ENV)
    if sysroot:
        return os.path.join(sysroot, LocalStorage.DATASTORE_DIR)
    found: str = LocalStorage.get_datastore_root_from_config(_quiet, create_on_absent=True)
    return found


class _Provider(LocalMetadataProvider):
    """The local metadata provider, with three changes: ids minted by fedloom (numeric, like
    Metaflow's own) are registered rather than assumed registered, it writes under
    ``_storage`` (bound to one root), and a run without a resolvable user (no USER/USERNAME,
    or root) gets ``user:<os account>`` instead of failing with MetaflowUnknownUser."""

    _storage: type[LocalStorage] = LocalStorage

    @classmethod
    def _get_storage_class(cls) -> type[LocalStorage]:
        return cls._storage

    def register_run_id(self, run_id: str, tags: Any = None, sys_tags: Any = None) -> bool:
        created: bool = self._new_run(run_id, tags, sys_tags)
        return created

    def register_task_id(self, run_id: str, step_name: str, task_id: str, attempt: int = 0,
                         tags: Any = None, sys_tags: Any = None) -> bool:
        created: bool = self._new_task(run_id, step_name, task_id, attempt, tags, sys_tags)
        return created

    @classmethod
    def _dump_json_to_file(cls, filepath: str, data: Any, allow_overwrite: bool = False) -> None:
        """Metaflow's own file (same name, same JSON, same keep-the-first rule, written
        atomically), in a third of the time: a task writes ~20 of these, and Metaflow's
        version (a NamedTemporaryFile and a streamed ``json.dump``) was most of a small task's
        checkpoint cost. The temporary name starts with a dot, so no reader's pattern sees it."""
        if not allow_overwrite and os.path.isfile(filepath):
            return
        folder, name = os.path.split(filepath)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data).encode())
            os.rename(tmp, filepath)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _get_system_info_as_dict(self) -> dict[str, str]:
        try:
            info: dict[str, str] = super()._get_system_info_as_dict()
            return info
        except MetaflowUnknownUser:
            env = self._environment.get_environment_info()
            return {"runtime": env["runtime"], "python_version": env["python_version_code"],
                    "user": _os_user(), "metaflow_version": env.get("metaflow_version", "")}


class _EndTask(NamedTuple):
    task_id: str
    attempt: int
    ok: bool
    participant: str
    objects: dict[str, str]
    info: dict[str, Any]


class MetaflowStore:
    """One flow's checkpoints in a local Metaflow datastore; one run at a time.

    Thread-safe for ``new_task_id``; ``write_task`` calls for different tasks may run
    concurrently (every file is written atomically under its own name)."""

    def __init__(self, flow_name: str, root: str | None = None, *, compress: bool = False) -> None:
        """root: the local datastore sysroot (the directory holding ``.metaflow``). Default:
        where the Metaflow client looks from the current directory
        (:func:`default_datastore_root`). compress: gzip blobs as Metaflow does by default."""
        self.flow_name = flow_name
        self.datastore_root = os.path.realpath(
            os.path.join(root, LocalStorage.DATASTORE_DIR) if root else default_datastore_root())
        self._compress = compress
        storage = type("_RootedStorage", (LocalStorage,), {"datastore_root": self.datastore_root})
        provider_cls = type("_RootedProvider", (_Provider,), {"_storage": storage})
        flow = SimpleNamespace(name=flow_name)
        self._env = MetaflowEnvironment(flow)
        self._meta = provider_cls(self._env, flow, None, None)
        self._flow_ds = FlowDataStore(flow_name, self._env, metadata=self._meta,
                                      storage_impl=LocalStorage, ds_root=self.datastore_root)
        self._lock = threading.Lock()
        self._run_id: str | None = None
        self._finished = False
        self._seq = 0
        self._last_ms = 0  # when the latest task record was completed (see _record)
        self._registered: set[tuple[str, str]] = set()
        self._end: _EndTask | None = None  # the latest 'end' task, to re-mark it failed
        # Streams raw blobs, so not with compress=True. close() when done with the store.
        self.sink = None if compress else StreamingCas(self._flow_ds.ca_store)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def start_run(self, run_id: str, tags: Sequence[str] = ()) -> None:
        """Register run ``run_id`` (numeric: microseconds since the epoch, like Metaflow's local
        ids); the client's ``Flow(flow_name).latest_run`` is the most recently created run."""
        if not run_id.isdigit():
            raise ValueError(f"run ids must be numeric strings (as Metaflow's), got {run_id!r}")
        os.makedirs(self.datastore_root, exist_ok=True)
        with self._lock:
            self._run_id, self._finished, self._seq, self._end = run_id, False, 0, None
            self._registered.clear()
        self._meta.register_run_id(run_id, tags=list(tags) or None)

    def new_task_id(self, step: str) -> str:
        """A fresh task id in this run ("1", "2", ...), registered under ``step`` now, so the
        task's ``created_at`` (the client's ordering within a step) is when it was scheduled."""
        run_id = self._live_run()
        with self._lock:
            self._seq += 1
            task_id = str(self._seq)
            self._registered.add((step, task_id))
        self._meta.register_task_id(run_id, step, task_id)
        return task_id

    def write_task(self, step: str, task_id: str, artifacts: Mapping[str, Artifact], *,
                   stdout: str, stderr: str, participant: str, ok: bool,
                   started_at: float, finished_at: float, attempt: int = 0,
                   exception: str | None = None, next_step: str = "",
                   unpicklable: Sequence[str] = (),
                   metrics: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Record one finished (or failed) task: artifacts already pickled (see
        :func:`serialize_artifacts`; large ones maybe already stored by :attr:`sink`), its
        output, and metadata (``participant``, ``attempt``, ``started-at``/``finished-at`` in
        epoch seconds) visible in ``task.metadata_dict``. ``metrics``: what the task logged
        (``MetricRecord.to_dict()`` each), kept as the artifact ``fedloom_metrics``; ``None``
        writes no such artifact."""
        run_id = self._live_run()
        clash = RESERVED_ARTIFACTS & artifacts.keys()
        if clash:
            raise ValueError(f"artifact names reserved for the task status: {sorted(clash)}")
        with self._lock:
            register = (step, task_id) not in self._registered
            self._registered.add((step, task_id))
        if register:
            self._meta.register_task_id(run_id, step, task_id, attempt)
        status: dict[str, Any] = {"_task_ok": ok, "_success": ok}
        if exception is not None:
            status["_exception"] = exception
        if metrics is not None:  # plain dicts of builtins: readable without fedloom
            status[METRICS_ARTIFACT] = [dict(m) for m in metrics]
        objects, info = self._save({**artifacts, **_pickled(status)})
        logs = {"stdout": _mflog(stdout, started_at), "stderr": _mflog(stderr, started_at)}
        self._record(step, task_id, attempt, objects, info, participant=participant, ok=ok,
                     started_at=started_at, finished_at=finished_at, logs=logs,
                     extra=_fedloom_fields(next_step, unpicklable))
        if step == "end":
            with self._lock:
                self._end = _EndTask(task_id, attempt, ok, participant, objects, info)

    def finish_run(self, ok: bool) -> None:
        """Close the run. The client's ``run.successful``/``finished`` are those of the 'end'
        step's task, so ``ok=True`` requires a successful 'end' task to have been written; with
        ``ok=False`` a successful 'end' task gets a new, failed attempt (its artifacts are
        reused, not rewritten), and without one the run already reads as unfinished."""
        run_id = self._live_run()
        end = self._end
        if ok and not (end and end.ok):
            raise ValueError(f"run {run_id}: finish_run(ok=True) without a successful 'end' task")
        if not ok and end and end.ok:
            status = {"_task_ok": False, "_success": False,
                      "_exception": "the run failed after its 'end' step"}
            objects, info = self._save(_pickled(status))
            now = time.time()
            self._record("end", end.task_id, end.attempt + 1, {**end.objects, **objects},
                         {**end.info, **info}, ok=False,
                         participant=end.participant, started_at=now, finished_at=now, logs={})
        with self._lock:
            self._finished = True

    def close(self) -> None:
        """Stop the sink's hashing thread (the store can no longer stream blobs)."""
        if self.sink is not None:
            self.sink.close()

    def _live_run(self) -> str:
        if self._run_id is None or self._finished:
            raise RuntimeError("no run in progress: call start_run() first")
        return self._run_id

    def _save(self, blobs: Mapping[str, Artifact]) -> tuple[dict[str, str], dict[str, Any]]:
        """Blobs into the content-addressed store (a blob whose sha1 is there is skipped);
        returns TaskDataStore's per-task index: name -> key, and name -> info."""
        stored = {name: blob for name, blob in blobs.items() if isinstance(blob, StoredBlob)}
        fresh = {name: blob for name, blob in blobs.items() if not isinstance(blob, StoredBlob)}
        saved = self._flow_ds.ca_store.save_blobs(iter(fresh.values()), raw=not self._compress,
                                                  len_hint=len(fresh))
        keys = {name: result.key for name, result in zip(fresh, saved, strict=True)}
        keys.update((name, blob.key) for name, blob in stored.items())
        # "type" is informative only; pickles are opaque
        info = {name: {"size": blob.size if isinstance(blob, StoredBlob) else len(blob),
                       "type": "object", "encoding": ENCODING} for name, blob in blobs.items()}
        return {name: keys[name] for name in blobs}, info

    def _record(self, step: str, task_id: str, attempt: int, objects: dict[str, str],
                info: dict[str, Any], *, participant: str, ok: bool, started_at: float,
                finished_at: float, logs: dict[str, bytes],
                extra: Sequence[tuple[str, str, str]] = ()) -> None:
        """One attempt's files, in Metaflow's order: attempt marker, artifacts index, logs,
        metadata, then ``done()`` (data.json + DONE.lock + the provider's artifact records)."""
        run_id = self._live_run()
        # The provider names metadata files by the millisecond and keeps the first one, so a
        # new attempt of a task must not share the millisecond of the previous attempt's.
        while attempt and round(time.time() * 1000) <= self._last_ms:
            time.sleep(0.0001)
        index = self._flow_ds.get_task_datastore(
            run_id, step, task_id, data_metadata={"objects": objects, "info": info}, mode="r")
        ds: TaskDataStore = self._flow_ds.get_task_datastore(run_id, step, task_id,
                                                             attempt=attempt, mode="w")
        ds.save_metadata({TaskDataStore.METADATA_ATTEMPT_SUFFIX: {"time": started_at}})
        ds.clone(index)
        if logs:
            ds.save_logs(TASK_LOG_SOURCE, logs)
        tags = [f"attempt_id:{attempt}"]
        fields: Iterable[tuple[str, str, str]] = [
            ("attempt", str(attempt), "attempt"),
            ("origin-run-id", "None", "origin-run-id"),
            ("ds-type", self._flow_ds.TYPE, "ds-type"),
            ("ds-root", self.datastore_root, "ds-root"),
            ("participant", participant, "fedloom-participant"),
            ("started-at", repr(started_at), "fedloom-timing"),
            ("finished-at", repr(finished_at), "fedloom-timing"),
            ("attempt_ok", str(ok), "internal_attempt_status"),
        ]
        fields = [*fields, *extra]
        self._meta.register_metadata(run_id, step, task_id,
                                     [MetaDatum(field=f, value=v, type=t, tags=tags)
                                      for f, v, t in fields])
        ds.done()
        self._last_ms = round(time.time() * 1000)


def _fedloom_fields(next_step: str, unpicklable: Sequence[str]) -> list[tuple[str, str, str]]:
    """Where the flow went from this task (a resume goes on from it), and what of its state
    could not be recorded (a resume from it would lack those)."""
    fields = []
    if next_step:
        fields.append(("fedloom-next", next_step, "fedloom-next"))
    if unpicklable:
        fields.append(("fedloom-unpicklable", ", ".join(unpicklable), "fedloom-unpicklable"))
    return fields


def _mflog(text: str, at: float) -> bytes:
    """Text as Metaflow log lines (what ``task.stdout`` parses back; it ends every line with
    a newline). Line ids keep the order of lines that share the timestamp."""
    if not text:
        return b""
    now = datetime.fromtimestamp(at, timezone.utc).replace(tzinfo=None)
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    return b"".join(decorate(TASK_LOG_SOURCE, line, now=now, lineid=b"%010d" % i) + b"\n"
                    for i, line in enumerate(lines))


def _pickled(values: Mapping[str, Any]) -> dict[str, bytes]:
    return {name: pickle.dumps(value, protocol=PROTOCOL) for name, value in values.items()}


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """Metaflow's echo callback, silenced."""
