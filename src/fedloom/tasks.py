"""One task: one step run by one participant — executed, optionally captured and recorded.

Every backend runs steps through :func:`run_task`, so private-attribute rules, output capture
and checkpoint records are the same wherever a task runs.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from fedloom.capture import capture_output
from fedloom.checkpoint.artifacts import Artifact
from fedloom.errors import FlowRunError, StepFailed, TransitionError
from fedloom.spec.flowspec import FLSpec, StepContext, StepRuntimeView
from fedloom.spec.graph import FlowGraph
from fedloom.state import (
    Given,
    LeakCheck,
    State,
    Transition,
    check_no_collision,
    transition_to_json,
)
from fedloom.tracking.api import begin_task_of, end_task
from fedloom.tracking.records import METRICS_ARTIFACT, MetricRecord

log = logging.getLogger(__name__)

_STEP_KEY = "_fl_step"


@dataclass(frozen=True)
class FlowJob:
    """Everything a participant needs to run steps of one run of a flow."""

    flow_cls: type[FLSpec]
    graph: FlowGraph
    collaborators: tuple[str, ...]
    run_id: str
    record_tasks: bool = False  # checkpointing: each task's public state and output is kept

    @cached_property
    def runtime_view(self) -> StepRuntimeView:
        """What ``self.runtime`` is inside every step of this run."""
        return StepRuntimeView(self.collaborators)

    @cached_property
    def step_names(self) -> frozenset[str]:
        return frozenset(self.graph.steps)

    @cached_property
    def retries(self) -> dict[str, int]:
        """Step name -> how many times it runs again when it raises (``retries=``)."""
        return {name: node.placement.retries for name, node in self.graph.steps.items()
                if node.placement is not None and node.placement.retries}

    @cached_property
    def roles(self) -> dict[str, str | None]:
        """Step name -> its role ("aggregator", "collaborator"; None if unplaced)."""
        return {name: node.role for name, node in self.graph.steps.items()}

    @cached_property
    def public_texts(self) -> frozenset[str]:
        """Text that is public whoever holds it: the participants' names."""
        return frozenset(self.collaborators)

    def instance(self, state: State) -> FLSpec:
        """An instance of the flow class whose attributes *are* ``state`` (no copy)."""
        obj = self.flow_cls.__new__(self.flow_cls)
        obj.__dict__ = state
        return obj

    def instances(self, states: list[State]) -> list[FLSpec]:
        """:meth:`instance` of each state (a join's inputs: once per collaborator)."""
        cls = self.flow_cls
        new = cls.__new__
        objs = [new(cls) for _ in states]
        for obj, state in zip(objs, states, strict=True):
            obj.__dict__ = state
        return objs


def execute_step(job: FlowJob, step: str, state: State, private: dict[str, Any],
                 participant: str, inputs: list[Any] | None = None,
                 given: Given | None = None, leaks: LeakCheck | None = None,
                 metrics: list[MetricRecord] | None = None,
                 round: int = 0) -> tuple[State, Transition]:
    """Run one step on ``state`` (owned by the caller, modified in place) with ``private``
    attached; returns the public state after the step and where it goes next. ``given``: what
    is known of ``state`` (that it reaches no private object of ``participant``), so that the
    leak check after the step looks only at what the step changed; ``None`` checks it all.
    ``leaks``: the participant's own leak check, kept between its tasks. ``metrics``: where
    the step's ``log_metric`` calls go, as this participant's ``round`` of ``step``."""
    if not state.keys().isdisjoint(private):
        check_no_collision(private, state, step=step, participant=participant)
    if leaks is None:
        leaks = LeakCheck(participant, job.public_texts)
    leaks.before(private, given)  # before the private attributes join the state
    ctx = StepContext(step, participant, job.runtime_view, job.step_names)
    state.update(private)
    state[_STEP_KEY] = ctx
    cls = job.flow_cls
    obj = cls.__new__(cls)  # as job.instance(state) makes it, without the call
    obj.__dict__ = state
    method = getattr(cls, step)
    logging_to = begin_task_of(job.run_id, step, participant, round,
                               [] if metrics is None else metrics)
    try:
        if inputs is None:
            method(obj)
        else:
            method(obj, inputs)
    except FlowRunError:
        raise
    except Exception as exc:
        # Drop the engine's own frame: the traceback starts in the user's step.
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next
                                                if exc.__traceback__ else None))
        raise StepFailed(step, participant, type(exc).__name__, str(exc), tb) from exc
    finally:
        end_task(logging_to)
        state.pop(_STEP_KEY, None)
        _take_back_private(private, state)
    leaks.after(private, state, step)
    if METRICS_ARTIFACT in state:
        raise FlowRunError(f"the attribute name '{METRICS_ARTIFACT}' is reserved (a recorded "
                           "task keeps its logged metrics under it); rename the attribute",
                           step=step, participant=participant)
    if ctx.transition is None and step != "end":
        raise TransitionError("the step finished without calling self.next(); end it with "
                              "self.next(self.<next step>)", step=step, participant=participant)
    return state, ctx.transition or Transition("end")


def _take_back_private(private: dict[str, Any], state: State) -> None:
    # The step may have replaced a private attribute (its latest value persists) or deleted it.
    for name in list(private):
        if name in state:
            private[name] = state.pop(name)
        else:
            del private[name]


@dataclass
class TaskRecord:
    """What one task left behind: its output, and (when checkpointing) its pickled state."""

    step: str
    participant: str
    started_at: float
    finished_at: float
    stdout: str = ""
    stderr: str = ""
    ok: bool = True
    # pickled public state: bytes, or where it was streamed to when recorded in this process
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    unpicklable: list[str] = field(default_factory=list)
    exception: str | None = None
    attempt: int = 0  # 0 for the first try of a step; retries count up
    next_step: str = ""  # the transition the step chose, as JSON (where a resume goes on)
    metrics: list[MetricRecord] = field(default_factory=list)  # what the task logged


class TaskRecorder(Protocol):
    """Keeps task records (the checkpoint store implements it)."""

    def record(self, task: TaskRecord) -> None: ...

    def finish(self, ok: bool) -> None: ...


def run_task(job: FlowJob, step: str, state: State, private: dict[str, Any], participant: str,
             inputs: list[Any] | None = None, *, live: bool = True, given: Given | None = None,
             leaks: LeakCheck | None = None, metrics: list[MetricRecord] | None = None,
             round: int = 0) -> tuple[State, Transition, TaskRecord | None]:
    """:func:`execute_step`, plus a :class:`TaskRecord` when output must be captured (checkpoint
    on, or ``live=False`` where the console is far away). A failing task's record is attached
    to the error (``err.tasks``) so it is kept too. The task's metrics are appended to
    ``metrics`` and, when there is a record, kept on it too."""
    if live and not job.record_tasks:
        return (*execute_step(job, step, state, private, participant, inputs, given=given,
                              leaks=leaks, metrics=metrics, round=round), None)
    logged: list[MetricRecord] = []
    started = time.time()
    try:
        with capture_output(passthrough=live) as out:
            state, transition = execute_step(job, step, state, private, participant, inputs,
                                             given=given, leaks=leaks, metrics=logged,
                                             round=round)
    except FlowRunError as err:
        trace = getattr(err, "traceback_text", "") or str(err)
        err.tasks.append(TaskRecord(step, participant, started, time.time(), out.stdout,
                                    out.stderr + trace, ok=False, exception=str(err),
                                    metrics=logged))
        raise
    finally:  # as execute_step does: what was logged before a failure is kept too
        if metrics is not None:
            metrics.extend(logged)
    record = TaskRecord(step, participant, started, time.time(), out.stdout, out.stderr,
                        next_step=transition_to_json(transition), metrics=logged)
    if job.record_tasks:
        from fedloom.checkpoint.artifacts import serialize_artifacts, sink_for

        record.artifacts, record.unpicklable = serialize_artifacts(state, sink_for(job.run_id))
    return state, transition, record
