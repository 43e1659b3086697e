"""The engine's task recorder for ``checkpoint=True``: every task into the Metaflow store."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from fedloom.checkpoint.artifacts import register_sink, unregister_sink
from fedloom.checkpoint.report import RunReport, TaskRow
from fedloom.errors import FedloomError
from fedloom.spec.graph import FlowGraph
from fedloom.spec.render import to_mermaid, to_text
from fedloom.tasks import TaskRecord

log = logging.getLogger(__name__)

REPORT_FILE = "fedloom-run.html"
RESUMED_TAG = "fedloom-resumed-from:"  # a run tag: the run this one resumed
MAX_QUEUED = 64  # tasks waiting to be written (each holds its pickled state in memory)


class MetaflowRecorder:
    """Writes each task as the Metaflow client expects it, and the run's HTML report at the end
    (``<datastore root>/<Flow>/<run id>/fedloom-run.html``)."""

    def __init__(self, graph: FlowGraph, run_id: str, root: str | None = None,
                 resumed_from: str = "") -> None:
        try:
            from fedloom.checkpoint.metaflow_store import MetaflowStore
        except ImportError as exc:
            raise FedloomError("checkpoint=True needs Metaflow: pip install "
                               f"'fedloom[checkpoint]' ({exc})") from exc
        self._store = MetaflowStore(graph.flow_name, root)
        self._store.start_run(run_id, [f"{RESUMED_TAG}{resumed_from}"] if resumed_from else [])
        if self._store.sink is not None:  # tasks run in this process pickle into the store
            register_sink(run_id, self._store.sink)
        self.report = RunReport(graph.flow_name, run_id, None, graph_text=to_text(graph),
                                graph_mermaid=to_mermaid(graph))
        self._warned: set[str] = set()
        # One writer thread, in the order tasks finished: ids are minted in that order, and a
        # retry's attempts follow each other. Large values are already in the store (streamed
        # where the task ran); what is left is many small files, where more threads only
        # fight over the GIL (measured: one writer is fastest).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedloom-ckpt")
        self._slots = threading.BoundedSemaphore(MAX_QUEUED)
        self._error: BaseException | None = None
        self._last_ids: dict[tuple[str, str], str] = {}  # (step, participant) -> latest task id

    def _raise_write_error(self) -> None:
        error = self._error
        if error is not None:
            raise FedloomError(f"checkpoint: writing a task to {self._store.datastore_root} "
                               f"failed: {error}") from error

    @property
    def report_path(self) -> Path:
        return Path(self._store.datastore_root) / self.report.flow_name / self.report.run_id / \
            REPORT_FILE

    def record(self, task: TaskRecord) -> None:
        """Queue ``task`` for writing; the writer thread overlaps the disk I/O with the flow's
        own work. A write that failed is raised here or at :meth:`finish`."""
        self._raise_write_error()
        self._warn_unpicklable(task)
        self._slots.acquire()  # bounded: the writer pushes back instead of queueing every task
        self._writer.submit(self._write, task).add_done_callback(self._written)

    def _written(self, future: Future[None]) -> None:
        self._slots.release()
        error = future.exception()
        if error is not None and self._error is None:
            self._error = error

    def _write(self, task: TaskRecord) -> None:
        key = (task.step, task.participant)
        if task.attempt and key in self._last_ids:  # a retry: the same task, a new attempt
            task_id = self._last_ids[key]
        else:
            task_id = self._store.new_task_id(task.step)
        self._last_ids[key] = task_id
        # Every recorded task has the artifact fedloom_metrics, an empty list when it logged
        # nothing: readers need no special case for tasks without metrics.
        self._store.write_task(task.step, task_id, task.artifacts, stdout=task.stdout,
                               stderr=task.stderr, participant=task.participant, ok=task.ok,
                               started_at=task.started_at, finished_at=task.finished_at,
                               attempt=task.attempt, exception=task.exception,
                               next_step=task.next_step, unpicklable=task.unpicklable,
                               metrics=[m.to_dict() for m in task.metrics])
        self.report.tasks.append(TaskRow(task.step, task_id, task.participant, task.ok,
                                         task.started_at, task.finished_at))
        self.report.metrics.extend(task.metrics)

    def finish(self, ok: bool) -> None:
        """Wait for the writers, close the run and write its report — all of it even when a
        write failed (raised afterwards), so the store never keeps a half-open run."""
        unregister_sink(self.report.run_id)
        self._writer.shutdown(wait=True)
        self._store.close()
        ended = any(t.step == "end" and t.ok for t in self.report.tasks)
        self.report.ok = ok and ended and self._error is None
        try:
            self._store.finish_run(self.report.ok)
        finally:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            self.report_path.write_text(self.report.to_html(), encoding="utf-8")
            log.info("checkpoint: %s/%s recorded; report at %s", self.report.flow_name,
                     self.report.run_id, self.report_path)
        self._raise_write_error()

    def _warn_unpicklable(self, task: TaskRecord) -> None:
        new = [n for n in task.unpicklable if n not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("checkpoint: attribute(s) %s of step '%s' (%s) cannot be pickled and are "
                        "not recorded; the run goes on", new, task.step, task.participant)
