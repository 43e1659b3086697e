"""Experiment tracking: metrics logged in steps, collected per run, shown and exported."""

from fedloom.tracking.records import MetricRecord, Metrics

__all__ = ["MetricRecord", "Metrics"]
