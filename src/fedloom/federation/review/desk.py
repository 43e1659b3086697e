"""Plan review: what a node's admin sees of an experiment, and the decisions they make.

Every experiment starts with a review on the director, then on each of its envoys. A node with
``review_experiment: false`` approves at once (recorded as automatic). Otherwise the plan waits
on the node's :class:`ReviewDesk` until its admin decides, at the console prompt or with
``fx director review`` / ``fx envoy review``; waiting blocks nothing else on the node.

A decision is bound to the package's sha256: a node runs only the package it approved. Every
decision (and every plan withdrawn undecided) is appended to ``reviews.jsonl`` in the node's
work folder, which survives restarts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from fedloom.errors import FedloomError
from fedloom.federation.package import ExperimentPackage, describe_package
from fedloom.federation.review.preview import StateEntry, preview_state
from fedloom.federation.transport.proto import fedloom_pb2 as pb

log = logging.getLogger(__name__)

AUTO = "auto (review off)"  # the node has review_experiment: false
LOG_FILE = "reviews.jsonl"
SOURCE_LINES_SHOWN = 400  # per file; longer files are cut, with their digest shown


class ReviewError(FedloomError):
    """A review command that cannot be carried out (no such pending plan, digest mismatch)."""


@dataclass(frozen=True)
class Plan:
    """An experiment as its reviewers see it."""

    experiment: str
    submitter: str
    digest: str
    collaborators: tuple[str, ...]
    package: ExperimentPackage
    initial_state: tuple[StateEntry, ...]

    @classmethod
    def from_bytes(cls, experiment: str, submitter: str, collaborators: Sequence[str],
                   package_bytes: bytes, digest: str) -> Plan:
        """Raises a PackageError when the bytes are not the package ``digest`` names."""
        package = ExperimentPackage.from_bytes(package_bytes, expected_digest=digest)
        return cls(experiment, submitter, digest, tuple(collaborators), package,
                   tuple(preview_state(package.initial_state)))

    @property
    def flow_class(self) -> str:
        return self.package.flow_class

    def text(self) -> str:
        """The plan as the console and ``fx ... review show`` print it."""
        return render_plan(self)


def render_plan(plan: Plan) -> str:
    about = describe_package(plan.package)
    meta = about["metadata"]
    lines = [f"Experiment {plan.experiment}, submitted by '{plan.submitter}'",
             f"  package sha256 {plan.digest}",
             f"  flow {about['flow_class']} from {about['source'] or about['entry']} "
             f"(fedloom {meta.get('fedloom', '?')}, python {meta.get('python', '?')})",
             f"  participants: the director (aggregator), envoys {', '.join(plan.collaborators)}",
             "", "Steps (where each runs):"]
    for step in about["steps"]:
        extra = " (join)" if step["join"] else ""
        lines.append(f"  {step['name']:<28} {step['placement']}{extra}  line {step['line']}")
    lines += ["", "Transitions (what is sent to the next step):"]
    for move in about["transitions"]:
        lines.append(f"  {move['from']} -> {move['to']}{_sent(move)}")
    lines += ["", "Initial state (sent by the submitter to the director):"]
    for entry in plan.initial_state or (StateEntry("(none)", "", "", 0),):
        lines.append(f"  {entry.name:<20} {entry.type:<28} {entry.detail}"
                     f"{f'  [{_size(entry.nbytes)}]' if entry.nbytes else ''}")
    if meta.get("resume"):
        resume = json.loads(meta["resume"])
        lines += ["", f"Resumes run {resume['run_id']} after its step '{resume['step']}' (the "
                  "initial state below is that step's recorded state)"]
    if meta.get("straggler_policy"):
        lines += ["", f"Straggler policy (per fan-out step, * = all): {meta['straggler_policy']}"]
    lines += ["", f"Requirements: {', '.join(about['requirements']) or '(none)'}"]
    if meta.get("unresolved_imports"):
        lines.append(f"Imports not found as installed distributions: "
                     f"{meta['unresolved_imports']}")
    for warning in about["warnings"]:
        lines.append(f"WARNING: {warning}")
    for path, text in plan.package.files.items():
        lines += ["", f"Source {path} ({len(text.splitlines())} lines):"]
        lines += _numbered(text)
    return "\n".join(lines)


def _sent(move: dict[str, object]) -> str:
    parts = []
    if move["foreach"]:
        parts.append(f"one copy per collaborator in {move['foreach']}")
    if move["include"] is not None:
        parts.append(f"only {move['include']}")
    elif move["exclude"] is not None:
        parts.append(f"all public attributes except {move['exclude']}")
    else:
        parts.append("all public attributes")
    return "  [" + "; ".join(parts) + "]"


def _numbered(text: str) -> list[str]:
    rows = text.splitlines()
    shown = [f"  {n:>4} | {row}" for n, row in enumerate(rows[:SOURCE_LINES_SHOWN], 1)]
    if len(rows) > SOURCE_LINES_SHOWN:
        shown.append(f"  ... {len(rows) - SOURCE_LINES_SHOWN} more lines (fx ... review show "
                     "prints the same; the package digest covers them all)")
    return shown


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{nbytes} B"


# -- the log -------------------------------------------------------------------------------------


class ReviewLog:
    """Append-only JSON lines; each line is flushed and synced before the decision counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())

    def decisions(self) -> list[pb.Decision]:
        if not self.path.is_file():
            return []
        found = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d is not a JSON line; skipped", self.path, number)
                continue
            if record.get("event") == "decision":
                found.append(json_format.ParseDict(record["decision"], pb.Decision()))
        return found


# -- the desk -------------------------------------------------------------------------------------


@dataclass
class Pending:
    plan: Plan
    future: Future[pb.Decision]
    since: float = field(default_factory=time.time)


class ReviewDesk:
    """A node's pending plans and decisions. Thread-safe; decisions resolve futures."""

    def __init__(self, participant: str, review: bool, workdir: Path,
                 timeout: float | None = None) -> None:
        self.participant = participant
        self.review = review
        self.timeout = timeout  # seconds a plan may wait; then it is rejected
        self.log = ReviewLog(workdir / LOG_FILE)
        self._lock = threading.Condition()
        self._pending: dict[str, Pending] = {}
        self._approved: dict[str, str] = {}  # experiment -> the digest approved
        self.on_pending: list[Callable[[Pending], None]] = []

    def submit(self, plan: Plan) -> Future[pb.Decision]:
        """The decision on ``plan``, now (automatic) or when the admin makes it."""
        future: Future[pb.Decision] = Future()
        if not self.review:
            future.set_result(self._record(plan, True, "", AUTO))
            return future
        pending = Pending(plan, future)
        with self._lock:
            self._pending[plan.experiment] = pending
            self._lock.notify_all()
        log.info("experiment %s from '%s' awaits review (package %s): approve or reject at the "
                 "prompt, or with fx %s review", plan.experiment, plan.submitter,
                 plan.digest[:12], "director" if self.participant == "director" else "envoy")
        for listener in self.on_pending:
            listener(pending)
        if self.timeout is not None:
            timer = threading.Timer(self.timeout, self._expire, (plan.experiment, plan.digest))
            timer.daemon = True
            timer.start()
            future.add_done_callback(lambda _: timer.cancel())
        return future

    def _expire(self, experiment: str, digest: str) -> None:
        with contextlib.suppress(ReviewError):  # decided or withdrawn just now: nothing to do
            self.decide(experiment, False, f"no decision within {self.timeout:g} s "
                        "(review_timeout)", "timeout", digest)

    def refuse(self, experiment: str, submitter: str, digest: str, why: str) -> pb.Decision:
        """An automatic rejection of a plan that cannot even be shown (e.g. a corrupt package)."""
        decision = self._decision(experiment, submitter, digest, False, why, "automatic check")
        self.log.append({"event": "decision", "decision": json_format.MessageToDict(decision)})
        return decision

    def decide(self, experiment: str, approve: bool, reason: str, by: str,
               digest: str = "") -> pb.Decision:
        with self._lock:
            pending = self._pending.get(experiment)
            if pending is None:
                raise ReviewError(f"no experiment {experiment} awaits review here; "
                                  f"pending: {sorted(self._pending) or 'none'}")
            if digest and digest != pending.plan.digest:
                raise ReviewError(f"experiment {experiment} is package {pending.plan.digest}, "
                                  f"not the {digest} you reviewed; show it again")
            del self._pending[experiment]
            if approve:  # with the pending entry, so a withdrawal cannot come in between
                self._approved[experiment] = pending.plan.digest
        decision = self._record(pending.plan, approve, reason, by)
        pending.future.set_result(decision)
        return decision

    def withdraw(self, experiment: str, why: str) -> None:
        """The experiment ended before this node decided (cancelled, rejected elsewhere)."""
        with self._lock:
            pending = self._pending.pop(experiment, None)
            self._approved.pop(experiment, None)
        if pending is not None:
            pending.future.cancel()
            self.log.append({"event": "withdrawn", "experiment": experiment, "why": why,
                             "digest": pending.plan.digest, "at": time.time()})
            log.info("experiment %s withdrawn before review: %s", experiment, why)

    def pending(self) -> list[Pending]:
        with self._lock:
            return sorted(self._pending.values(), key=lambda p: p.since)

    def get(self, experiment: str) -> Pending:
        with self._lock:
            pending = self._pending.get(experiment)
        if pending is None:
            raise ReviewError(f"no experiment {experiment} awaits review here")
        return pending

    def approved_digest(self, experiment: str) -> str | None:
        """The digest this node approved for ``experiment``, if it did."""
        with self._lock:
            return self._approved.get(experiment)

    def _record(self, plan: Plan, approve: bool, reason: str, by: str) -> pb.Decision:
        decision = self._decision(plan.experiment, plan.submitter, plan.digest, approve, reason,
                                  by)
        self.log.append({"event": "decision", "decision": json_format.MessageToDict(decision)})
        if approve and by == AUTO:
            with self._lock:
                self._approved[plan.experiment] = plan.digest
        log.info("experiment %s %s by %s (%s)%s", plan.experiment,
                 "approved" if approve else "rejected", self.participant, by,
                 f": {reason}" if reason else "")
        return decision

    def _decision(self, experiment: str, submitter: str, digest: str, approve: bool,
                  reason: str, by: str) -> pb.Decision:
        return pb.Decision(participant=self.participant, approved=approve, reason=reason,
                           decided_by=by, at=time.time(), digest=digest, experiment=experiment,
                           submitter=submitter)
