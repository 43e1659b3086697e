"""Experiment tracking: metrics logged in steps, collected per run, shown and exported.

``fedloom.log_metric(name, value)`` in a step; ``flow.metrics`` after ``run()``;
``to_mlflow(flow)`` to export a run to MLflow; ``fx run metrics FLOW`` for a recorded run.
"""

from fedloom.spec.flowspec import metrics_of
from fedloom.tracking.api import MetricError, log_metric, log_metrics
from fedloom.tracking.mlflow_export import to_mlflow
from fedloom.tracking.records import METRICS_ARTIFACT, MetricRecord, Metrics

__all__ = ["METRICS_ARTIFACT", "MetricError", "MetricRecord", "Metrics", "log_metric",
           "log_metrics", "metrics_of", "to_mlflow"]
