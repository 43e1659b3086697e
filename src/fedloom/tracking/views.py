"""A run's metrics for people (a rich table: one row per metric, step and participant) and
for scripts (JSON, the schema in docs/operating.md)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from fedloom.tracking.records import MetricRecord, Metrics


def metrics_table(metrics: Metrics, title: str = "") -> Table:
    """Per metric, step and participant: how many values, the rounds, first, last, min, max."""
    table = Table(title=title or None, title_justify="left")
    for column in ("metric", "step", "participant", "values", "rounds", "first", "last",
                   "min", "max"):
        table.add_column(column, justify="left" if column in ("metric", "step", "participant")
                         else "right")
    series: dict[tuple[str, str, str], list[MetricRecord]] = {}
    for record in metrics:
        series.setdefault((record.name, record.step, record.participant), []).append(record)
    for (name, step, participant), records in sorted(series.items()):
        values = [r.value for r in records]
        rounds = sorted({r.round for r in records})
        shown = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
        table.add_row(name, step, participant, str(len(values)), shown, _number(values[0]),
                      _number(values[-1]), _number(min(values)), _number(max(values)))
    return table


def metrics_json(metrics: Metrics) -> dict[str, Any]:
    """``{"flow", "run_id", "params", "metrics": [record, ...]}``; a value that is not finite
    is the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (JSON has no such numbers)."""
    return {"flow": metrics.flow, "run_id": metrics.run_id, "params": metrics.params,
            "metrics": [{**r.to_dict(), "value": json_number(r.value)} for r in metrics]}


def json_number(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _number(value: float) -> str:
    return f"{value:.6g}"
