"""Conversions between fedloom's objects and the protobuf messages, in one place."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Sequence

from fedloom.checkpoint.artifacts import Artifact
from fedloom.errors import FedloomError, FlowRunError, StepFailed, TransitionError
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.tasks import TaskRecord
from fedloom.tracking.api import MetricError, check_name
from fedloom.tracking.records import MetricRecord

log = logging.getLogger(__name__)

_RUN_ERRORS: dict[str, type[FlowRunError]] = {
    "FlowRunError": FlowRunError, "TransitionError": TransitionError}


# A task's stdout and stderr each travel up to this many characters (its first and last half):
# output of any size reaches the user, and no message outgrows what the director accepts.
OUTPUT_KEPT_CHARS = 1 << 20


def kept_output(text: str, limit: int = OUTPUT_KEPT_CHARS) -> str:
    """``text``, or its beginning and end with a notice of what was cut between them."""
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return (f"{text[:half]}\n[fedloom: {cut:,} characters of output cut here; a federated "
            f"task keeps the first and last {half:,} of its stdout and of its stderr]\n"
            f"{text[-half:]}")


def task_info(task: TaskRecord) -> pb.TaskInfo:
    return pb.TaskInfo(step=task.step, participant=task.participant,
                       stdout=kept_output(task.stdout), stderr=kept_output(task.stderr),
                       ok=task.ok, started_at=task.started_at,
                       finished_at=task.finished_at, exception=task.exception or "",
                       unpicklable=task.unpicklable, attempt=task.attempt,
                       metrics=[pb.Metric(name=m.name, value=m.value, round=m.round, time=m.time)
                                for m in task.metrics])


def outputs_of(event: pb.Event) -> Sequence[pb.TaskInfo]:
    """The tasks whose output ``event`` carries: one (``output``), a batch (``outputs``), or
    none."""
    kind = event.WhichOneof("kind")
    if kind == "outputs":
        return event.outputs.tasks
    return [event.output] if kind == "output" else []


def task_record(info: pb.TaskInfo, artifacts: dict[str, Artifact] | None = None,
                run_id: str = "") -> TaskRecord:
    return TaskRecord(info.step, info.participant, info.started_at, info.finished_at,
                      info.stdout, info.stderr, info.ok, dict(artifacts or {}),
                      list(info.unpicklable), info.exception or None, info.attempt,
                      metrics=metric_records(info, run_id))


def metric_records(info: pb.TaskInfo, run_id: str) -> list[MetricRecord]:
    """The metrics a task's message carries, as records of ``run_id``. They come from another
    process (a site): a name that ``log_metric`` would have refused is left out, logged."""
    return [MetricRecord(run_id, info.step, info.participant, m.round, m.time, m.name, m.value)
            for m in _named_properly(info.metrics, info)]


def _named_properly(metrics: Iterable[pb.Metric], info: pb.TaskInfo) -> Iterable[pb.Metric]:
    for metric in metrics:
        try:
            check_name(metric.name)
        except MetricError as err:
            log.warning("a metric of step '%s' on '%s' is left out: %s", info.step,
                        info.participant, err)
            continue
        yield metric


def failure(error: BaseException) -> pb.Failure:
    """What the user needs to know about ``error``, as a message."""
    if isinstance(error, StepFailed):
        return pb.Failure(kind="StepFailed", message=str(error), step=error.step or "",
                          participant=error.participant or "", exc_type=error.exc_type,
                          exc_message=error.exc_message, traceback=error.traceback_text)
    if isinstance(error, FlowRunError):
        kind = type(error).__name__ if type(error).__name__ in _RUN_ERRORS else "FlowRunError"
        return pb.Failure(kind=kind, message=_plain(error), step=error.step or "",
                          participant=error.participant or "")
    if isinstance(error, FedloomError):
        return pb.Failure(kind="FedloomError", message=str(error))
    return pb.Failure(kind="FlowRunError", message=f"{type(error).__name__}: {error}",
                      traceback="".join(traceback.format_exception(error)))


def error(message: pb.Failure) -> FedloomError:
    """The exception a :func:`failure` message stands for, as the user would have seen it."""
    if message.kind == "StepFailed":
        return StepFailed(message.step, message.participant, message.exc_type,
                          message.exc_message, message.traceback)
    if message.kind in _RUN_ERRORS:
        return _RUN_ERRORS[message.kind](message.message, step=message.step or None,
                                         participant=message.participant or None)
    return FedloomError(message.message)


def _plain(error: FlowRunError) -> str:
    """The message without the ``[step ..., participant ...]`` prefix (re-added on rebuild)."""
    text = str(error)
    return text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text
