"""``fedloom.log_metric`` / ``log_metrics``: what a step calls to record a number.

The engine calls :func:`begin_task` / :func:`end_task` around each step, saying whose task it
is; a logged value becomes a :class:`MetricRecord` in that task's list at once, after
its name and value were checked here — so a bad one fails at the call, in the step, before
anything travels.
"""

from __future__ import annotations

import numbers
import posixpath
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.errors import FedloomError
from fedloom.tracking.records import MetricRecord

# MLflow's rule for metric names (so every run can be exported): alphanumerics, underscores,
# dashes, periods, spaces and slashes; a path that normalises to itself; at most 250 chars.
_NAME = re.compile(r"^[/\w.\- ]+$")
MAX_NAME_CHARS = 250


class MetricError(FedloomError, ValueError):
    """A metric that cannot be recorded: its name or value, and how to fix it."""


@dataclass(slots=True)
class TaskMetrics:
    """Where the task that runs now puts its metrics."""

    run_id: str
    step: str
    participant: str
    round: int
    records: list[MetricRecord]

    def add(self, name: str, value: float) -> None:
        self.records.append(MetricRecord(self.run_id, self.step, self.participant, self.round,
                                         time.time(), name, value))


# The task that runs now: its TaskMetrics, or the fields to make one from (run_id, step,
# participant, round, records), made only if the step logs something (most tasks log nothing,
# and a tuple is much cheaper to make than a TaskMetrics, once per task of a large round).
_Fields = tuple[str, str, str, int, list[MetricRecord]]
_Current = TaskMetrics | _Fields | None
_current: ContextVar[_Current] = ContextVar("fedloom_task_metrics", default=None)


def begin_task(target: TaskMetrics) -> Token[_Current]:
    """From now on (in this thread or task), metrics logged go to ``target``; pass the token
    to :func:`end_task` when the step is over. (Plain calls, not a context manager: this runs
    once per task, and a generator-based one costs several times more.)"""
    return _current.set(target)


def begin_task_of(run_id: str, step: str, participant: str, round: int,
                  records: list[MetricRecord]) -> Token[_Current]:
    """:func:`begin_task` of ``TaskMetrics(run_id, step, participant, round, records)``."""
    return _current.set((run_id, step, participant, round, records))


def end_task(token: Token[_Current]) -> None:
    _current.reset(token)


def log_metric(name: str, value: Any) -> None:
    """Record ``value`` (a number: int, float, a numpy scalar, a 0-d array or tensor) under
    ``name`` for the step that runs now, with its run, step, participant and round.

    Call it in any step, on any participant and backend. A collaborator's metrics go back to
    the aggregator with its task's result: they leave the site (reviewers see these calls in
    the plan's source). After ``run()`` they are in ``flow.metrics``."""
    checked = check_name(name), as_number(name, value)
    _task().add(*checked)


def log_metrics(values: Mapping[str, Any]) -> None:
    """:func:`log_metric` for each item of ``values`` (all are checked before any is kept)."""
    if not isinstance(values, Mapping):
        raise MetricError(f"log_metrics() takes a dict of name -> number, got "
                          f"{type(values).__name__}; for one value use log_metric(name, value)")
    checked = [(check_name(name), as_number(name, value)) for name, value in values.items()]
    task = _task()
    for name, number in checked:
        task.add(name, number)


def _task() -> TaskMetrics:
    task = _current.get()
    if task is None:
        raise FedloomError("fedloom.log_metric() records a value for the step that runs now; "
                           "call it inside a step (a method marked @aggregator or "
                           "@collaborator) while the flow runs")
    # Made per call from the fields: each one appends to the task's same list of records.
    return TaskMetrics(*task) if isinstance(task, tuple) else task


def check_name(name: Any) -> str:
    """``name`` if MLflow would accept it as a metric name; else a :class:`MetricError`."""
    if not isinstance(name, str):
        raise MetricError(f"a metric name must be a string, got {type(name).__name__} "
                          f"{name!r}")
    if not name or len(name) > MAX_NAME_CHARS or not _NAME.match(name):
        raise MetricError(f"metric name {name!r} is not allowed: use 1 to {MAX_NAME_CHARS} "
                          "letters, digits, underscores, dashes, periods, spaces and slashes "
                          "(the names MLflow accepts), e.g. 'loss' or 'val/accuracy'")
    if posixpath.normpath(name) != name or name.startswith("/"):
        raise MetricError(f"metric name {name!r} is not allowed: as a path it must be plain "
                          "(no leading, trailing or double '/', no '.' or '..' parts), e.g. "
                          "'val/accuracy'")
    return name


def as_number(name: str, value: Any) -> float:
    """``value`` as a float: ints, floats (NaN and infinities included), numpy scalars and
    0-d arrays, 0-d torch tensors; bools, text and anything else get a :class:`MetricError`
    naming the metric."""
    if isinstance(value, (bool, np.bool_)):
        raise MetricError(f"metric {name!r}: {value!r} is a bool, not a number; log "
                          f"int({value!r}) if a 0/1 value is meant")
    if isinstance(value, numbers.Real):  # int, float, numpy numbers, Fraction
        return _float(name, value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return as_number(name, value[()])
    if _is_scalar_tensor(value):
        return as_number(name, value.item())
    shape = getattr(value, "shape", None)
    hint = f" of shape {tuple(shape)}; log one number (e.g. .mean())" if shape else \
        "; log a number (int, float, a numpy scalar or a 0-d tensor)"
    raise MetricError(f"metric {name!r}: cannot record {type(value).__name__} "
                      f"{_short(value)}{hint}")


def _float(name: str, value: numbers.Real) -> float:
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError) as exc:  # an int past float's range
        raise MetricError(f"metric {name!r}: {_short(value)} is not representable as a float "
                          f"({exc})") from None


def _is_scalar_tensor(value: Any) -> bool:
    # torch is optional: recognised by its module, never imported here.
    module = type(value).__module__ or ""
    return module.split(".")[0] == "torch" and callable(getattr(value, "dim", None)) \
        and value.dim() == 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
