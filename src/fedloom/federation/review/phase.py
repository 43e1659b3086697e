"""The review phase of an experiment on the director: the director's own review first, then the
plan goes to the experiment's envoys and each reviews it. Decisions arrive as events on the
experiment's inbox (a future's callback for the director's, reports for the envoys'), so the
phase waits on one queue and a cancel or a lost envoy ends it at once. A coroutine on the
director's loop; decoding the plan runs in a worker thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from fedloom.errors import FedloomError
from fedloom.federation import transport
from fedloom.federation.names import SHOWN, listed
from fedloom.federation.review.desk import Plan, ReviewDesk
from fedloom.federation.transport import bulk
from fedloom.federation.transport.proto import fedloom_pb2 as pb

DIRECTOR = "director"
STATUS_EVERY = 1.0  # seconds between statuses of who is left to review, when many are


def send_plan(send: Callable[[str, pb.Work], None], experiment: Any,
              names: Sequence[str], outbox: bulk.Outbox) -> None:
    """The experiment's plan to each named envoy, for review: its package inside the work items
    (in chunks) when small, else announced there and pulled (Bulk) from the one copy here.
    Every envoy is sent the same messages (built once: with a thousand envoys, each naming
    a thousand collaborators, building them per envoy cost seconds)."""
    size = len(experiment.package)
    if size > bulk.INLINE_BYTES:
        outbox.offer(experiment.id, bulk.PACKAGE, experiment.package, set(names))
    parts = [pb.Chunk(total=size)] if size > bulk.INLINE_BYTES else \
        transport.chunks(experiment.package)
    works = [pb.Work(experiment=experiment.id, review=pb.ReviewRequest(
        digest=experiment.digest, submitter=experiment.submitter,
        collaborators=experiment.collaborators, package=part,
        bulk_bytes=size if size > bulk.INLINE_BYTES else 0)) for part in parts]
    for name in names:
        for work in works:
            send(name, work)


class ReviewPhase:
    def __init__(self, director: Any, experiment: Any) -> None:
        self.director = director  # director.Director (not imported: no cycle)
        self.experiment = experiment  # director.Experiment
        self.desk: ReviewDesk = director.desk
        self.send: Callable[[str, pb.Work], None] = director.send
        self.outbox: bulk.Outbox = director.outbox
        self.decisions: dict[str, pb.Decision] = {}
        self.concluded = False  # the user was sent the outcome table
        self.asked: set[str] = set()  # envoys the plan was sent to
        self._shown_at = 0.0  # when who is left was last told (monotonic)
        self._later: asyncio.TimerHandle | None = None  # telling it, held back

    async def run(self) -> str:
        """'' when every participant approved; otherwise why not. When the review concluded
        (accepted or rejected), the user was sent every decision; when it was cut short
        (cancelled, an envoy lost), the caller reports the reason."""
        exp = self.experiment
        self._status("waiting for the review by the director")
        try:
            future = await asyncio.to_thread(self._submit_to_desk)
        except FedloomError as exc:
            self._add(self.desk.refuse(exp.id, exp.submitter, exp.digest, str(exc)))
            return self._conclude()
        self._when_decided(future)
        stopped = await self._collect({DIRECTOR})
        if stopped or not self._all_approved():
            self.desk.withdraw(exp.id, stopped or "ended")
            return stopped or self._conclude()
        self._send_plan()
        self._status(f"waiting for the review by {listed(exp.collaborators)}")
        try:
            stopped = await self._collect(set(exp.collaborators))
        finally:
            if self._later is not None:
                self._later.cancel()
        return stopped or self._conclude()

    def _submit_to_desk(self) -> Future[pb.Decision]:
        """Decodes the plan and puts it on the director's desk (a worker thread: decoding
        hashes the package, and an automatic decision is written to disk)."""
        exp = self.experiment
        plan = Plan.from_bytes(exp.id, exp.submitter, exp.collaborators, exp.package,
                               exp.digest)
        return self.desk.submit(plan)

    def _status(self, text: str) -> None:
        self.experiment.events.put(pb.Event(status=text))

    def _status_of(self, waiting: set[str]) -> None:
        """Who is left to decide: at once while few are, else at most once a second (a
        thousand decisions must not make a thousand events), the latest always shown."""
        now = time.monotonic()
        if len(waiting) > SHOWN and now - self._shown_at < STATUS_EVERY:
            if self._later is None:
                self._later = asyncio.get_running_loop().call_later(
                    STATUS_EVERY - (now - self._shown_at), self._status_of_now, waiting)
            return
        self._status_of_now(waiting)

    def _status_of_now(self, waiting: set[str]) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self._shown_at = time.monotonic()
        left = [n for n in self.experiment.collaborators if n in waiting]
        self._status(f"waiting for the review by {listed(left)}"
                     + (f" ({len(left)} of {len(self.experiment.collaborators)})"
                        if len(left) > SHOWN else ""))

    def _when_decided(self, future: Future[pb.Decision]) -> None:
        def forward(done: Future[pb.Decision]) -> None:  # in whichever thread decided
            if not done.cancelled():
                self.director.post(self.experiment.inbox.put_nowait,
                                   ("decision", DIRECTOR, done.result()))
        future.add_done_callback(forward)

    def _send_plan(self) -> None:
        self.asked = set(self.experiment.collaborators)
        send_plan(self.send, self.experiment, self.experiment.collaborators, self.outbox)

    async def _collect(self, waiting: set[str]) -> str:
        """Waits for the decisions of ``waiting``; stops early at a rejection. Returns why the
        experiment cannot go on for another reason (cancelled, an envoy lost), else ''."""
        self.experiment.reviewers = waiting  # who has yet to decide, as they do
        while waiting:
            message = await self.experiment.inbox.get()
            kind = message[0]
            if kind == "decision" and message[1] in waiting:
                decision = self._checked(message[1], message[2])
                self._add(decision)
                waiting.discard(message[1])
                if not decision.approved:
                    return ""
                if waiting:  # who is left, as its submitter waits
                    self._status_of(waiting)
            elif kind == "cancel":
                return f"{message[1] if len(message) > 1 else 'cancelled'} during the review"
            elif kind == "lost" and message[1] in self.experiment.collaborators:
                return f"envoy '{message[1]}' {message[2]} during the review"
            elif kind == "failure":
                return f"envoy '{message[1]}' failed during the review: {message[2].message}"
        return ""

    def _checked(self, participant: str, decision: pb.Decision) -> pb.Decision:
        """A decision counts only for this experiment's package, from whom it claims to be."""
        exp = self.experiment
        if decision.participant != participant or decision.digest != exp.digest or \
                decision.experiment != exp.id:
            return pb.Decision(participant=participant, approved=False, decided_by="director",
                               at=time.time(), digest=exp.digest, experiment=exp.id,
                               submitter=exp.submitter,
                               reason=f"its decision was for package {decision.digest[:12]} of "
                                      f"experiment {decision.experiment}, not this one")
        return decision

    def _add(self, decision: pb.Decision) -> None:
        self.decisions[decision.participant] = decision
        self.director.record_decision(self.experiment, decision)

    def _all_approved(self) -> bool:
        return all(d.approved for d in self.decisions.values())

    def _undecided(self, name: str) -> pb.Decision:
        """A participant without a decision: the review stops at the first rejection, so the
        user learns at once and no admin reviews a plan that cannot run."""
        exp = self.experiment
        if name in self.asked:
            return pb.Decision(participant=name, decided_by="withdrawn", experiment=exp.id,
                               digest=exp.digest, reason="undecided when the plan was rejected")
        return pb.Decision(participant=name, experiment=exp.id, digest=exp.digest,
                           reason="not asked: the plan was rejected before it reached them")

    def _conclude(self) -> str:
        exp = self.experiment
        participants: Sequence[str] = (DIRECTOR, *exp.collaborators)
        accepted = len(self.decisions) == len(participants) and self._all_approved()
        table = [self.decisions.get(name) or self._undecided(name) for name in participants]
        exp.events.put(pb.Event(review=pb.ReviewOutcome(accepted=accepted, decisions=table)))
        self.concluded = True
        if accepted:
            return ""
        rejected = [d for d in self.decisions.values() if not d.approved]
        return "rejected in review: " + "; ".join(
            f"{d.participant}{f' ({d.reason})' if d.reason else ''}" for d in rejected)

