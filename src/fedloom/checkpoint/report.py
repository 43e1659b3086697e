"""A run as a picture: its flow graph, its metrics and, per step, the tasks with their timings.

Built either from the recorder while a run is written, or afterwards from the store through the
real Metaflow client. Renders as a rich table (terminal), and as a self-contained HTML page
(browser, or inline in a notebook via ``_repr_html_``).
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from fedloom.errors import FedloomError
from fedloom.tracking.charts import AGGREGATOR, AGGREGATOR_STEPS, MetricCharts
from fedloom.tracking.records import METRICS_ARTIFACT, MetricRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRow:
    step: str
    task_id: str
    participant: str
    ok: bool
    started_at: float
    finished_at: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass
class RunReport:
    flow_name: str
    run_id: str
    ok: bool | None  # None: still running (or stopped without a verdict)
    tasks: list[TaskRow] = field(default_factory=list)
    graph_text: str = ""
    graph_mermaid: str = ""
    metrics: list[MetricRecord] = field(default_factory=list)  # charted on the page

    @property
    def steps(self) -> list[str]:
        return list(dict.fromkeys(t.step for t in self.tasks))

    @property
    def status(self) -> str:
        return {True: "successful", False: "failed", None: "unfinished"}[self.ok]

    @property
    def aggregators(self) -> set[str]:
        """Names the aggregator's own metrics go by: who ran start and end (its name)."""
        return {t.participant for t in self.tasks if t.step in AGGREGATOR_STEPS} | {AGGREGATOR}

    def charts(self) -> MetricCharts:
        """The run's metrics, one chart per metric name."""
        return MetricCharts(self.metrics, aggregators=self.aggregators)

    def table(self) -> Table:
        """One row per step: tasks, participants, failures, time spent."""
        table = Table(title=f"{self.flow_name}/{self.run_id} — {self.status}")
        for column in ("step", "tasks", "participants", "failed", "total s", "slowest s"):
            table.add_column(column, justify="left" if column in ("step", "participants")
                             else "right")
        for step in self.steps:
            rows = [t for t in self.tasks if t.step == step]
            who = sorted({t.participant for t in rows})
            shown = ", ".join(who[:4]) + (f" (+{len(who) - 4})" if len(who) > 4 else "")
            failed = sum(not t.ok for t in rows)
            table.add_row(step, str(len(rows)), shown, f"[red]{failed}[/red]" if failed else "0",
                          f"{sum(t.seconds for t in rows):.2f}",
                          f"{max(t.seconds for t in rows):.2f}")
        if self.metrics:
            table.caption = "latest: " + "; ".join(_latest(self.metrics, self.aggregators))
        return table

    def to_html(self) -> str:
        """A self-contained page: summary, graph, metric charts (inline SVG), timeline and
        per-step task tables. No script runs and nothing is fetched when it is opened."""
        start = min((t.started_at for t in self.tasks), default=time.time())
        end = max((t.finished_at for t in self.tasks), default=start)
        span = max(end - start, 1e-6)
        body = [f"<h1>{_e(self.flow_name)} / {_e(self.run_id)}</h1>",
                f"<p class='{self.status}'>Run {self.status}: {len(self.tasks)} tasks in "
                f"{len(self.steps)} steps, {span:.2f} s, started {_when(start)}.</p>"]
        if self.graph_mermaid:
            # Offline on purpose: no third-party script runs on a page holding run data.
            body.append(f"<h2>Flow</h2><pre>{_e(self.graph_text)}</pre><details><summary>"
                        "as Mermaid (paste into any Mermaid renderer)</summary><pre>"
                        f"{_e(self.graph_mermaid)}</pre></details>")
            # The graph as data too: `fx run show` reads it back (the flow's class is not
            # needed, nor importable, where a run is looked at).
            graph = json.dumps({"text": self.graph_text, "mermaid": self.graph_mermaid})
            body.append(f"<script type='application/json' id='{_GRAPH_ID}'>"
                        f"{graph.replace('<', _LT)}</script>")
        if self.metrics:
            body.append(f"<h2>Metrics</h2><section id='metrics'>{self.charts().html()}</section>")
        body.append("<h2>Timeline</h2><div class='timeline'>")
        for t in self.tasks:
            left, width = 100 * (t.started_at - start) / span, 100 * t.seconds / span
            body.append(f"<div class='row'><span class='label'>{_e(t.step)} @ "
                        f"{_e(t.participant)}</span><span class='track'><span class='bar "
                        f"{'ok' if t.ok else 'bad'}' style='left:{left:.2f}%;width:"
                        f"{max(width, 0.3):.2f}%' title='{t.seconds:.3f} s'></span></span></div>")
        body.append("</div>")
        for step in self.steps:
            body.append(f"<h2>{_e(step)}</h2><table><tr><th>task</th><th>participant</th>"
                        "<th>status</th><th>started</th><th>seconds</th></tr>")
            for t in (t for t in self.tasks if t.step == step):
                body.append(f"<tr><td>{_e(t.task_id)}</td><td>{_e(t.participant)}</td>"
                            f"<td class='{'ok' if t.ok else 'bad'}'>{'ok' if t.ok else 'failed'}"
                            f"</td><td>{_when(t.started_at)}</td><td>{t.seconds:.3f}</td></tr>")
            body.append("</table>")
        return _PAGE.format(title=_e(f"{self.flow_name}/{self.run_id}"), body="\n".join(body))

    def _repr_html_(self) -> str:
        return self.to_html()


def report_from_metaflow(flow_name: str, run_id: str | None = None) -> RunReport:
    """Read a recorded run back through the Metaflow client (the latest run by default)."""
    from metaflow.client.core import Flow, Run, namespace

    namespace(None)
    run = Run(f"{flow_name}/{run_id}") if run_id else Flow(flow_name).latest_run
    if run is None:
        raise FedloomError(f"no run of {flow_name} is recorded here; run it with "
                           f"{flow_name}(checkpoint=True) first")
    tasks = []
    metrics: list[MetricRecord] = []
    roots: set[str] = set()
    for step in run:
        for task in step:
            metrics += _task_metrics(task)
            # Every attempt's metadata: a retried task ran from its first start to its last end.
            meta: dict[str, list[str]] = {}
            for datum in task.metadata:
                meta.setdefault(datum.name, []).append(datum.value)
            # When the task ran, as recorded where it ran; Metaflow's own created_at and
            # finished_at are when the record was written (all within a second, for a run
            # written at its end, as a federated run fetched from the director is).
            recorded = _timestamp(task.created_at)
            started = min(map(float, meta.get("started-at", ())), default=recorded)
            finished = max(map(float, meta.get("finished-at", ())), default=started)
            tasks.append(TaskRow(step.id, task.id, (meta.get("participant") or ["?"])[-1],
                                 bool(task.successful), started, finished))
            roots.update(meta.get("ds-root", ()))
    tasks.sort(key=lambda t: (t.started_at, int(t.task_id) if t.task_id.isdigit() else 0))
    # A failed run never reaches 'end', so Metaflow calls it unfinished: a failed task says more.
    ok = False if any(not t.ok for t in tasks) else (run.successful if run.finished else None)
    text, mermaid = _recorded_graph([Path(r) / flow_name / run.id for r in sorted(roots)])
    return RunReport(flow_name, run.id, ok, tasks, graph_text=text, graph_mermaid=mermaid,
                     metrics=sorted(dict.fromkeys(metrics), key=lambda r: r.time))


def _task_metrics(task: Any) -> list[MetricRecord]:
    """What a task logged, from its artifact; none for tasks recorded before tracking was."""
    try:
        artifact = task[METRICS_ARTIFACT]  # one metadata lookup; the data loads only if found
    except KeyError:
        return []
    records = []
    for item in artifact.data or ():
        try:
            records.append(item if isinstance(item, MetricRecord) else
                           MetricRecord.from_dict(item))
        except (KeyError, TypeError, ValueError) as exc:  # a page with the rest beats none
            log.warning("run report: a metric of task %s is unreadable (%r): %s",
                        task.pathspec, item, exc)
    return records


def _latest(records: list[MetricRecord], aggregators: set[str]) -> list[str]:
    """Per metric, the aggregator's last value, else the mean of everyone's at the last round."""
    lines = []
    for name in dict.fromkeys(r.name for r in records):
        ours = [r for r in records if r.name == name and r.participant in aggregators]
        if ours:
            last = max(ours, key=lambda r: (r.round, r.time))
            lines.append(f"{name} {last.value:.4g} ({last.participant}, round {last.round})")
            continue
        theirs = [r for r in records if r.name == name]
        final = max(r.round for r in theirs)
        values = [r.value for r in theirs if r.round == final]
        lines.append(f"{name} {sum(values) / len(values):.4g} (mean of {len(values)}, "
                     f"round {final})")
    return lines


def _recorded_graph(run_dirs: list[Path]) -> tuple[str, str]:
    """The flow graph (text, Mermaid) from the run's own page; empty if it has none."""
    from fedloom.checkpoint.recorder import REPORT_FILE

    for run_dir in run_dirs:
        try:
            page = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
        except OSError:
            continue
        found = re.search(rf"<script type='application/json' id='{_GRAPH_ID}'>(.*?)</script>",
                          page, re.DOTALL)
        if found:
            try:
                graph = json.loads(found.group(1))
                return str(graph["text"]), str(graph["mermaid"])
            except (ValueError, KeyError, TypeError):
                continue
    return "", ""


_GRAPH_ID = "fedloom-graph"
_LT = "\\u003c"  # "<" in JSON that sits in a <script>: "</script>" cannot end it early


def _timestamp(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2937; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #d1d5db; padding: 2px 8px; font-size: 13px; text-align: left; }}
.ok {{ color: #15803d; }} .bad {{ color: #b91c1c; }}
.successful {{ color: #15803d; }} .failed {{ color: #b91c1c; }}
.timeline .row {{ display: flex; align-items: center; font-size: 12px; height: 16px; }}
.timeline .label {{ width: 24em; overflow: hidden; white-space: nowrap; }}
.timeline .track {{ position: relative; flex: 1; height: 10px; background: #f3f4f6; }}
.timeline .bar {{ position: absolute; top: 0; height: 10px; }}
.timeline .bar.ok {{ background: #60a5fa; }} .timeline .bar.bad {{ background: #ef4444; }}
</style>
</head>
<body>
{body}
</body></html>
"""
