"""The one engine that walks a flow.

``FlowEngine`` runs the aggregator side: it executes aggregator steps, and at each fan-out hands
the collaborator chains to a :class:`Backend`. ``CollaboratorSite`` is the collaborator side: it
runs one collaborator's chain of steps until the chain reaches an aggregator step (the join).
Backends only decide *where* a site lives (this process, a Ray actor, an envoy) and how state
travels to it; every rule about transitions and private attributes is applied here, once.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any, Protocol

from fedloom.errors import FlowRunError, StepFailed, TransitionError
from fedloom.state import (
    Given,
    LeakCheck,
    State,
    StateCopier,
    Transition,
    copy_state,
    owners_reached,
    select,
)
from fedloom.stragglers import (
    NO_FAULT,
    Dropped,
    Fault,
    Inputs,
    PolicySpec,
    StragglerError,
    StragglerPolicy,
    dropped_for_failure,
    policy_for,
    simulated_failure,
)
from fedloom.tasks import FlowJob, TaskRecord, TaskRecorder, execute_step, run_task
from fedloom.tracking.records import MetricRecord

log = logging.getLogger(__name__)


@dataclass
class ChainResult:
    """What one collaborator's chain sends to the join, and the records of its tasks."""

    collaborator: str
    join_step: str
    state: State
    tasks: list[TaskRecord] = field(default_factory=list)  # when captured or checkpointing
    metrics: list[MetricRecord] = field(default_factory=list)  # logged by its tasks, in order


_NO_STEP = object()  # a transition to a step the flow does not have
_CHECKED = Given()  # a state that checked steps left: nothing more is known (never changed)


def run_chain_with_fault(site: CollaboratorSite, job: FlowJob, step: str, received: State,
                         fault: Fault, fan_out: int, tolerant: bool,
                         given: Given | None = None) -> ChainResult | Dropped:
    """``site.run_chain``, with a simulated disconnect or failure applied first (delays are
    the backend's: simulated time or a real wait). When ``tolerant`` a failure comes back as
    :class:`Dropped`; otherwise it is raised, as a real one would be."""
    if fault is NO_FAULT and not tolerant:
        return site.run_chain(job, step, received, given)  # most chains: nothing to simulate
    if fault.disconnect:
        if not tolerant:
            raise FlowRunError(f"collaborator '{site.name}' disconnected (simulated by Faults)",
                               step=step, participant=site.name)
        return Dropped(site.name, "disconnected", "disconnected (simulated)")
    try:
        if fault.fail:
            raise simulated_failure(step, site.name, fan_out)
        return site.run_chain(job, step, received, given)
    except FlowRunError as err:
        if not tolerant:
            raise
        return dropped_for_failure(site.name, err)


def copies_for(sites: Mapping[str, CollaboratorSite], job: FlowJob, names: Sequence[str],
               sent: State) -> tuple[StateCopier, dict[str, Given | None]]:
    """A copier of ``sent`` for the named sites, and what each one's first step may assume
    about its copy: the copies share immutable values with ``sent``, so where ``sent`` reaches
    a site's private object (through a shared value, say) that first step is checked in full.
    One walk of ``sent`` for all of them, instead of one per collaborator."""
    copier = StateCopier(sent)
    suspects = owners_reached(sent, {name: sites[name].private for name in names},
                              job.public_texts, texts_only=copier.shares_only_immutables)
    given: dict[str, Given | None] = dict.fromkeys(names, copier.given())
    for name in suspects:
        given[name] = None
    return copier, given


def keep_finished_tasks(err: FlowRunError, finished: Sequence[ChainResult]) -> None:
    """A failing chain stops the fan-out; the chains that finished before it keep their task
    records (they ran and printed), ahead of the failing chain's own."""
    err.tasks[:0] = [task for result in finished for task in result.tasks]


class Backend(Protocol):
    """Where collaborator chains run. Implementations: serial (here), Ray, federated."""

    def open(self, job: FlowJob) -> None:
        """Prepare for a run (create sites and their private attributes on first use)."""

    def run_chains(self, step: str, names: Sequence[str], sent: State, *,
                   deadline: float | None = None,
                   tolerant: bool = False) -> Sequence[ChainResult | Dropped]:
        """Run ``step`` and what follows on each named collaborator, each on its own copy of
        ``sent``; return their outcomes in ``names`` order. Without ``deadline`` and
        ``tolerant`` every outcome is a result and a failure raises; with them a chain that
        fails (``tolerant``), disconnects or is later than ``deadline`` seconds comes back as
        :class:`Dropped`, and a late result is discarded."""

    def close(self) -> None:
        """Release what ``open`` acquired for the run."""


class RunObserver(Protocol):
    """Who follows a run as it goes (the live display): told of each fan-out and of the
    metrics the aggregator receives."""

    def on_fan_out(self, step: str, round: int, participants: Sequence[str]) -> None:
        """``step`` is sent out for the ``round``-th time (from 1) to ``participants``."""

    def on_metrics(self, records: Sequence[MetricRecord]) -> None:
        """Metrics logged by a task whose result the aggregator has."""


class CollaboratorSite:
    """One collaborator's long-lived side: its private attributes, and the public state it keeps
    between fan-outs (what it set and did not send back)."""

    def __init__(self, name: str, private: dict[str, Any], *, in_process: bool = True) -> None:
        self.name = name
        self.private = private
        # In the aggregator's process (serial backend) the console is this one, and what is
        # sent is handed over by reference; elsewhere (Ray, envoys) output is captured and
        # serialisation already separates what is sent from what is kept.
        self.in_process = in_process
        self.kept: State = {}
        self._leaks: tuple[FlowJob, LeakCheck] | None = None
        self._rounds: Counter[str] = Counter()  # step -> times run in this run

    def start_run(self) -> None:
        self.kept = {}
        self._rounds = Counter()

    def _leak_check(self, job: FlowJob) -> LeakCheck:
        """This site's leak check for ``job`` (kept between tasks: see LeakCheck)."""
        if self._leaks is None or self._leaks[0] is not job:
            self._leaks = (job, LeakCheck(self.name, job.public_texts))
        return self._leaks[1]

    def run_chain(self, job: FlowJob, step: str, received: State,
                  given: Given | None = None) -> ChainResult:
        """Run ``step`` and the collaborator steps after it on ``received`` (this site's own
        copy) until a transition leads to an aggregator step. ``given``: what the leak check
        may assume about ``received`` (see :func:`copies_for`); ``None`` checks it all."""
        state = self.kept
        if state:
            self.kept = {}
            state.update(received)
        else:
            state = received  # ours alone (a copy made for this chain): no merge needed
        cached = self._leaks
        leaks = cached[1] if cached is not None and cached[0] is job else self._leak_check(job)
        # In this process and not checkpointing, a task is just its step (no record to make).
        plain = self.in_process and not job.record_tasks
        roles, retries, rounds, name = job.roles, job.retries, self._rounds, self.name
        records: list[TaskRecord] = []
        metrics: list[MetricRecord] = []
        held_back: State = {}  # filtered out between collaborator steps: stays with us
        try:
            while True:
                # Every step of the chain knows whose it is, whatever include=/exclude= (or the
                # step itself) did to 'input' on the way.
                state["input"] = name
                round_ = rounds[step]  # this site's round of the step: how often it ran before
                rounds[step] = round_ + 1
                if step in retries:
                    state, transition, record = self._attempts(job, step, state, records, given,
                                                               leaks, metrics, round_)
                elif plain:
                    state, transition = execute_step(job, step, state, self.private, name,
                                                     None, given, leaks, metrics, round_)
                    record = None
                else:
                    state, transition, record = run_task(job, step, state, self.private,
                                                         name, live=self.in_process,
                                                         given=given, leaks=leaks,
                                                         metrics=metrics, round=round_)
                if given is None:
                    given = _CHECKED  # what one step leaves was checked
                if record is not None:
                    records.append(record)
                role = roles.get(transition.step, _NO_STEP)
                if role is _NO_STEP or transition.foreach is not None:
                    raise TransitionError(
                        f"a collaborator step cannot go to {transition.describe()}; go to an "
                        "aggregator join or another collaborator step", step=step,
                        participant=name)
                if transition.include is None and transition.exclude is None:
                    sent = state  # everything moves on; nothing is left to keep or filter
                else:
                    sent = select(state, transition, step=step, participant=name,
                                  private=self.private)
                    held_back.update((k, v) for k, v in state.items() if k not in sent)
                if role == "aggregator":
                    if held_back:
                        self.kept = self._keep({k: v for k, v in held_back.items()
                                                if k not in sent})
                    sent["input"] = name  # a join can always tell who sent what
                    return ChainResult(name, transition.step, sent, records, metrics)
                state, step = sent, transition.step
        except FlowRunError as err:
            err.tasks[:0] = records  # the chain's finished tasks are kept with the failure
            raise

    def _attempts(self, job: FlowJob, step: str, state: State, records: list[TaskRecord],
                  given: Given | None, leaks: LeakCheck, metrics: list[MetricRecord],
                  round_: int) -> tuple[State, Transition, TaskRecord | None]:
        """Run ``step`` (a ``@collaborator(retries=n)`` one) and run it again, on a copy of the
        state it was given, when it raises (failed attempts go to ``records``; only the
        metrics of the attempt that succeeds go on to ``metrics``)."""
        retries = job.retries[step]
        pristine = copy_state(state)
        for attempt in range(retries + 1):
            # A failed attempt may have rebound private attributes, unchecked: check it all.
            attempt_state, attempt_given = (state, given) if attempt == 0 else \
                (copy_state(pristine), None)
            logged: list[MetricRecord] = []
            try:
                new_state, transition, record = run_task(job, step, attempt_state,
                                                         self.private, self.name,
                                                         live=self.in_process,
                                                         given=attempt_given, leaks=leaks,
                                                         metrics=logged, round=round_)
            except StepFailed as err:
                for task in err.tasks:
                    task.attempt = attempt
                if attempt == retries:
                    raise
                records.extend(err.tasks)
                err.tasks = []
                log.warning("step '%s' on '%s' failed (attempt %d of %d): %s: %s; trying again",
                            step, self.name, attempt + 1, retries + 1, err.exc_type,
                            err.exc_message)
                continue
            if record is not None:
                record.attempt = attempt
            metrics.extend(logged)
            return new_state, transition, record
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _keep(self, kept: State) -> State:
        # What the collaborator keeps may share objects with what it sends (e.g. an optimizer
        # holding the model's tensors); the aggregator must not be able to change them. In
        # process, copy the kept part (usually small); elsewhere serialisation did it already.
        return copy_state(kept) if self.in_process and kept else kept


class FlowEngine:
    """Walks a flow from ``start`` to ``end`` on the aggregator, fanning out through a backend."""

    def __init__(self, job: FlowJob, aggregator_name: str, aggregator_private: dict[str, Any],
                 backend: Backend, recorder: TaskRecorder | None = None, *,
                 live_output: bool = True, stragglers: PolicySpec = None,
                 observer: RunObserver | None = None) -> None:
        self.job = job
        self.aggregator_name = aggregator_name
        self.private = aggregator_private
        self.backend = backend
        self.recorder = recorder
        # False where nobody watches this process's console (the director's aggregator
        # process): aggregator tasks are captured and handed to the recorder instead.
        self.live_output = live_output
        self.stragglers = stragglers
        self.observer = observer
        self.last_state: State = {}
        # What the run logged, as the aggregator received it: its own tasks' metrics, and those
        # of each chain whose result reached a join (a dropped straggler's never do).
        self.metrics: list[MetricRecord] = []
        self._rounds: Counter[str] = Counter()  # aggregator step -> times run
        self._fan_outs: Counter[str] = Counter()  # collaborator step -> times sent out

    def run(self, initial: State, resume_at: tuple[str, Transition] | None = None) -> State:
        """Run the flow; returns the final public state. On failure, ``last_state`` holds the
        aggregator's state as it was when the run stopped. ``resume_at``: (a completed
        aggregator step, the transition it chose) — go on from there with ``initial`` as the
        state it left, instead of starting at ``start``. The engine takes the state over:
        ``initial`` is left empty, so that the caller does not keep the initial values (a
        model, say) alive for the whole run, one more copy of it from the second round on."""
        try:
            with _fewer_gc_pauses():
                final = self._walk(_taken_over(initial), resume_at)  # no local holds it
        except BaseException as err:
            self._close_record(err)
            raise
        self._finish(ok=True)
        return final

    def _close_record(self, err: BaseException) -> None:
        """Record what the failure left and close the run as failed, without letting a
        checkpoint problem hide the failure itself (it is attached as a note)."""
        try:
            if isinstance(err, FlowRunError):
                self._record(err.tasks)
        except Exception as problem:
            _note(err, f"checkpoint: {problem}")
        try:
            self._finish(ok=False)
        except Exception as problem:
            _note(err, f"checkpoint: {problem}")

    def _record(self, tasks: Sequence[TaskRecord]) -> None:
        if self.recorder is not None:
            for task in tasks:
                self.recorder.record(task)

    def _finish(self, ok: bool) -> None:
        if self.recorder is not None:
            self.recorder.finish(ok)

    def _walk(self, state: State, resume_at: tuple[str, Transition] | None = None) -> State:
        step, inputs = "start", None
        self.last_state = dict(state)
        pending = resume_at
        given: Given | None = None  # the state the run starts from is checked in full, once
        leaks = LeakCheck(self.aggregator_name, self.job.public_texts)
        while True:
            # On failure the flow keeps the state as the failing step left it.
            self.last_state = dict(state)
            if pending is not None:  # resuming: this step ran in the earlier run
                (step, transition), pending = pending, None
            else:
                logged = len(self.metrics)
                round_ = self._rounds[step]
                self._rounds[step] = round_ + 1
                state, transition, record = run_task(self.job, step, self.last_state,
                                                     self.private, self.aggregator_name,
                                                     inputs, live=self.live_output, given=given,
                                                     leaks=leaks, metrics=self.metrics,
                                                     round=round_)
                if len(self.metrics) > logged:
                    self._tell_metrics(self.metrics[logged:])
                given = Given()  # from here on, the state is what checked steps left
                inputs = None  # the join is done: let the collaborators' copies go
                if record is not None:
                    self._record([record])
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

    def _fan_out(self, step: str, state: State, transition: Transition) -> tuple[str, Inputs]:
        names = self._fan_out_names(step, state, transition)
        policy = policy_for(self.stragglers, transition.step)
        if policy is not None and policy.required(len(names)) > len(names):
            raise TransitionError(
                f"the straggler policy of the fan-out to '{transition.step}' needs "
                f"{policy.required(len(names))} collaborators to finish, but it goes to only "
                f"{len(names)}", step=step, participant=self.aggregator_name)
        sent = select(state, transition, step=step, participant=self.aggregator_name,
                      private=self.private)
        self._fan_outs[transition.step] += 1
        if self.observer is not None:
            self.observer.on_fan_out(transition.step, self._fan_outs[transition.step], names)
        try:
            outcomes = self.backend.run_chains(
                transition.step, names, sent, deadline=policy.deadline if policy else None,
                tolerant=policy is not None)
        except TransitionError as err:
            if err.step is not None:
                raise
            # The backend could not even ship the state: that is this step's transition.
            raise TransitionError(str(err), step=step, participant=self.aggregator_name) \
                from err
        results, dropped, received = _sorted_outcomes(outcomes)
        if received:
            self.metrics.extend(received)
            self._tell_metrics(received)
        if self.recorder is not None:
            for outcome in outcomes:
                self._record(outcome.tasks)
        if dropped:
            self._check_enough(transition.step, policy, len(names), results, dropped)
        join = _common_join(results, transition.step)
        return join, Inputs(self.job.instances([r.state for r in results]),
                            {d.collaborator: d.reason for d in dropped})

    def _tell_metrics(self, records: Sequence[MetricRecord]) -> None:
        if self.observer is not None:
            self.observer.on_metrics(records)

    def _check_enough(self, step: str, policy: StragglerPolicy | None, fanned_out: int,
                      results: list[ChainResult], dropped: list[Dropped]) -> None:
        needed = policy.required(fanned_out) if policy is not None else fanned_out
        if len(results) < needed:
            raise StragglerError(step, self.aggregator_name, len(results), needed, dropped)
        log.warning("the fan-out to '%s' goes on without %s", step,
                    "; ".join(f"{d.collaborator} ({d.reason})" for d in dropped))

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
                not all(map(isinstance, names, repeat(str))):  # in C: once per collaborator
            raise fail(f"foreach='{attr}' must hold a list of collaborator names, got {names!r}")
        known = self.job.public_texts  # the collaborators' names
        unknown = [] if known.issuperset(names) else [n for n in names if n not in known]
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


def _taken_over(state: State) -> State:
    """A copy of ``state``, which is left empty."""
    copied = dict(state)
    state.clear()
    return copied


def _note(err: BaseException, text: str) -> None:
    log.warning("%s", text)
    if hasattr(err, "add_note"):  # Python 3.11+
        err.add_note(text)


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


def _sorted_outcomes(outcomes: Sequence[ChainResult | Dropped]) -> tuple[
        list[ChainResult], list[Dropped], list[MetricRecord]]:
    """The results, the dropped, and the metrics the results bring, in order."""
    results: list[ChainResult] = []
    dropped: list[Dropped] = []
    received: list[MetricRecord] = []
    keep, drop, more = results.append, dropped.append, received.extend
    for outcome in outcomes:  # once per collaborator: kept lean
        if isinstance(outcome, ChainResult):
            keep(outcome)
            if outcome.metrics:
                more(outcome.metrics)
        elif isinstance(outcome, Dropped):
            drop(outcome)
    return results, dropped, received


def _common_join(results: list[ChainResult], fan_out_step: str) -> str:
    joins: set[str] = set(map(attrgetter("join_step"), results))  # in C: once per collaborator
    if not joins:
        raise FlowRunError(f"no collaborator finished the fan-out to '{fan_out_step}'",
                           step=fan_out_step)
    if len(joins) == 1:
        return joins.pop()
    where = ", ".join(f"{r.collaborator} -> {r.join_step}" for r in results)
    odd_one = next(r for r in results if r.join_step != results[0].join_step)
    raise TransitionError(f"collaborators that started at '{fan_out_step}' chose different "
                          f"aggregator steps ({where}); they must all reach the same join",
                          step=fan_out_step, participant=odd_one.collaborator)
