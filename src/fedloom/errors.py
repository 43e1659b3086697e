"""Errors a fedloom user can meet, each saying what went wrong, where, and how to fix it.

Two families, following Click's split between developer misuse and end-user errors:

* ``FlowDefinitionError`` — the flow class itself is malformed. Raised before anything runs and
  lists every problem found, each with file, line and a fix.
* ``FlowRunError`` — something went wrong while a valid flow ran (a step raised, a transition asked
  for an attribute that does not exist, collaborators disagreed). Names the step and participant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a flow definition, located in the user's source."""

    message: str
    fix: str
    step: str | None = None
    file: str | None = None
    line: int | None = None

    def location(self) -> str:
        """``file:line`` (or what is known of it) for the start of a report line."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or "<unknown source>"

    def __str__(self) -> str:
        where = f" in step '{self.step}'" if self.step else ""
        return f"{self.location()}{where}: {self.message}\n    fix: {self.fix}"


class FlowDefinitionError(FedloomError):
    """The flow class is malformed; raised before any step runs, with every problem found."""

    def __init__(self, flow_name: str, problems: Sequence[Problem]) -> None:
        self.flow_name = flow_name
        self.problems = list(problems)
        count = len(self.problems)
        header = f"{flow_name} is not a valid flow ({count} problem{'s' if count != 1 else ''}):"
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{header}\n{body}")


class ParticipantError(FedloomError):
    """A participant (Aggregator/Collaborator) or runtime was configured wrongly."""


class FlowRunError(FedloomError):
    """A valid flow stopped while running. ``step`` and ``participant`` say where."""

    def __init__(self, message: str, *, step: str | None = None,
                 participant: str | None = None) -> None:
        self.step = step
        self.participant = participant
        self.tasks: list[Any] = []  # TaskRecords of the failing chain, when they were captured
        where = []
        if step:
            where.append(f"step '{step}'")
        if participant:
            where.append(f"participant '{participant}'")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)


class StepFailed(FlowRunError):
    """A step raised. ``traceback_text`` is the formatted traceback from where it ran."""

    def __init__(self, step: str, participant: str, exc_type: str, exc_message: str,
                 traceback_text: str) -> None:
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback_text = traceback_text
        super().__init__(
            f"the step raised {exc_type}: {exc_message}\n\n"
            f"Traceback from {participant}:\n{traceback_text.rstrip()}",
            step=step, participant=participant,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the error intact when it crosses a process boundary (Ray, envoys).
        return (StepFailed, (self.step or "", self.participant or "", self.exc_type,
                             self.exc_message, self.traceback_text), dict(self.__dict__))


class TransitionError(FlowRunError):
    """A ``self.next(...)`` call asked for something the state or federation cannot give."""

    # Pickles by BaseException's default (args + __dict__), so step/participant survive.


class PrivateAttributeError(FlowRunError):
    """A private attribute would collide with, or leak into, the public flow state."""


@dataclass(frozen=True)
class ReviewDecision:
    """One participant's decision on an experiment's plan (director or envoy)."""

    participant: str
    approved: bool
    reason: str
    decided_by: str  # "console", "fx review", "auto (review off)"; "withdrawn"; "" = not asked
    at: float  # seconds since the epoch; 0 when undecided

    @property
    def verdict(self) -> str:
        if not self.decided_by:
            return "not asked"
        if self.decided_by == "withdrawn":
            return "withdrawn"
        return "approved" if self.approved else "rejected"


class ExperimentRejected(FedloomError):
    """The experiment's plan was rejected in review; ``decisions`` holds every participant's."""

    def __init__(self, experiment: str, decisions: Sequence[ReviewDecision]) -> None:
        self.experiment = experiment
        self.decisions = list(decisions)
        rejected = [d for d in self.decisions if d.verdict == "rejected"]
        super().__init__(f"experiment {experiment} was rejected in review by " + ", ".join(
            f"{d.participant}{f' ({d.reason})' if d.reason else ''}" for d in rejected))


class PackageError(FedloomError):
    """An experiment package could not be built, decoded or loaded."""


class DigestMismatchError(PackageError):
    """The package's bytes are not the ones whose digest was approved or submitted."""
