"""Stragglers and failures: when a fan-out may go on without some collaborators, and how to
rehearse that before going live.

A :class:`StragglerPolicy` bounds the collaborator phase of a fan-out (a deadline) and says how
many collaborators must finish (a number or a fraction). With a policy, a collaborator that is
too late, fails or disconnects is *dropped*: the join runs with the inputs that arrived, and
``inputs.dropped`` says who was dropped and why. When too few finish, the run fails with a
:class:`StragglerError` that lists who was missing. Without a policy, a fan-out waits for every
collaborator and any failure stops the run.

:class:`Faults` injects delays, failures and disconnects into LocalRuntime (seeded), so that a
policy can be tried before a federation depends on it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedloom.errors import FlowRunError, ParticipantError, StepFailed
from fedloom.tasks import TaskRecord

DropKind = Literal["timed out", "failed", "disconnected"]


@dataclass(frozen=True)
class StragglerPolicy:
    """``deadline``: seconds the collaborator phase of a fan-out may take. ``min_collaborators``
    / ``min_fraction``: how many of those fanned out to must finish (default: one, when only a
    deadline is given). Any of them makes failures tolerable: a failing collaborator is
    dropped, not fatal, while enough others finish."""

    deadline: float | None = None
    min_collaborators: int | None = None
    min_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.deadline is None and self.min_collaborators is None and \
                self.min_fraction is None:
            raise ParticipantError("StragglerPolicy needs deadline=, min_collaborators= or "
                                   "min_fraction=")
        if self.deadline is not None and not self.deadline > 0:
            raise ParticipantError(f"StragglerPolicy(deadline={self.deadline!r}): a deadline "
                                   "is a positive number of seconds")
        if self.min_collaborators is not None and (
                not isinstance(self.min_collaborators, int) or self.min_collaborators < 1):
            raise ParticipantError(f"StragglerPolicy(min_collaborators="
                                   f"{self.min_collaborators!r}) must be a whole number >= 1")
        if self.min_fraction is not None and not 0 < self.min_fraction <= 1:
            raise ParticipantError(f"StragglerPolicy(min_fraction={self.min_fraction!r}) must "
                                   "be in (0, 1]")

    def required(self, fanned_out: int) -> int:
        """How many of ``fanned_out`` collaborators must finish."""
        need = max(self.min_collaborators or 1,
                   math.ceil(self.min_fraction * fanned_out) if self.min_fraction else 1)
        return need


PolicySpec = StragglerPolicy | Mapping[str, StragglerPolicy] | None


def policy_for(spec: PolicySpec, step: str) -> StragglerPolicy | None:
    """The policy of the fan-out to ``step``: one for every fan-out, or one per step."""
    if spec is None or isinstance(spec, StragglerPolicy):
        return spec
    return spec.get(step)


def check_policy_spec(spec: object, steps: Collection[str] | None = None) -> None:
    if spec is None or isinstance(spec, StragglerPolicy):
        return
    if not isinstance(spec, Mapping) or not all(
            isinstance(k, str) and isinstance(v, StragglerPolicy) for k, v in spec.items()):
        raise ParticipantError("straggler_policy= takes a StragglerPolicy, or a dict from the "
                               "name of a fan-out's first collaborator step to one")
    if steps is not None:
        unknown = sorted(set(spec) - set(steps))
        if unknown:
            raise ParticipantError(f"straggler_policy names {unknown}, which are not "
                                   f"collaborator steps of the flow ({sorted(steps)})")


@dataclass
class Dropped:
    """A collaborator that did not make it into the join, and why."""

    collaborator: str
    kind: DropKind
    reason: str
    tasks: list[TaskRecord] = field(default_factory=list)  # what it ran before it was dropped


def dropped_for_failure(collaborator: str, err: FlowRunError) -> Dropped:
    """A failed chain, as a policy drops it: the error's first line is the reason."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return Dropped(collaborator, "failed", f"failed: {first}", err.tasks)


class Inputs(list[Any]):
    """A join's inputs; ``dropped`` maps each dropped collaborator to why (empty when all
    arrived)."""

    def __init__(self, items: Sequence[Any], dropped: Mapping[str, str] | None = None) -> None:
        super().__init__(items)
        self.dropped: dict[str, str] = dict(dropped or {})


class StragglerError(FlowRunError):
    """Too few collaborators finished a fan-out for its policy."""

    def __init__(self, step: str, participant: str, finished: int, needed: int,
                 dropped: Sequence[Dropped]) -> None:
        self.dropped = list(dropped)
        missing = "; ".join(f"{d.collaborator}: {d.reason}" for d in dropped)
        super().__init__(f"only {finished} collaborator(s) finished the fan-out to '{step}', "
                         f"and its straggler policy needs {needed}. Missing: {missing}",
                         step=step, participant=participant)


# -- simulation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What happens to one collaborator's chain in one fan-out (simulated)."""

    delay: float = 0.0
    fail: bool = False
    disconnect: bool = False


NO_FAULT = Fault()


@dataclass(frozen=True)
class Faults:
    """Seeded fault injection for LocalRuntime: ``delay`` adds seconds to named collaborators'
    chains (``slow_probability`` picks others at random, adding ``slow_seconds``), ``fail`` /
    ``fail_probability`` make a chain raise, ``disconnect`` / ``disconnect_probability`` make a
    collaborator vanish for a fan-out. ``fan_outs`` limits the faults to those fan-outs (counted
    from 0 per run); by default every fan-out. The same seed gives the same faults."""

    delay: Mapping[str, float] = field(default_factory=dict)
    slow_probability: float = 0.0
    slow_seconds: float = 0.0
    fail: Collection[str] = ()
    fail_probability: float = 0.0
    disconnect: Collection[str] = ()
    disconnect_probability: float = 0.0
    fan_outs: Collection[int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("slow_probability", "fail_probability", "disconnect_probability"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ParticipantError(f"Faults({name}={value!r}) must be in [0, 1]")
        if any(v < 0 for v in self.delay.values()) or self.slow_seconds < 0:
            raise ParticipantError("Faults delays are seconds >= 0")

    def for_chain(self, collaborator: str, fan_out: int) -> Fault:
        if self.fan_outs is not None and fan_out not in self.fan_outs:
            return NO_FAULT
        draw = random.Random(f"{self.seed}/{collaborator}/{fan_out}")
        slow, fails, gone = draw.random(), draw.random(), draw.random()
        delay = self.delay.get(collaborator, 0.0) + \
            (self.slow_seconds if slow < self.slow_probability else 0.0)
        return Fault(delay=delay,
                     fail=collaborator in self.fail or fails < self.fail_probability,
                     disconnect=collaborator in self.disconnect or
                     gone < self.disconnect_probability)

    def check_names(self, collaborators: Collection[str]) -> None:
        named = set(self.delay) | set(self.fail) | set(self.disconnect)
        unknown = sorted(named - set(collaborators))
        if unknown:
            raise ParticipantError(f"Faults name {unknown}, which are not collaborators "
                                   f"({sorted(collaborators)})")


class SimulatedClock:
    """Simulated parallel time, for a backend that runs chains one after another (serial).

    Each fan-out begins when the last one's collaborator phase ended, plus the real time the
    aggregator's own steps took since. A collaborator's chain starts at the fan-out, or later
    if the collaborator is still busy with a step from an earlier fan-out: a running step is
    never interrupted (as on Ray, where a late step holds its actor), so its "busy until" time
    is carried from one fan-out to the next. Each run starts with everyone free (on Ray a new
    run waits for every actor)."""

    def __init__(self) -> None:
        self._now = 0.0  # simulated time at which the last collaborator phase ended
        self._since = time.perf_counter()  # real time then: the aggregator's steps since count
        self._busy_until: dict[str, float] = {}
        self._latest = 0.0  # the latest of the _busy_until times (0 when there are none)

    def begin_fan_out(self) -> float:
        """The simulated time of a fan-out that begins now."""
        return self._now + (time.perf_counter() - self._since)

    def run(self, collaborator: str, offered: float, seconds: float) -> tuple[float, float]:
        """A chain of ``seconds`` offered to ``collaborator`` at ``offered``: when it really
        starts (once the collaborator is free) and when it ends."""
        start = max(offered, self._busy_until.get(collaborator, offered))
        end = self._busy_until[collaborator] = start + seconds
        self._latest = max(self._latest, end)
        return start, end

    def idle_at(self, offered: float) -> bool:
        """Whether no collaborator is busy past ``offered`` (a fan-out's begin). Then, without
        a deadline, each chain runs from ``offered`` and the fan-out ends at ``offered`` plus
        the longest, and nobody need be remembered as busy: whatever ends then is over by
        every later fan-out's begin (simulated time never goes back)."""
        return self._latest <= offered

    def end_fan_out(self, at: float) -> None:
        """The collaborator phase of the current fan-out ended at ``at`` (simulated)."""
        self._now, self._since = at, time.perf_counter()


def simulated_failure(step: str, collaborator: str, fan_out: int) -> StepFailed:
    return StepFailed(step, collaborator, "SimulatedFailure",
                      f"injected by Faults (fan-out {fan_out})",
                      "(no traceback: the failure was simulated)")


# -- travelling with a package (the federation) -------------------------------------------------

_ALL_STEPS = "*"


def policy_to_json(spec: PolicySpec) -> str:
    """``spec`` as JSON, for an experiment package's metadata (so reviewers see it)."""
    import json

    if spec is None:
        return ""
    by_step = {_ALL_STEPS: spec} if isinstance(spec, StragglerPolicy) else dict(spec)
    return json.dumps({step: {k: v for k, v in vars(p).items() if v is not None}
                       for step, p in by_step.items()}, sort_keys=True)


def policy_from_json(text: str) -> PolicySpec:
    """The inverse of :func:`policy_to_json`; a malformed text is a ParticipantError."""
    import json

    if not text:
        return None
    try:
        by_step = {step: StragglerPolicy(**fields) for step, fields in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ParticipantError(f"unreadable straggler policy {text!r}: {exc}") from exc
    return by_step[_ALL_STEPS] if set(by_step) == {_ALL_STEPS} else by_step
