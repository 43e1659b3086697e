"""The director's durable state: the records it keeps, the states an experiment moves through,
and the interface every store implements (:class:`DirectorStore`).

Times are seconds since the epoch (``time.time()``), like the rest of the federation.

An experiment moves through these states (:data:`TRANSITIONS`)::

    queued     -> reviewing, waiting, running, rejected
    reviewing  -> waiting, running, rejected
    waiting    -> running
    running    -> done
    unfinished -> failed, cancelled

``done``, ``failed``, ``cancelled`` and ``rejected`` are final: a final state never changes.
The checks live here, not in each store, so every store accepts and refuses the same changes.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from fedloom.errors import FedloomError

STATES = ("queued", "reviewing", "waiting", "running", "done", "failed", "cancelled", "rejected")
FINAL_STATES = frozenset({"done", "failed", "cancelled", "rejected"})
UNFINISHED_STATES = frozenset(STATES) - FINAL_STATES

# state -> the states it may change to. Review can be skipped (nodes with review off), so queued
# and reviewing may go straight to running; a review can be refused before it starts (queued ->
# rejected); anything unfinished can fail or be cancelled.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"reviewing", "waiting", "running", "rejected", "failed", "cancelled"}),
    "reviewing": frozenset({"waiting", "running", "rejected", "failed", "cancelled"}),
    "waiting": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"done", "failed", "cancelled"}),
    **{state: frozenset() for state in FINAL_STATES},
}

RESTART_REASON = "the director restarted"


class StoreError(FedloomError):
    """The director's store cannot do what was asked: an unknown experiment, an unreadable file,
    a closed store."""


class TransitionError(StoreError):
    """An experiment was asked to change to a state it cannot reach from its current one."""


@dataclass(frozen=True)
class ExperimentRecord:
    """One submitted experiment. ``reason`` is the text given with its latest state change
    (why it failed, was rejected or cancelled)."""

    id: str
    submitter: str
    digest: str  # sha256 of its package
    flow_name: str
    run_id: str
    checkpoint: bool
    participants: tuple[str, ...]  # collaborator names
    submitted_at: float
    state: str = "queued"
    started_at: float | None = None  # when it first entered "running"
    ended_at: float | None = None  # when it entered a final state
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class DecisionRecord:
    """One participant's review decision on one experiment, bound to the package digest."""

    participant: str
    approved: bool
    decided_by: str
    reason: str
    at: float
    digest: str


@dataclass(frozen=True)
class EnvoyRecord:
    """An envoy the director has known. Heartbeats are not recorded: only registrations and
    losses, so a thousand envoys cost a write each when they come and go, not every period."""

    name: str
    address: str
    first_seen: float
    last_registered: float
    online: bool
    last_offline: float | None = None  # when it last went offline (kept after it returns)
    cert_expiry: float | None = None  # its certificate's not-after, when the director knew it


class DirectorStore(ABC):
    """What the director remembers across restarts. Every method is safe to call from several
    threads; methods of a closed store raise :class:`StoreError`."""

    @abstractmethod
    def new_experiment_id(self) -> str:
        """A fresh id ``"<n>-<8 hex>"``: n grows by one per call and never repeats, across
        restarts too; the random part makes ids unguessable."""

    @abstractmethod
    def add_experiment(self, record: ExperimentRecord) -> None:
        """Record a submitted experiment; its id must be new."""

    @abstractmethod
    def set_state(self, experiment_id: str, state: str, *, reason: str = "",
                  at: float | None = None) -> ExperimentRecord:
        """Move an experiment to ``state`` (see :data:`TRANSITIONS`) and return its new record.
        Raises :class:`TransitionError` for a change the table does not allow."""

    @abstractmethod
    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        """The experiment's record, or None if there is none."""

    @abstractmethod
    def experiments(self, submitter: str | None = None,
                    states: Iterable[str] | None = None) -> list[ExperimentRecord]:
        """Experiments, newest submission first, optionally only one submitter's or only those
        in ``states``."""

    @abstractmethod
    def add_decision(self, experiment_id: str, decision: DecisionRecord) -> None:
        """Append a review decision to an existing experiment."""

    @abstractmethod
    def decisions(self, experiment_id: str) -> list[DecisionRecord]:
        """The experiment's decisions in the order they were added."""

    @abstractmethod
    def envoy_registered(self, name: str, address: str, at: float,
                         cert_expiry: float | None = None) -> None:
        """The envoy (re)registered: it is online; its address and certificate expiry are
        replaced by these; ``first_seen`` is kept from its first registration."""

    @abstractmethod
    def envoy_offline(self, name: str, at: float) -> None:
        """The envoy was lost at ``at``. Ignored if it registered after ``at`` (the loss of an
        old connection noticed late) or is offline already; raises :class:`StoreError` for an
        envoy that never registered."""

    @abstractmethod
    def envoys(self) -> list[EnvoyRecord]:
        """Every envoy ever registered, by name."""

    @abstractmethod
    def recover(self, at: float, reason: str = RESTART_REASON) -> list[ExperimentRecord]:
        """Call once at director start: every unfinished experiment becomes "failed" with
        ``reason`` (returned, newest first, so their submitters can be told) and every envoy
        is marked offline (they register again)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; closing twice is harmless."""

    def __enter__(self) -> DirectorStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# -- rules shared by every store ----------------------------------------------------------------

def format_experiment_id(number: int) -> str:
    return f"{number}-{uuid.uuid4().hex[:8]}"


def timestamp(at: float | None) -> float:
    return time.time() if at is None else at


def check_state(state: str) -> None:
    if state not in TRANSITIONS:
        raise StoreError(f"unknown experiment state '{state}'; states are {', '.join(STATES)}")


def state_filter(states: Iterable[str] | None) -> frozenset[str] | None:
    """``states`` as a set (None: no filter), each checked so a typo does not match nothing."""
    if states is None:
        return None
    wanted = frozenset((states,) if isinstance(states, str) else states)
    for state in wanted:
        check_state(state)
    return wanted


def check_new_experiment(record: ExperimentRecord, exists: bool) -> None:
    if exists:
        raise StoreError(f"experiment {record.id} is recorded already; ids are never reused")
    check_state(record.state)


def transitioned(record: ExperimentRecord, state: str, reason: str,
                 at: float) -> ExperimentRecord:
    """``record`` moved to ``state`` at ``at``, or :class:`TransitionError` if it may not."""
    check_state(state)
    if state not in TRANSITIONS[record.state]:
        if record.finished:
            raise TransitionError(f"experiment {record.id} ended ({record.state}) and cannot "
                                  f"become {state}: a final state never changes")
        allowed = ", ".join(sorted(TRANSITIONS[record.state]))
        raise TransitionError(f"experiment {record.id} cannot go from {record.state} to "
                              f"{state}; from {record.state} it can become: {allowed}")
    started = at if state == "running" and record.started_at is None else record.started_at
    ended = at if state in FINAL_STATES else None
    return dataclasses.replace(record, state=state, reason=reason, started_at=started,
                               ended_at=ended)


def unknown_experiment(experiment_id: str) -> StoreError:
    return StoreError(f"no experiment {experiment_id} is recorded")


def unknown_envoy(name: str) -> StoreError:
    return StoreError(f"no envoy '{name}' has registered")


def registered(old: EnvoyRecord | None, name: str, address: str, at: float,
               cert_expiry: float | None) -> EnvoyRecord:
    """The envoy's record after it registers at ``at``."""
    if old is None:
        return EnvoyRecord(name, address, first_seen=at, last_registered=at, online=True,
                           cert_expiry=cert_expiry)
    return dataclasses.replace(old, address=address, last_registered=at, online=True,
                               cert_expiry=cert_expiry)


def went_offline(old: EnvoyRecord, at: float) -> EnvoyRecord:
    """The envoy's record after it was lost at ``at``: unchanged if it registered since, or was
    offline already (``last_offline`` says when it went, not when that was noticed again)."""
    if not old.online or at < old.last_registered:
        return old
    return dataclasses.replace(old, online=False, last_offline=at)


def offline_after_restart(old: EnvoyRecord, at: float) -> EnvoyRecord:
    """The envoy's record when the director restarts at ``at``: its connection died with the
    old director, whatever times it registered at."""
    return dataclasses.replace(old, online=False, last_offline=at) if old.online else old
