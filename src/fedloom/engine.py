"""The one engine that walks a flow.

``FlowEngine`` runs the aggregator side: it executes aggregator steps, and at each fan-out hands
the collaborator chains to a :class:`Backend`. ``CollaboratorSite`` is the collaborator side: it
runs one collaborator's chain of steps until the chain reaches an aggregator step (the join).
Backends only decide *where* a site lives (this process, a Ray actor, an envoy) and how state
travels to it; every rule about transitions and private attributes is applied here, once.
"""

from __future__ import annotations

import gc
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from fedloom.capture import TaskOutput, capture_output
from fedloom.errors import FlowRunError, StepFailed, TransitionError
from fedloom.spec.flowspec import FLSpec, StepContext, StepRuntimeView
from fedloom.spec.graph import FlowGraph
from fedloom.state import State, Transition, check_no_collision, check_no_leak, select

_STEP_KEY = "_fl_step"


@dataclass(frozen=True)
class FlowJob:
    """Everything a participant needs to run steps of one run of a flow."""

    flow_cls: type[FLSpec]
    graph: FlowGraph
    collaborators: tuple[str, ...]
    run_id: str

    @cached_property
    def runtime_view(self) -> StepRuntimeView:
        """What ``self.runtime`` is inside every step of this run."""
        return StepRuntimeView(self.collaborators)

    @cached_property
    def step_names(self) -> frozenset[str]:
        return frozenset(self.graph.steps)

    def instance(self, state: State) -> FLSpec:
        """An instance of the flow class whose attributes *are* ``state`` (no copy)."""
        obj = self.flow_cls.__new__(self.flow_cls)
        obj.__dict__ = state
        return obj


@dataclass
class ChainResult:
    """What one collaborator's chain sends to the join (and, when captured, what it printed)."""

    collaborator: str
    join_step: str
    state: State
    outputs: list[TaskOutput] = field(default_factory=list)


class Backend(Protocol):
    """Where collaborator chains run. Implementations: serial (here), Ray, federated."""

    def open(self, job: FlowJob) -> None:
        """Prepare for a run (create sites and their private attributes on first use)."""

    def run_chains(self, step: str, names: Sequence[str], sent: State) -> list[ChainResult]:
        """Run ``step`` and what follows on each named collaborator, each on its own copy of
        ``sent``; return their results in ``names`` order."""

    def close(self) -> None:
        """Release what ``open`` acquired for the run."""


def execute_step(job: FlowJob, step: str, state: State, private: dict[str, Any],
                 participant: str, inputs: list[Any] | None = None) -> tuple[State, Transition]:
    """Run one step on ``state`` (owned by the caller, modified in place) with ``private``
    attached; returns the public state after the step and where it goes next."""
    check_no_collision(private, state, step=step, participant=participant)
    ctx = StepContext(step, participant, job.runtime_view, job.step_names)
    state.update(private)
    state[_STEP_KEY] = ctx
    obj = job.instance(state)
    method = getattr(job.flow_cls, step)
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
        state.pop(_STEP_KEY, None)
        _take_back_private(private, state)
    check_no_leak(private, state, step=step, participant=participant)
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


class CollaboratorSite:
    """One collaborator's long-lived side: its private attributes, and the public state it keeps
    between fan-outs (what it set and did not send back)."""

    def __init__(self, name: str, private: dict[str, Any], *, capture: bool = False) -> None:
        self.name = name
        self.private = private
        self.capture = capture  # record each task's output instead of printing it
        self.kept: State = {}

    def start_run(self) -> None:
        self.kept = {}

    def run_chain(self, job: FlowJob, step: str, received: State) -> ChainResult:
        """Run ``step`` and the collaborator steps after it on ``received`` (this site's own
        copy) until a transition leads to an aggregator step."""
        state = self.kept
        self.kept = {}
        state.update(received)
        state["input"] = self.name
        outputs: list[TaskOutput] = []
        while True:
            state, transition = self._execute(job, step, state, outputs)
            target = job.graph.steps.get(transition.step)
            if target is None or transition.foreach is not None:
                raise TransitionError(
                    f"a collaborator step cannot go to {transition.describe()}; go to an "
                    "aggregator join or another collaborator step", step=step,
                    participant=self.name)
            sent = select(state, transition, step=step, participant=self.name)
            if target.role == "aggregator":
                self.kept = {k: v for k, v in state.items() if k not in sent}
                return ChainResult(self.name, transition.step, sent, outputs)
            state, step = sent, transition.step

    def _execute(self, job: FlowJob, step: str, state: State,
                 outputs: list[TaskOutput]) -> tuple[State, Transition]:
        if not self.capture:
            return execute_step(job, step, state, self.private, self.name)
        try:
            with capture_output(step, self.name, passthrough=False) as output:
                return execute_step(job, step, state, self.private, self.name)
        except FlowRunError as err:
            err.outputs = [*outputs, output]  # shown to the user with the error
            raise
        finally:
            outputs.append(output)


class FlowEngine:
    """Walks a flow from ``start`` to ``end`` on the aggregator, fanning out through a backend."""

    def __init__(self, job: FlowJob, aggregator_name: str, aggregator_private: dict[str, Any],
                 backend: Backend) -> None:
        self.job = job
        self.aggregator_name = aggregator_name
        self.private = aggregator_private
        self.backend = backend
        self.last_state: State = {}

    def run(self, initial: State) -> State:
        """Run the flow; returns the final public state. On failure, ``last_state`` holds the
        state after the last aggregator step that completed."""
        with _fewer_gc_pauses():
            return self._walk(dict(initial))

    def _walk(self, state: State) -> State:
        step, inputs = "start", None
        self.last_state = dict(state)
        while True:
            state, transition = execute_step(self.job, step, dict(state), self.private,
                                             self.aggregator_name, inputs)
            self.last_state = state
            if step == "end":
                return state
            target = self.job.graph.steps[transition.step]
            if target.role == "collaborator":
                step, inputs = self._fan_out(step, state, transition)
            else:
                if transition.foreach is not None:
                    raise TransitionError(f"foreach= fans out to '{transition.step}', which "
                                          "runs on the aggregator", step=step,
                                          participant=self.aggregator_name)
                state = select(state, transition, step=step, participant=self.aggregator_name)
                step, inputs = transition.step, None

    def _fan_out(self, step: str, state: State, transition: Transition) -> tuple[str, list[Any]]:
        names = self._fan_out_names(step, state, transition)
        sent = select(state, transition, step=step, participant=self.aggregator_name)
        results = self.backend.run_chains(transition.step, names, sent)
        join = _common_join(results, transition.step)
        return join, [self.job.instance(r.state) for r in results]

    def _fan_out_names(self, step: str, state: State, transition: Transition) -> list[str]:
        def fail(message: str) -> TransitionError:
            return TransitionError(message, step=step, participant=self.aggregator_name)

        attr = transition.foreach
        if attr is None:
            raise fail(f"going to collaborator step '{transition.step}' needs foreach=, e.g. "
                       f"self.next(self.{transition.step}, foreach='collaborators')")
        if attr not in state:
            raise fail(f"foreach='{attr}' names no attribute of the state; set e.g. "
                       f"self.{attr} = self.runtime.collaborators first")
        names = state[attr]
        if isinstance(names, str) or not isinstance(names, Sequence) or \
                not all(isinstance(n, str) for n in names):
            raise fail(f"foreach='{attr}' must hold a list of collaborator names, got {names!r}")
        known = set(self.job.collaborators)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise fail(f"foreach='{attr}' names {unknown}, which are not collaborators of this "
                       f"run (collaborators: {list(self.job.collaborators)})")
        if len(set(names)) != len(names):
            repeated = sorted(n for n, count in Counter(names).items() if count > 1)
            raise fail(f"foreach='{attr}' names {repeated} more than once")
        if not names:
            raise fail(f"foreach='{attr}' is empty, so no collaborator would run "
                       f"'{transition.step}'")
        return list(names)


@contextmanager
def _fewer_gc_pauses(young_threshold: int = 20_000) -> Iterator[None]:
    """A fan-out allocates a few objects per collaborator, and CPython's default young-generation
    threshold (700) then triggers a collection every few collaborators: at 1000 collaborators
    that is a third of a round. Raise it for the run; restore it after."""
    saved = gc.get_threshold()
    gc.set_threshold(max(saved[0], young_threshold), *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _common_join(results: list[ChainResult], fan_out_step: str) -> str:
    joins = {r.join_step for r in results}
    if len(joins) == 1:
        return joins.pop()
    where = ", ".join(f"{r.collaborator} -> {r.join_step}" for r in results)
    raise TransitionError(f"collaborators that started at '{fan_out_step}' chose different "
                          f"aggregator steps ({where}); they must all reach the same join",
                          step=fan_out_step)
