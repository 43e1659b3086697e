"""What people see of a federation: experiments, their output, envoys and nodes, as Python
records (what :class:`~fedloom.runtime.federated.FederatedRuntime` returns), as JSON (``fx ...
--json``; the schema is in docs/operating.md) and as tables for the console.

Times are seconds since the epoch (``None`` when not yet); durations are seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from rich.table import Table

from fedloom.federation.transport.proto import fedloom_pb2 as pb

FINAL_PHASES = ("done", "failed", "cancelled", "rejected")


def _time(value: float) -> float | None:
    return value or None


@dataclass(frozen=True)
class ExperimentStatus:
    """One experiment as its submitter (or the director's admin) sees it.

    ``phase`` is one of queued (its envoys are busy), waiting (for envoys that are offline),
    reviewing, running, done, failed, cancelled, rejected; ``detail`` says it in words."""

    id: str
    submitter: str
    flow: str
    digest: str
    phase: str
    detail: str
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    participants: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()  # reviewing: who has yet to decide
    waiting_for: tuple[str, ...] = ()  # waiting: the envoys it waits for
    step: str | None = None  # running: the step last sent to the envoys
    round: int | None = None  # ... how many times it was sent out
    step_at: float | None = None  # ... and when
    reason: str = ""
    run_id: str = ""
    checkpoint: bool = False

    @classmethod
    def from_message(cls, m: pb.ExperimentInfo) -> ExperimentStatus:
        return cls(id=m.id, submitter=m.submitter, flow=m.flow, digest=m.digest, phase=m.phase,
                   detail=m.detail, submitted_at=m.submitted_at,
                   started_at=_time(m.started_at), ended_at=_time(m.ended_at),
                   participants=tuple(m.participants), reviewers=tuple(m.reviewers),
                   waiting_for=tuple(m.waiting_for), step=m.step or None,
                   round=m.round or None, step_at=_time(m.step_at), reason=m.reason,
                   run_id=m.run_id, checkpoint=m.checkpoint)

    @property
    def ended(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def duration(self) -> float:
        """Seconds from its submission to its end (to now while it goes on)."""
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(end - self.submitted_at, 0.0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("participants", "reviewers", "waiting_for"):
            data[key] = list(data[key])
        data["duration"] = round(self.duration, 3)
        return data


@dataclass(frozen=True)
class TaskOutput:
    """One task's output, attributed to its step and participant (``fx experiment logs``)."""

    step: str
    participant: str
    stdout: str
    stderr: str
    ok: bool
    started_at: float | None
    finished_at: float | None
    attempt: int = 0

    @classmethod
    def from_message(cls, m: pb.TaskInfo) -> TaskOutput:
        return cls(m.step, m.participant, m.stdout, m.stderr, m.ok, _time(m.started_at),
                   _time(m.finished_at), m.attempt)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EnvoyStatus:
    """An envoy as a user sees it: as much as the director's ``visibility`` setting shows
    (``None``: not shown). ``experiment`` is set only when it is the user's own."""

    name: str
    online: bool | None = None
    last_seen: float | None = None
    experiment: str = ""
    busy: bool | None = None

    @classmethod
    def from_message(cls, m: pb.EnvoyInfo, visibility: str) -> EnvoyStatus:
        if visibility == "names":
            return cls(m.name)
        if visibility == "online" or not visibility:
            return cls(m.name, m.online, None, m.experiment)  # an older director: as it said
        return cls(m.name, m.online, _time(m.last_seen), m.experiment, m.busy)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the console ---------------------------------------------------------------------------------

def when(at: float | None) -> str:
    """A time for people: ``2025-01-31 12:04:31`` (local time); '' for none."""
    return datetime.fromtimestamp(at).isoformat(sep=" ", timespec="seconds") if at else ""


def seconds(value: float | None) -> str:
    """A duration for people: ``4.2 s``, ``3 min 05 s``, ``2 h 01 min``."""
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def experiments_table(experiments: Sequence[ExperimentStatus], title: str = "experiments",
                      submitter: bool = False) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ["experiment", *(["submitter"] if submitter else []), "flow", "phase", "detail",
               "submitted", "duration", "participants"]
    for column in columns:
        table.add_column(column)
    for e in experiments:
        table.add_row(e.id, *([e.submitter] if submitter else []), e.flow, e.phase, e.detail,
                      when(e.submitted_at), seconds(e.duration), ", ".join(e.participants))
    return table


def experiment_lines(e: ExperimentStatus) -> list[str]:
    """``fx experiment show``: one ``key: value`` a line."""
    lines = [f"experiment    {e.id}", f"submitter     {e.submitter}", f"flow          {e.flow}",
             f"package       {e.digest}", f"phase         {e.phase}", f"detail        {e.detail}"]
    if e.reviewers:
        lines.append(f"in review by  {', '.join(e.reviewers)}")
    if e.waiting_for:
        lines.append(f"waiting for   {', '.join(e.waiting_for)}")
    if e.step:
        lines.append(f"step          {e.step} (round {e.round}, since {when(e.step_at)})")
    lines += [f"participants  {', '.join(e.participants)}",
              f"submitted     {when(e.submitted_at)}",
              f"started       {when(e.started_at) or '-'}",
              f"ended         {when(e.ended_at) or '-'}",
              f"duration      {seconds(e.duration)}"]
    if e.reason:
        lines.append(f"reason        {e.reason}")
    lines += [f"run id        {e.run_id}", f"checkpoint    {'yes' if e.checkpoint else 'no'}"]
    return lines

