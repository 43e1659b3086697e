"""One experiment on the director, from its review to its last event: a coroutine on the
director's loop that relays between the experiment's aggregator process (over a pipe, read and
written by two threads of its own) and its envoys (over their work streams)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from multiprocessing.process import BaseProcess
from typing import Any

from fedloom.federation import transport
from fedloom.federation.names import SHOWN_IN_ERRORS, listed
from fedloom.federation.nodes import lifeline
from fedloom.federation.nodes.director import Director, Experiment
from fedloom.federation.nodes.experiment_process import (
    ExperimentSpec,
    aggregator_main,
    send_package,
)
from fedloom.federation.review.phase import ReviewPhase, send_plan
from fedloom.federation.transport import bulk
from fedloom.federation.transport.pipes import FramePipe
from fedloom.federation.transport.proto import fedloom_pb2 as pb

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0  # seconds for envoys to start their collaborator processes


class AggregatorLink:
    """The aggregator process and its pipe: messages in go to the experiment's inbox (on the
    loop); messages out are written by a thread of their own, in order, so a full pipe never
    blocks the loop."""

    def __init__(self, director: Director, experiment: Experiment) -> None:
        self._director = director
        self._experiment = experiment
        self._outgoing: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.process: BaseProcess | None = None
        self._pipe: FramePipe | None = None

    def start(self) -> None:
        """Spawn the process and hand it the package (in a worker thread: it takes a while)."""
        exp, director = self._experiment, self._director
        ctx = lifeline.context()
        parent, child = ctx.Pipe()
        spec = ExperimentSpec(exp.digest, exp.collaborators, exp.run_id, exp.checkpoint,
                              director.config.aggregator, str(director.workdir / "aggregator"),
                              str(director.checkpoint_root))
        self.process = ctx.Process(target=aggregator_main, args=(child, spec), daemon=True,
                                   name=f"fedloom-aggregator-{exp.id}")
        lifeline.start(self.process)  # it dies with the director, however the director ends
        child.close()
        self._pipe = FramePipe(parent)
        threading.Thread(target=self._pump, daemon=True,
                         name=f"fedloom-from-aggregator-{exp.id}").start()
        send_package(self._pipe, exp.package)
        threading.Thread(target=self._write, daemon=True,
                         name=f"fedloom-to-aggregator-{exp.id}").start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._outgoing.put(message)

    def stop(self) -> int | None:
        """Ends the process (asked first; killed if it does not go); returns its exit code."""
        self._outgoing.put(("stop",))
        self._outgoing.put(None)
        process = self.process
        if process is None:
            return None
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        return process.exitcode

    def exit_code(self) -> int | None:
        process = self.process
        if process is None:
            return None
        process.join(timeout=5)
        return process.exitcode

    def _write(self) -> None:
        assert self._pipe is not None
        while (message := self._outgoing.get()) is not None:
            try:
                self._pipe.send(message)
            except OSError:  # it died: the pump reports it
                return

    def _pump(self) -> None:
        assert self._pipe is not None
        put = self._experiment.inbox.put_nowait
        try:
            while True:
                self._director.post(put, self._pipe.recv())
        except (EOFError, OSError):
            self._director.post(put, ("exited",))


class ExperimentRun:
    """Review, start, relay, end: :meth:`run` is the experiment's whole course."""

    def __init__(self, director: Director, experiment: Experiment) -> None:
        self.director = director
        self.experiment = experiment
        self.rejoining: set[str] = set()  # envoys back after being lost, not yet ready
        self.fanouts: Counter[str] = Counter()  # step -> times sent out: its round
        self._step_began = 0.0  # when the flow went on from the latest fan-out (or started)
        self._failure_sent = False
        self._aggregator: AggregatorLink | None = None

    async def run(self) -> None:
        exp, status, reason = self.experiment, "failed", ""
        try:
            status, reason = await self._course()
        except Exception as exc:  # a bug here must not take the director down
            log.exception("experiment %s", exp.id)
            reason = f"the director failed while running it: {type(exc).__name__}: {exc}"
            self._fail(reason)
        finally:
            if self._aggregator is not None:
                await asyncio.to_thread(self._aggregator.stop)
            self.director.end(exp, status, reason)

    async def _course(self) -> tuple[str, str]:
        """(final status, reason)."""
        review = ReviewPhase(self.director, self.experiment)
        reason = await review.run()
        if reason:
            if not review.concluded:
                self._fail(reason)
                return self._ending(reason), reason
            return "rejected", reason
        reason = self._check_approved()
        if reason:
            self._fail(reason)
            return "failed", reason
        self.director.set_status(self.experiment, "running")
        self.experiment.events.status("running")
        self._offer(self.experiment.collaborators)
        # The aggregator process starts (imports, package, initial state, private attributes)
        # while the envoys start their collaborators; it runs the flow once they are all up.
        self._aggregator = AggregatorLink(self.director, self.experiment)
        await asyncio.to_thread(self._aggregator.start)
        reason = await self._wait_ready()
        if reason:
            self._fail(reason)
            return self._ending(reason), reason
        self._aggregator.send(("go",))
        self._step_began = time.time()
        reason = await self._loop()
        return (self._ending(reason) if reason else "done"), reason

    @staticmethod
    def _ending(reason: str) -> str:
        return "cancelled" if reason.startswith(("cancel", "the director is stopping")) \
            else "failed"

    def _offer(self, names: tuple[str, ...] | list[str]) -> None:
        exp = self.experiment
        # Envoys run the package they reviewed, not a new copy. One message for all of them.
        offer = pb.Work(experiment=exp.id, offer=pb.Offer(
            digest=exp.digest, collaborators=exp.collaborators, run_id=exp.run_id,
            checkpoint=exp.checkpoint))
        for name in names:
            self.director.send(name, offer)

    async def _wait_ready(self) -> str:
        waiting = set(self.experiment.collaborators)
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while waiting:
            try:
                message = await asyncio.wait_for(
                    self.experiment.inbox.get(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                return (f"envoys {listed(sorted(waiting), SHOWN_IN_ERRORS)} did not start their "
                        f"collaborators within {READY_TIMEOUT:g} s")
            if message[0] == "ready":
                waiting.discard(message[1])
            elif message[0] == "failed":  # the aggregator process could not set up
                failure = pb.Failure.FromString(message[1])
                self.experiment.events.put(pb.Event(failure=failure))  # with its traceback
                self._failure_sent = True
                return failure.message or "the aggregator could not start"
            elif message[0] in ("failure", "cancel", "exited") or \
                    (message[0] == "lost" and message[1] in self.experiment.collaborators):
                return await self._reason(message)
        return ""

    def _check_approved(self) -> str:
        exp = self.experiment
        approved = self.director.desk.approved_digest(exp.id)
        if approved != exp.digest:  # cannot happen unless memory was tampered with: refuse
            return (f"the director approved package {str(approved)[:12]}, not "
                    f"{exp.digest[:12]}; refusing to run it")
        return ""

    async def _loop(self) -> str:
        exp, aggregator = self.experiment, self._aggregator
        assert aggregator is not None
        while True:
            message = await exp.inbox.get()
            kind = message[0]
            if kind == "chains":
                self._send_chains(*message[1:])
            elif kind == "outcome":
                _, _name, request, outcome, frame = message
                aggregator.send(("result", request, outcome, frame))
            elif kind == "outputs":
                exp.events.put(pb.Event(outputs=pb.Outputs(
                    tasks=[pb.TaskInfo.FromString(info) for info in message[1]])))
            elif kind == "done":
                self._final_state(message[1])
                return ""
            elif kind == "failed":
                failure = pb.Failure.FromString(message[1])
                exp.events.put(pb.Event(failure=failure))
                self._failure_sent = True
                return failure.message or "failed"
            elif kind == "lost":  # the aggregator decides: drop it (a policy) or stop
                self.rejoining.discard(message[1])
                aggregator.send(message)
            elif kind in ("returned", "decision", "ready") or \
                    (kind == "failure" and message[1] in self.rejoining):
                self._rejoin(message)
            elif kind == "failure":  # its collaborator is gone: like a lost envoy
                aggregator.send(("lost", message[1], f"failed: {message[2].message}"))
            elif kind in ("cancel", "exited"):
                reason = await self._reason(message)
                aggregator.send(("abort", reason))
                self._fail(reason)
                return reason

    def _final_state(self, frame: bulk.Frame) -> None:
        """To the user: inside the events when small; else kept for the user to take (Bulk)
        while the director keeps the experiment in memory."""
        exp = self.experiment
        if len(frame) <= bulk.INLINE_BYTES:
            for part in transport.chunks(frame):
                exp.events.put(pb.Event(final_state=part))
            return
        exp.result = frame
        exp.events.put(pb.Event(final_state_bulk=len(frame)))

    def _send_chains(self, request: str, step: str, names: list[str], frame: bulk.Frame
                     ) -> None:
        """A fan-out's state to its envoys: inside the work item when small, else announced
        and pulled by each envoy (Bulk) from one copy held here."""
        exp = self.experiment
        size = len(frame)
        self.fanouts[step] += 1
        now = time.time()
        took, self._step_began = now - (self._step_began or now), now
        exp.step, exp.round, exp.step_at = step, self.fanouts[step], now
        log.info("experiment %s: step '%s' round %d sent to %d envoy(s): %s; the previous "
                 "step took %.2f s", exp.id, step, exp.round, len(names), listed(names), took)
        exp.events.put(pb.Event(progress=pb.Progress(
            step=step, round=exp.round, participants=names, at=now, previous_seconds=took)))
        # The same messages go to every envoy of the fan-out: built once.
        if size <= bulk.INLINE_BYTES:
            works = [pb.Work(experiment=exp.id, chain=pb.ChainRequest(
                request=request, step=step, state=part)) for part in transport.chunks(frame)]
        else:
            self.director.outbox.offer(exp.id, request, frame, set(names))
            works = [pb.Work(experiment=exp.id, chain=pb.ChainRequest(
                request=request, step=step, bulk_bytes=size))]
        for name in names:
            for work in works:
                self.director.send(name, work)

    def _rejoin(self, message: tuple[Any, ...]) -> None:
        """An envoy that was lost and came back: review again (it lost its approval with its
        process), then its collaborator starts and the aggregator may give it work again."""
        exp, (kind, name) = self.experiment, message[:2]
        assert self._aggregator is not None
        if kind == "returned" and name in exp.collaborators:
            log.info("envoy '%s' is back: offering experiment %s to it again", name, exp.id)
            self.rejoining.add(name)
            send_plan(self.director.send, exp, [name], self.director.outbox)
        elif kind == "decision" and name in self.rejoining:
            decision = message[2]
            if decision.approved and decision.digest == exp.digest:
                self.director.record_decision(exp, decision)
                self._offer([name])
            else:
                self.rejoining.discard(name)
                log.info("envoy '%s' did not approve experiment %s again: it stays out",
                         name, exp.id)
        elif kind == "ready" and name in self.rejoining:
            self.rejoining.discard(name)
            self._aggregator.send(("rejoined", name))
            log.info("envoy '%s' rejoined experiment %s", name, exp.id)
        elif kind == "failure":
            self.rejoining.discard(name)
            log.info("envoy '%s' could not rejoin experiment %s: %s", name, exp.id,
                     message[2].message)

    async def _reason(self, message: tuple[Any, ...]) -> str:
        kind = message[0]
        if kind == "lost":
            return (f"envoy '{message[1]}' {message[2]} during the experiment (its "
                    "collaborator is gone; the run cannot go on)")
        if kind == "failure":
            return f"envoy '{message[1]}' could not run its collaborator: {message[2].message}"
        if kind == "cancel":
            return str(message[1]) if len(message) > 1 else "cancelled by the user"
        code = await asyncio.to_thread(self._aggregator.exit_code) \
            if self._aggregator is not None else None
        return (f"the aggregator process of experiment {self.experiment.id} died "
                f"(exit code {code}); see the director's log")

    def _fail(self, reason: str) -> None:
        if self._failure_sent:  # the user has the failure already, in more detail
            return
        self._failure_sent = True
        self.experiment.events.failure(reason)
