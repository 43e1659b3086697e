# mypy: allow-untyped-calls
# (Metaflow's client is mostly unannotated.)
"""A recorded run's metrics, read back with the real Metaflow client (``checkpoint=True``).

Each recorded task holds what it logged as the artifact ``fedloom_metrics`` (a list of
:meth:`MetricRecord.to_dict` dicts); a task of the run keeps its latest attempt's.
"""

from __future__ import annotations

from typing import Any

from fedloom.errors import FedloomError
from fedloom.tracking.records import METRICS_ARTIFACT, MetricRecord, Metrics, Param, run_params

PARAM_BYTES = 8192  # start-task artifacts larger than this are no parameters: not loaded


def recorded_metrics(flow_name: str, run_id: str | None = None) -> Metrics:
    """The metrics of run ``run_id`` of ``flow_name`` (default: its latest run) from the store
    the Metaflow client finds from here, in the order they were logged; its parameters are
    the numbers and text the run's ``start`` task recorded."""
    from metaflow.client.core import Flow, Run, namespace

    namespace(None)
    run = Run(f"{flow_name}/{run_id}") if run_id else Flow(flow_name).latest_run
    if run is None:
        raise FedloomError(f"no run of {flow_name} is recorded here; run it with "
                           f"{flow_name}(checkpoint=True) first")
    records: list[MetricRecord] = []
    params: dict[str, Param] = {}
    for step in run:
        for task in step:
            if METRICS_ARTIFACT in task:
                records.extend(MetricRecord.from_dict(row)
                               for row in task[METRICS_ARTIFACT].data)
            if step.id == "start":
                params = run_params(_small_artifacts(task))
    records.sort(key=lambda r: r.time)
    return Metrics(records, flow=flow_name, params=params)


def _small_artifacts(task: Any) -> dict[str, Any]:
    return {artifact.id: artifact.data for artifact in task
            if artifact.id != METRICS_ARTIFACT and artifact.size <= PARAM_BYTES}
