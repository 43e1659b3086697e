"""Conversions between fedloom's objects and the protobuf messages, in one place."""

from __future__ import annotations

import traceback

from fedloom.checkpoint.artifacts import Artifact
from fedloom.errors import FedloomError, FlowRunError, StepFailed, TransitionError
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.tasks import TaskRecord

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
                       unpicklable=task.unpicklable, attempt=task.attempt)


def task_record(info: pb.TaskInfo, artifacts: dict[str, Artifact] | None = None) -> TaskRecord:
    return TaskRecord(info.step, info.participant, info.started_at, info.finished_at,
                      info.stdout, info.stderr, info.ok, dict(artifacts or {}),
                      list(info.unpicklable), info.exception or None, info.attempt)


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
