"""The director: a long-lived gRPC server that queues experiments, relays between each
experiment's aggregator process and its envoys, and streams events to the submitter.

Threads, not polling: envoys wait on their work queue, users on their event queue, each running
experiment on its inbox; every wait has a timeout so a vanished peer is noticed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from fedloom.checkpoint.transfer import pack_run
from fedloom.errors import FedloomError
from fedloom.federation import bulk, transport
from fedloom.federation.config import DirectorConfig
from fedloom.federation.experiment_process import ExperimentSpec, aggregator_main, send_package
from fedloom.federation.package import ExperimentPackage
from fedloom.federation.pipes import FramePipe
from fedloom.federation.pki import peer_kind, peer_name
from fedloom.federation.proto import fedloom_pb2 as pb
from fedloom.federation.proto import fedloom_pb2_grpc as rpc
from fedloom.federation.review import ReviewDesk
from fedloom.federation.review_phase import ReviewPhase, send_plan
from fedloom.federation.review_service import LocalReviewServer
from fedloom.runtime.local.runtime import new_run_id

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0  # seconds for envoys to start their collaborator processes
MISSED_HEALTH_CHECKS = 3  # periods of silence after which an envoy counts as lost
RESULT_KEPT_SECONDS = 600.0  # a large final state waits this long for its submitter


@dataclass
class EnvoyLink:
    name: str
    session: str
    work: queue.Queue[pb.Work | None] = field(default_factory=queue.Queue)
    online: bool = True
    last_seen: float = field(default_factory=time.time)
    experiment: str = ""
    lost_reason: str = "disconnected"


@dataclass
class Experiment:
    id: str
    submitter: str
    collaborators: tuple[str, ...]
    digest: str
    package: bytes
    checkpoint: bool
    flow_name: str
    run_id: str = field(default_factory=new_run_id)
    events: queue.Queue[pb.Event | None] = field(default_factory=queue.Queue)
    inbox: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)
    status: str = "queued"
    result: Any = None  # a large final state, until its submitter takes it (Bulk.Result)


class Director(rpc.DirectorServicer):
    """The director's state and its gRPC service."""

    def __init__(self, config: DirectorConfig, server_credentials: grpc.ServerCredentials | None,
                 workdir: Path) -> None:
        self.config = config
        self._credentials = server_credentials
        self._workdir = workdir
        self._lock = threading.Condition()
        self._envoys: dict[str, EnvoyLink] = {}
        self._experiments: dict[str, Experiment] = {}
        self._queue: list[str] = []
        self._ids = itertools.count(1)
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()
        self.desk = ReviewDesk("director", config.review_experiment, workdir,
                               config.review_timeout)
        self._review_server: LocalReviewServer | None = None
        self.outbox = bulk.Outbox()  # large chain states, until their envoys pull them

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Listen; returns the port (a free one when the config says 0)."""
        endpoint = transport.Endpoint(self.config.listen_host, self.config.listen_port)
        self._server, port = transport.new_server(self._credentials, endpoint)
        rpc.add_DirectorServicer_to_server(self, self._server)
        self._server.add_generic_rpc_handlers((bulk.handler(self),))
        self._review_server = LocalReviewServer(self.desk, self._workdir)
        self._review_server.start()
        self._server.start()
        threading.Thread(target=self._schedule, name="fedloom-scheduler", daemon=True).start()
        return port

    def stop(self, grace: float = 2.0) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
            for link in self._envoys.values():
                link.work.put(None)
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
        if self._review_server is not None:
            self._review_server.stop()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    # -- envoys ------------------------------------------------------------------------------

    def Register(self, request: pb.RegisterRequest,
                 context: grpc.ServicerContext) -> pb.RegisterReply:
        name = self._authenticate(context, request.name, "envoy")
        link = EnvoyLink(name, uuid.uuid4().hex)
        left: Experiment | None = None
        with self._lock:
            old = self._envoys.get(name)
            if old is not None:  # a restarted envoy replaces its old connection
                old.online = False
                old.work.put(None)
                # Its collaborator went with the old connection, even if the stream did not
                # break yet (a quick reconnect): the experiment must hear it before "returned".
                left = self._experiments.get(old.experiment)
            self._envoys[name] = link
            # Back while an experiment it belongs to runs: it is offered that one again.
            running = next((e for e in self._experiments.values()
                            if e.status == "running" and name in e.collaborators), None)
            if running is not None:
                link.experiment = running.id
            self._lock.notify_all()
        log.info("envoy '%s' registered", name)
        if left is not None and left.status == "running":
            left.inbox.put(("lost", name, "reconnected (its collaborator did not survive)"))
        if running is not None:
            running.inbox.put(("returned", name))
        return pb.RegisterReply(session=link.session,
                                health_check_period=self.config.envoy_health_check_period)

    def GetWork(self, request: pb.WorkRequest,
                context: grpc.ServicerContext) -> Iterator[pb.Work]:
        link = self._link(request.session, context)
        period = self.config.envoy_health_check_period
        try:
            while context.is_active() and link.online and not self._stopping.is_set():
                try:
                    item = link.work.get(timeout=period)
                except queue.Empty:
                    silent = time.time() - link.last_seen
                    if silent > MISSED_HEALTH_CHECKS * period:
                        link.lost_reason = (f"missed its health checks (silent for "
                                            f"{silent:.0f} s; expected every {period:g} s)")
                        return
                    item = pb.Work(ping=time.time())  # a dead connection breaks here
                if item is None:
                    return
                yield item
        finally:
            self._envoy_lost(link)

    def Heartbeat(self, request: pb.WorkRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._link(request.session, context).last_seen = time.time()
        return pb.Ack()

    def SendReport(self, request_iterator: Iterator[pb.Report],
                   context: grpc.ServicerContext) -> pb.Ack:
        first = next(request_iterator, None)
        if first is None:
            return pb.Ack(note="empty report")
        link, experiment = self._reporting(first, context)
        kind = first.WhichOneof("kind")
        if kind == "decision":
            experiment.inbox.put(("decision", link.name, first.decision))
        elif kind == "ready":
            experiment.inbox.put(("ready", link.name))
        elif kind == "failure":
            experiment.inbox.put(("failure", link.name, first.failure))
        elif kind == "outcome":
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT,
                  "chain outcomes go on fedloom.v1.Bulk/Push (is this envoy an older fedloom?)")
        return pb.Ack()

    def _reporting(self, report: pb.Report, context: grpc.ServicerContext
                   ) -> tuple[EnvoyLink, Experiment]:
        """The envoy sending ``report`` (seen now) and its experiment, which must be one of
        that envoy's."""
        link = self._link(report.session, context)
        link.last_seen = time.time()
        experiment = self._experiments.get(report.experiment)
        if experiment is None or link.name not in experiment.collaborators:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"envoy '{link.name}' is not part of experiment {report.experiment}")
        return link, experiment

    def pull_state(self, request: pb.PullRequest,
                   context: grpc.ServicerContext) -> Iterator[bytes]:
        """Bulk.Pull: a chain's state, to an envoy it was sent to."""
        link = self._link(request.session, context)
        link.last_seen = time.time()
        frame = self.outbox.take(request.experiment, request.request, link.name)
        if frame is None:
            _deny(context, grpc.StatusCode.NOT_FOUND,
                  f"no state waits for envoy '{link.name}' under request {request.request!r} of "
                  f"experiment {request.experiment}: the experiment ended or moved on")
        yield from bulk.pieces(frame)

    def push_state(self, messages: Iterator[bytes], context: grpc.ServicerContext) -> pb.Ack:
        """Bulk.Push: a chain's outcome (a Report header) and its state."""
        try:
            head = pb.Report.FromString(next(messages, b""))
        except DecodeError:
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT, "Bulk.Push: a corrupt header")
        link, experiment = self._reporting(head, context)
        if experiment.status != "running":  # a late result of an ended run: nobody reads it
            _deny(context, grpc.StatusCode.FAILED_PRECONDITION,
                  f"experiment {experiment.id} is not running (it is {experiment.status})")
        if head.WhichOneof("kind") != "outcome":
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT, "Bulk.Push carries chain outcomes")
        try:
            receiver = bulk.Receiver(head.bulk_bytes, f"result of '{link.name}'")
            for piece in messages:
                receiver.add(piece)
            frame = receiver.finish()
        except transport.TransportError as exc:
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        head.outcome.collaborator = link.name  # an envoy answers for itself only
        experiment.inbox.put(("outcome", link.name, head.request,
                              head.outcome.SerializeToString(), frame))
        return pb.Ack()

    # -- users -------------------------------------------------------------------------------

    def Submit(self, request_iterator: Iterator[pb.Submission],
               context: grpc.ServicerContext) -> pb.SubmitReply:
        submitter = self._authenticate(context, None, "user")
        header = next(request_iterator).header
        assembler = transport.Assembler("experiment package")
        package = None
        for part in request_iterator:
            package = assembler.add(part.package)
        package = package if package is not None else assembler.finish()
        return self._accept(submitter, header, package, context)

    def submit_package(self, messages: Iterator[bytes],
                       context: grpc.ServicerContext) -> pb.SubmitReply:
        """Bulk.Submit: a large package (a header, then its raw pieces)."""
        submitter = self._authenticate(context, None, "user")
        try:
            header = pb.SubmissionHeader.FromString(next(messages, b""))
            receiver = bulk.Receiver(header.bulk_bytes, "experiment package")
            for piece in messages:
                receiver.add(piece)
            package = receiver.finish().view.tobytes()
        except (DecodeError, transport.TransportError) as exc:
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT, f"Bulk.Submit: {exc}")
        return self._accept(submitter, header, package, context)

    def _accept(self, submitter: str, header: pb.SubmissionHeader, package: bytes,
                context: grpc.ServicerContext) -> pb.SubmitReply:
        try:  # refuse a corrupt or mislabelled package now, not when the envoys load it
            flow_name = ExperimentPackage.from_bytes(package,
                                                     expected_digest=header.digest).flow_class
        except FedloomError as exc:
            _deny(context, grpc.StatusCode.INVALID_ARGUMENT, f"the package was refused: {exc}")
        experiment = Experiment(f"{next(self._ids)}-{uuid.uuid4().hex[:8]}", submitter,
                                tuple(header.collaborators), header.digest, package,
                                header.checkpoint, flow_name)
        with self._lock:
            self._experiments[experiment.id] = experiment
            self._queue.append(experiment.id)
            self._lock.notify_all()
        experiment.events.put(pb.Event(status="queued"))
        log.info("experiment %s submitted by '%s' for %s", experiment.id, submitter,
                 list(experiment.collaborators))
        return pb.SubmitReply(experiment=experiment.id, run_id=experiment.run_id)

    def final_state(self, request: pb.EventsRequest,
                    context: grpc.ServicerContext) -> Iterator[bytes]:
        """Bulk.Result: the experiment's final state, to its submitter, once."""
        experiment = self._own_experiment(request.experiment, context)
        frame = experiment.result
        if frame is None:
            _deny(context, grpc.StatusCode.NOT_FOUND,
                  f"experiment {experiment.id} has no final state waiting: it was taken "
                  f"already, or not taken within {RESULT_KEPT_SECONDS:g} s of the end")
        yield from bulk.pieces(frame)
        experiment.result = None  # delivered whole: a transfer that broke can be tried again

    def Events(self, request: pb.EventsRequest,
               context: grpc.ServicerContext) -> Iterator[pb.Event]:
        experiment = self._own_experiment(request.experiment, context)
        log.info("experiment %s: following it for '%s'", experiment.id, experiment.submitter)
        ended = False
        try:
            while context.is_active():
                try:
                    event = experiment.events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if event is None:
                    ended = True
                    return
                yield event
        finally:
            if not ended:  # nobody will receive its result: free its envoys and reviewers
                log.info("experiment %s: its submitter disconnected; cancelling it",
                         experiment.id)
                self._cancel(experiment, "cancelled: its submitter disconnected")

    def Envoys(self, request: pb.EnvoysRequest,
               context: grpc.ServicerContext) -> pb.EnvoysReply:
        self._authenticate(context, None, "user")
        with self._lock:
            links = sorted(self._envoys.values(), key=lambda link: link.name)
            return pb.EnvoysReply(envoys=[
                pb.EnvoyInfo(name=link.name, online=link.online, last_seen=link.last_seen,
                             experiment=link.experiment) for link in links])

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.Ack:
        self._cancel(self._own_experiment(request.experiment, context), "cancelled by the user")
        return pb.Ack(note="cancelling")

    def _cancel(self, experiment: Experiment, reason: str) -> None:
        experiment.inbox.put(("cancel", reason))
        with self._lock:
            if experiment.id in self._queue:
                self._queue.remove(experiment.id)
                self._finish_events(experiment, f"{reason} before it started")

    def recorded_run(self, request: pb.FetchRunRequest,
                     context: grpc.ServicerContext) -> Iterator[bytes]:
        """Bulk.Fetch: the experiment's recorded run (checkpoint=True), a tar archive, in raw
        pieces after its size (a run's record can be large)."""
        yield from bulk.sized_pieces(self._archive(request, context))

    def _archive(self, request: pb.FetchRunRequest, context: grpc.ServicerContext) -> bytes:
        experiment = self._own_experiment(request.experiment, context)
        if not experiment.checkpoint:
            _deny(context, grpc.StatusCode.FAILED_PRECONDITION,
                  f"experiment {experiment.id} was not checkpointed: submit the flow with "
                  "checkpoint=True to keep its record")
        if experiment.status not in ("done", "failed"):
            _deny(context, grpc.StatusCode.FAILED_PRECONDITION,
                  f"experiment {experiment.id} is {experiment.status}; fetch its run when it "
                  "has ended")
        try:
            return pack_run(self.checkpoint_root / ".metaflow", experiment.flow_name,
                            experiment.run_id)
        except FedloomError as exc:
            _deny(context, grpc.StatusCode.NOT_FOUND, str(exc))

    @property
    def checkpoint_root(self) -> Path:
        """Where aggregator processes record runs (the folder holding ``.metaflow``)."""
        return self._workdir / "checkpoints"

    # -- scheduling and running --------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                startable = [e for e in (self._experiments[i] for i in self._queue)
                             if self._envoys_free(e)]
                for experiment in startable[:1]:
                    self._queue.remove(experiment.id)
                    for name in experiment.collaborators:
                        self._envoys[name].experiment = experiment.id
                    threading.Thread(target=self._run, args=(experiment,), daemon=True,
                                     name=f"fedloom-exp-{experiment.id}").start()
                if not startable:
                    self._lock.wait(timeout=5.0)

    def _envoys_free(self, experiment: Experiment) -> bool:
        links = [self._envoys.get(name) for name in experiment.collaborators]
        return all(link is not None and link.online and not link.experiment for link in links)

    def _run(self, experiment: Experiment) -> None:
        experiment.status = "running"
        experiment.events.put(pb.Event(status="running"))
        reason = ""
        try:
            reason = ExperimentRun(self, experiment).run()
        except Exception as exc:  # a bug here must not take the director down
            log.exception("experiment %s", experiment.id)
            reason = f"the director failed while running it: {exc}"
            experiment.events.put(pb.Event(failure=pb.Failure(kind="FedloomError",
                                                              message=reason)))
        finally:
            self._release(experiment, reason)

    def _release(self, experiment: Experiment, reason: str) -> None:
        self.outbox.drop(experiment.id)
        with self._lock:
            for name in experiment.collaborators:
                link = self._envoys.get(name)
                if link is not None and link.experiment == experiment.id:
                    link.work.put(pb.Work(experiment=experiment.id, end=reason))
                    link.experiment = ""
            experiment.status = "failed" if reason else "done"
            experiment.package = b""  # ended: its record stays, its (maybe large) package goes
            log.info("experiment %s %s", experiment.id,
                     f"failed: {reason}" if reason else "completed")
            experiment.events.put(None)
            self._lock.notify_all()

    def _finish_events(self, experiment: Experiment, reason: str) -> None:
        experiment.events.put(pb.Event(failure=pb.Failure(kind="FedloomError", message=reason)))
        experiment.events.put(None)

    # -- helpers -----------------------------------------------------------------------------

    def send(self, name: str, work: pb.Work) -> None:
        link = self._envoys.get(name)
        if link is not None:
            link.work.put(work)

    def _envoy_lost(self, link: EnvoyLink) -> None:
        with self._lock:
            current = self._envoys.get(link.name) is link
            if current:
                link.online = False
            # A link its envoy replaced by registering again is not news to the experiment.
            experiment = self._experiments.get(link.experiment) if current else None
            self._lock.notify_all()
        if experiment is not None:
            experiment.inbox.put(("lost", link.name, link.lost_reason))
        log.info("envoy '%s' %s", link.name, link.lost_reason)

    def _link(self, session: str, context: grpc.ServicerContext) -> EnvoyLink:
        with self._lock:
            link = next((li for li in self._envoys.values() if li.session == session), None)
        if link is None:
            _deny(context, grpc.StatusCode.UNAUTHENTICATED, "unknown session: register first")
        name = peer_name(context)
        if name is not None and name != link.name:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                          f"certificate '{name}' cannot use the session of '{link.name}'")
        return link

    def _own_experiment(self, experiment_id: str, context: grpc.ServicerContext) -> Experiment:
        user = self._authenticate(context, None, "user")
        experiment = self._experiments.get(experiment_id)
        if experiment is None:
            _deny(context, grpc.StatusCode.NOT_FOUND, f"no experiment {experiment_id}")
        if experiment.submitter != user:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                          f"experiment {experiment_id} belongs to another user")
        return experiment

    def _authenticate(self, context: grpc.ServicerContext, claimed: str | None,
                      kind: str) -> str:
        """The caller's name: the certificate's, which must match what it claims. Without TLS
        (explicitly insecure) the claim is taken as is."""
        if self._credentials is None:
            return claimed or "anonymous"
        name = peer_name(context)
        role = peer_kind(context)
        if name is None:
            _deny(context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        if role is not None and role != kind:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                          f"a {role} certificate cannot act as a {kind}")
        if claimed is not None and claimed != name:
            _deny(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"envoy '{claimed}' presented the certificate of '{name}'; start it "
                  f"with -n '{name}' or issue a certificate for '{claimed}'")
        return str(name)


class ExperimentRun:
    """One experiment, from offers to the last event: relays between the aggregator process
    (over a pipe) and the envoys (over their work streams)."""

    def __init__(self, director: Director, experiment: Experiment) -> None:
        self.director = director
        self.experiment = experiment
        self.run_id = experiment.run_id
        self.rejoining: set[str] = set()  # envoys back after being lost, not yet ready
        self._failure_sent = False

    def run(self) -> str:
        """Returns the failure reason, or '' when the experiment completed."""
        review = ReviewPhase(self.experiment, self.director.desk, self.director.send,
                             self.director.outbox)
        reason = review.run()
        if reason:
            if not review.concluded:
                self._fail(reason)
            return reason
        reason = self._check_approved()
        if reason:
            self._fail(reason)
            return reason
        self._offer()
        # The aggregator process starts (imports, package, initial state, private attributes)
        # while the envoys start their collaborators; it runs the flow once they are all up.
        process, aggregator = self._start_aggregator()
        try:
            reason = self._wait_ready()
            if reason:
                self._fail(reason)
                return reason
            with contextlib.suppress(OSError):  # it just died: _loop reads why from the inbox
                aggregator.send(("go",))
            return self._loop(aggregator)
        finally:
            with contextlib.suppress(OSError):
                aggregator.send(("stop",))  # if it still waits for the go
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def _offer(self) -> None:
        exp = self.experiment
        for name in exp.collaborators:  # envoys run the package they reviewed, not a new copy
            self.director.send(name, pb.Work(experiment=exp.id, offer=pb.Offer(
                digest=exp.digest, collaborators=exp.collaborators, run_id=self.run_id,
                checkpoint=exp.checkpoint)))

    def _wait_ready(self) -> str:
        waiting = set(self.experiment.collaborators)
        deadline = time.monotonic() + READY_TIMEOUT
        while waiting:
            try:
                message = self.experiment.inbox.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return f"envoys {sorted(waiting)} did not start their collaborators in time"
            if message[0] == "ready":
                waiting.discard(message[1])
            elif message[0] == "failed":  # the aggregator process could not set up
                failure = pb.Failure.FromString(message[1])
                self.experiment.events.put(pb.Event(failure=failure))  # with its traceback
                self._failure_sent = True
                return failure.message or "the aggregator could not start"
            elif message[0] in ("failure", "cancel", "exited") or \
                    (message[0] == "lost" and message[1] in self.experiment.collaborators):
                return self._reason(message)
        return ""

    def _check_approved(self) -> str:
        exp = self.experiment
        approved = self.director.desk.approved_digest(exp.id)
        if approved != exp.digest:  # cannot happen unless memory was tampered with: refuse
            return (f"the director approved package {str(approved)[:12]}, not "
                    f"{exp.digest[:12]}; refusing to run it")
        return ""

    def _start_aggregator(self) -> tuple[Any, FramePipe]:
        exp = self.experiment
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        spec = ExperimentSpec(exp.digest, exp.collaborators, self.run_id,
                              exp.checkpoint, self.director.config.aggregator,
                              str(self.director._workdir / "aggregator"),
                              str(self.director.checkpoint_root))
        process = ctx.Process(target=aggregator_main, args=(child, spec), daemon=True,
                              name=f"fedloom-aggregator-{exp.id}")
        process.start()
        child.close()
        pipe = FramePipe(parent)
        send_package(pipe, exp.package)
        threading.Thread(target=_pump, args=(pipe, exp.inbox), daemon=True).start()
        return process, pipe

    def _loop(self, aggregator: FramePipe) -> str:
        exp = self.experiment
        while True:
            message = exp.inbox.get()
            kind = message[0]
            if kind == "chains":
                self._send_chains(*message[1:])
            elif kind == "outcome":
                _, _name, request, outcome, frame = message
                aggregator.send(("result", request, outcome, frame))
            elif kind == "output":
                exp.events.put(pb.Event(output=pb.TaskInfo.FromString(message[1])))
            elif kind == "done":
                self._final_state(message[1])
                return ""
            elif kind == "failed":
                failure = pb.Failure.FromString(message[1])
                exp.events.put(pb.Event(failure=failure))
                return failure.message or "failed"
            elif kind == "lost":  # the aggregator decides: drop it (a policy) or stop
                self.rejoining.discard(message[1])
                aggregator.send(message)
            elif kind in ("returned", "decision", "ready") or \
                    (kind == "failure" and message[1] in self.rejoining):
                self._rejoin(aggregator, message)
            elif kind == "failure":  # its collaborator is gone: like a lost envoy
                aggregator.send(("lost", message[1], f"failed: {message[2].message}"))
            elif kind in ("cancel", "exited"):
                reason = self._reason(message)
                aggregator.send(("abort", reason))
                self._fail(reason)
                return reason

    def _final_state(self, frame: bulk.Frame) -> None:
        """To the user: inside the events when small; else kept for the user to take (Bulk),
        for a while: a user that never comes for it does not hold it here for ever."""
        exp = self.experiment
        if len(frame) <= bulk.INLINE_BYTES:
            for part in transport.chunks(frame):
                exp.events.put(pb.Event(final_state=part))
            return
        exp.result = frame
        timer = threading.Timer(RESULT_KEPT_SECONDS, setattr, args=(exp, "result", None))
        timer.daemon = True
        timer.start()
        exp.events.put(pb.Event(final_state_bulk=len(frame)))

    def _send_chains(self, request: str, step: str, names: list[str], frame: bulk.Frame
                     ) -> None:
        """A fan-out's state to its envoys: inside the work item when small, else announced
        and pulled by each envoy (Bulk) from one copy held here."""
        exp = self.experiment
        size = len(frame)
        if size <= bulk.INLINE_BYTES:
            for name in names:
                for part in transport.chunks(frame):
                    self.director.send(name, pb.Work(experiment=exp.id, chain=pb.ChainRequest(
                        request=request, step=step, state=part)))
            return
        self.director.outbox.offer(exp.id, request, frame, set(names))
        for name in names:
            self.director.send(name, pb.Work(experiment=exp.id, chain=pb.ChainRequest(
                request=request, step=step, bulk_bytes=size)))

    def _rejoin(self, aggregator: FramePipe, message: tuple[Any, ...]) -> None:
        """An envoy that was lost and came back: review again (it lost its approval with its
        process), then its collaborator starts and the aggregator may give it work again."""
        exp, (kind, name) = self.experiment, message[:2]
        if kind == "returned" and name in exp.collaborators:
            log.info("envoy '%s' is back: offering experiment %s to it again", name, exp.id)
            self.rejoining.add(name)
            send_plan(self.director.send, exp, [name], self.director.outbox)
        elif kind == "decision" and name in self.rejoining:
            decision = message[2]
            if decision.approved and decision.digest == exp.digest:
                self.director.send(name, pb.Work(experiment=exp.id, offer=pb.Offer(
                    digest=exp.digest, collaborators=exp.collaborators, run_id=self.run_id,
                    checkpoint=exp.checkpoint)))
            else:
                self.rejoining.discard(name)
                log.info("envoy '%s' did not approve experiment %s again: it stays out",
                         name, exp.id)
        elif kind == "ready" and name in self.rejoining:
            self.rejoining.discard(name)
            aggregator.send(("rejoined", name))
            log.info("envoy '%s' rejoined experiment %s", name, exp.id)
        elif kind == "failure":
            self.rejoining.discard(name)
            log.info("envoy '%s' could not rejoin experiment %s: %s", name, exp.id,
                     message[2].message)

    def _reason(self, message: tuple[Any, ...]) -> str:
        kind = message[0]
        if kind == "lost":
            return (f"envoy '{message[1]}' {message[2]} during the experiment (its "
                    "collaborator is gone; the run cannot go on)")
        if kind == "failure":
            return f"envoy '{message[1]}' could not run its collaborator: {message[2].message}"
        if kind == "cancel":
            return str(message[1]) if len(message) > 1 else "cancelled by the user"
        return "the aggregator process exited unexpectedly"

    def _fail(self, reason: str) -> None:
        if self._failure_sent:  # the user has the failure already, in more detail
            return
        self._failure_sent = True
        self.experiment.events.put(pb.Event(failure=pb.Failure(kind="FedloomError",
                                                               message=reason)))


def _deny(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc's abort() raises")  # for type checkers: abort never returns


def _pump(conn: FramePipe, inbox: queue.Queue[tuple[Any, ...]]) -> None:
    """Moves the aggregator process's messages into the experiment's inbox."""
    try:
        while True:
            inbox.put(conn.recv())
    except (EOFError, OSError):
        inbox.put(("exited",))

