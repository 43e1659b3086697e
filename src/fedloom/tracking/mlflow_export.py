"""A run's metrics and parameters into MLflow (``pip install 'fedloom[mlflow]'``).

One MLflow run per fedloom run, holding the parameters, with one child run per participant
(named by it) holding that participant's metrics, with MLflow's ``step`` = the metric's round.
Child runs rather than ``participant/metric`` names: participant names are free text (an envoy
may be ``intel@lab_5``), which MLflow refuses in metric names, and MLflow's UI compares child
runs on one chart, a line per participant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from fedloom.errors import FedloomError
from fedloom.spec.flowspec import FLSpec, metrics_of
from fedloom.tracking.api import MetricError, check_name
from fedloom.tracking.records import MetricRecord, Metrics

BATCH = 1000  # MLflow's limit of metrics per log_batch call
TAG_RUN = "fedloom.run_id"
TAG_FLOW = "fedloom.flow"
TAG_PARTICIPANT = "fedloom.participant"


def to_mlflow(source: FLSpec | Metrics, tracking_uri: str | None = None,
              experiment: str | None = None) -> str:
    """Write a run's metrics (``flow.metrics`` after ``run()``, or a :class:`Metrics`) and
    parameters to MLflow; returns the id of the MLflow run made for it (each call makes new
    runs). ``tracking_uri``: where (default: ``MLFLOW_TRACKING_URI``, else MLflow's own
    default store); ``experiment``: the MLflow experiment's name (default: the flow's name),
    made when missing."""
    metrics = metrics_of(source) if isinstance(source, FLSpec) else source
    if not isinstance(metrics, Metrics):
        raise FedloomError(f"to_mlflow() takes a flow after run() or its Metrics, got "
                           f"{type(source).__name__}")
    if not metrics:
        raise FedloomError("there are no metrics to export: run the flow first, with "
                           "fedloom.log_metric(...) calls in its steps")
    client, entities = _client(tracking_uri)
    flow = metrics.flow or "fedloom"
    experiment_id = _experiment(client, experiment or flow)
    tags = {TAG_RUN: metrics.run_id, TAG_FLOW: flow}
    parent = client.create_run(experiment_id, run_name=f"{flow} {metrics.run_id}", tags=tags)
    parent_id: str = parent.info.run_id
    try:
        params = [entities.Param(name, str(value)) for name, value in metrics.params.items()
                  if _valid_name(name)]
        for part in _batches(params):
            client.log_batch(parent_id, params=part)
        for participant, records in _by_participant(metrics).items():
            _child(client, entities, experiment_id, parent_id, participant, records, tags)
    except BaseException:
        client.set_terminated(parent_id, status="FAILED")
        raise
    client.set_terminated(parent_id)
    return parent_id


def _child(client: Any, entities: Any, experiment_id: str, parent_id: str, participant: str,
           records: Sequence[MetricRecord], tags: dict[str, str]) -> None:
    child = client.create_run(experiment_id, run_name=participant, tags={
        **tags, TAG_PARTICIPANT: participant, "mlflow.parentRunId": parent_id})
    values = [entities.Metric(r.name, r.value, int(r.time * 1000), r.round) for r in records]
    for part in _batches(values):
        client.log_batch(child.info.run_id, metrics=part)
    client.set_terminated(child.info.run_id)


def _client(tracking_uri: str | None) -> tuple[Any, Any]:
    try:
        import mlflow.entities as entities
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise FedloomError(f"exporting to MLflow needs it: pip install 'fedloom[mlflow]' "
                           f"({exc})") from None
    return MlflowClient(tracking_uri=tracking_uri), entities


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name))


def _by_participant(metrics: Metrics) -> dict[str, list[MetricRecord]]:
    groups: dict[str, list[MetricRecord]] = defaultdict(list)
    for record in metrics:
        groups[record.participant].append(record)
    return groups


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except MetricError:
        return False
    return True


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), BATCH):
        yield items[start:start + BATCH]
