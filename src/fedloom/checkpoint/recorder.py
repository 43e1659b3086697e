"""The engine's task recorder for ``checkpoint=True``: every task into the Metaflow store."""

from __future__ import annotations

import logging
from pathlib import Path

from fedloom.checkpoint.report import RunReport, TaskRow
from fedloom.errors import FedloomError
from fedloom.spec.graph import FlowGraph
from fedloom.spec.render import to_mermaid, to_text
from fedloom.tasks import TaskRecord

log = logging.getLogger(__name__)

REPORT_FILE = "fedloom-run.html"


class MetaflowRecorder:
    """Writes each task as the Metaflow client expects it, and the run's HTML report at the end
    (``<datastore root>/<Flow>/<run id>/fedloom-run.html``)."""

    def __init__(self, graph: FlowGraph, run_id: str, root: str | None = None) -> None:
        try:
            from fedloom.checkpoint.metaflow_store import MetaflowStore
        except ImportError as exc:
            raise FedloomError("checkpoint=True needs Metaflow: pip install "
                               f"'fedloom[checkpoint]' ({exc})") from exc
        self._store = MetaflowStore(graph.flow_name, root)
        self._store.start_run(run_id)
        self.report = RunReport(graph.flow_name, run_id, None, graph_text=to_text(graph),
                                graph_mermaid=to_mermaid(graph))
        self._warned: set[str] = set()

    @property
    def report_path(self) -> Path:
        return Path(self._store.datastore_root) / self.report.flow_name / self.report.run_id / \
            REPORT_FILE

    def record(self, task: TaskRecord) -> None:
        self._warn_unpicklable(task)
        task_id = self._store.new_task_id(task.step)
        self._store.write_task(task.step, task_id, task.artifacts, stdout=task.stdout,
                               stderr=task.stderr, participant=task.participant, ok=task.ok,
                               started_at=task.started_at, finished_at=task.finished_at,
                               exception=task.exception)
        self.report.tasks.append(TaskRow(task.step, task_id, task.participant, task.ok,
                                         task.started_at, task.finished_at))

    def finish(self, ok: bool) -> None:
        ended = any(t.step == "end" and t.ok for t in self.report.tasks)
        self._store.finish_run(ok and ended)
        self.report.ok = ok and ended
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(self.report.to_html(), encoding="utf-8")
        log.info("checkpoint: %s/%s recorded; report at %s", self.report.flow_name,
                 self.report.run_id, self.report_path)

    def _warn_unpicklable(self, task: TaskRecord) -> None:
        new = [n for n in task.unpicklable if n not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("checkpoint: attribute(s) %s of step '%s' (%s) cannot be pickled and are "
                        "not recorded; the run goes on", new, task.step, task.participant)
