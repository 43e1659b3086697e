"""The director's gRPC handlers (``fedloom.v1.Director`` and ``fedloom.v1.Bulk``), on grpc.aio:
thin — each checks who calls and within which limits, then hands over to the director's
state. CPU-heavy work (hashing a package, archiving a run) runs in worker threads, so the event
loop keeps answering health checks and registrations whatever else is going on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from fedloom.checkpoint.transfer import pack_run
from fedloom.errors import FedloomError
from fedloom.federation import transport
from fedloom.federation.nodes.director import (
    ENDED_KEPT_SECONDS,
    FINAL,
    MISSED_HEALTH_CHECKS,
    Director,
    EnvoyLink,
    Experiment,
)
from fedloom.federation.nodes.limits import Hold, LimitExceeded
from fedloom.federation.nodes.views import experiment_info
from fedloom.federation.package import ExperimentPackage
from fedloom.federation.pki import peer_kind, peer_name, peer_not_after
from fedloom.federation.store import ExperimentRecord
from fedloom.federation.transport import bulk
from fedloom.federation.transport.lenient import Collector, lenient
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=Message)
Context = Any  # grpc.aio.ServicerContext (grpc ships no type hints)


class Refused(Exception):
    """A call refused with a status code; raised inside handlers, turned into an abort."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DirectorService(rpc.DirectorServicer):
    """Who may call what, and within which limits; the work is the director's."""

    def __init__(self, director: Director) -> None:
        self.d = director

    def add_to(self, server: grpc.aio.Server) -> None:
        """Both services on ``server``, with malformed messages refused clearly."""
        collector = Collector()
        rpc.add_DirectorServicer_to_server(self, collector)
        server.add_generic_rpc_handlers((lenient("fedloom.v1.Director", collector.handlers),
                                         lenient(bulk.SERVICE, bulk.method_handlers(self))))

    # -- envoys --------------------------------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterReply:
        name = await self._authenticate(context, request.name, "envoy")
        old = self.d.envoys.get(name)
        if old is not None and old.instance != request.instance and self.d.healthy(old):
            address = context.peer()
            log.warning("envoy '%s': another process from %s tried to register while this "
                        "one, from %s, is connected and healthy: refused", name, address,
                        old.address)
            old.work.put_nowait(pb.Work(notice=(
                f"another process from {address} tried to register as envoy '{name}' "
                "while this one is connected: it was refused. Two envoys must not share a "
                "name and certificate")))
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                         f"envoy '{name}' is already connected from {old.address} and answers "
                         "its health checks: stop that process (or give this one its own "
                         "name and certificate); this one is accepted once the other is gone")
        link = self.d.register(name, request.instance, context.peer(), peer_not_after(context))
        return pb.RegisterReply(session=link.session,
                                health_check_period=self.d.config.envoy_health_check_period)

    async def GetWork(self, request: pb.WorkRequest, context: Context
                      ) -> AsyncIterator[pb.Work]:
        link = await self._link(request.session, context)
        # Liveness comes from heartbeats; this ping only lets a dead connection break the
        # stream, so it need not be frequent (a thousand idle envoys, a thousand fewer
        # messages a second than one ping per period).
        idle = MISSED_HEALTH_CHECKS * self.d.config.envoy_health_check_period
        with await self._held(context, link.name):
            try:
                while link.online:
                    try:  # what is queued already goes out without a timer (fan-outs)
                        item = link.work.get_nowait()
                    except asyncio.QueueEmpty:
                        try:
                            item = await asyncio.wait_for(link.work.get(), idle)
                        except asyncio.TimeoutError:
                            item = pb.Work(ping=0.0)  # a dead connection breaks here
                    if item is None:
                        return
                    yield item
            finally:
                self.d.envoy_lost(link)

    async def Heartbeat(self, request: pb.WorkRequest, context: Context) -> pb.Ack:
        link = await self._link(request.session, context)
        link.last_seen, link.beating = time.time(), True
        return pb.Ack()

    async def Beat(self, request_iterator: AsyncIterator[pb.WorkRequest],
                   context: Context) -> pb.Ack:
        """Heartbeats on one stream: each message means the envoy is alive. The stream ends
        with its connection, or when the session it named is replaced or lost."""
        first = await self._first(request_iterator, context, "health check")
        link = await self._link(first.session, context)
        link.last_seen, link.beating = time.time(), True
        with await self._held(context, link.name):
            async for _ in request_iterator:
                if not link.online:
                    break
                link.last_seen = time.time()
        return pb.Ack()

    async def SendReport(self, request_iterator: AsyncIterator[pb.Report],
                         context: Context) -> pb.Ack:
        first = await self._first(request_iterator, context, "report")
        link, experiment = await self._reporting(first, context)
        kind = first.WhichOneof("kind")
        if kind == "decision":
            experiment.inbox.put_nowait(("decision", link.name, first.decision))
        elif kind == "ready":
            experiment.inbox.put_nowait(("ready", link.name))
        elif kind == "failure":
            experiment.inbox.put_nowait(("failure", link.name, first.failure))
        else:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"a report of kind {kind!r} goes elsewhere (chain outcomes go on "
                         "fedloom.v1.Bulk/Push); is this envoy an older fedloom?")
        return pb.Ack()

    async def _reporting(self, report: pb.Report, context: Context
                         ) -> tuple[EnvoyLink, Experiment]:
        """The envoy sending ``report`` (seen now) and its experiment, which must be one of
        that envoy's."""
        link = await self._link(report.session, context)
        link.last_seen = time.time()
        experiment = self.d.experiments.get(report.experiment)
        if experiment is None or link.name not in experiment.collaborators:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"envoy '{link.name}' is not part of experiment {report.experiment}")
        return link, experiment

    async def pull_state(self, request: pb.PullRequest, context: Context
                         ) -> AsyncIterator[bytes]:
        """Bulk.Pull: a chain's state (or a package to review), to an envoy it was sent to."""
        link = await self._link(request.session, context)
        link.last_seen = time.time()
        frame = self.d.outbox.take(request.experiment, request.request, link.name)
        if frame is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"no state waits for envoy '{link.name}' under request "
                         f"{request.request!r} of experiment {request.experiment}: the "
                         "experiment ended or moved on")
        with await self._held(context, link.name):
            for piece in bulk.pieces(frame):
                yield piece

    async def push_state(self, messages: AsyncIterator[bytes], context: Context) -> pb.Ack:
        """Bulk.Push: a chain's outcome (a Report header) and its state."""
        raw = await self._first(messages, context, "Bulk.Push header")
        link, experiment, head = await self._outcome_header(raw, context, "Bulk.Push")
        with await self._held(context, link.name, upload=True):
            frame = await self._receive(messages, context, head.bulk_bytes,
                                        f"result of '{link.name}'")
        self._deliver_outcome(link, experiment, head, frame)
        return pb.Ack()

    async def push_small_state(self, raw: bytes, context: Context) -> pb.Ack:
        """Bulk.PushSmall: a chain's outcome and its small state, in one message."""
        try:
            header, state = bulk.split_small_push(raw)
        except transport.TransportError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        link, experiment, head = await self._outcome_header(header, context, "Bulk.PushSmall")
        if len(state) != head.bulk_bytes:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"Bulk.PushSmall: the header announces {head.bulk_bytes} bytes of "
                         f"state, {len(state)} came")
        self._deliver_outcome(link, experiment, head, state)
        return pb.Ack()

    async def push_stream(self, messages: AsyncIterator[bytes], context: Context) -> pb.Ack:
        """Bulk.PushStream: an envoy connection's small chain outcomes, one message each (as
        PushSmall's request) after one naming the session. A late outcome of an ended run is
        dropped; anything malformed or not the envoy's ends the stream (and so, on the envoy's
        side, its connection: its chains are then known to be lost)."""
        raw = await self._first(messages, context, "Bulk.PushStream session")
        opening = await _parsed(pb.WorkRequest, raw, context,
                                "Bulk.PushStream: the first message is not a WorkRequest")
        link = await self._link(opening.session, context)
        with await self._held(context, link.name):
            await context.send_initial_metadata((bulk.STREAM_OPEN,))  # the envoy may send
            async for raw in messages:
                if not link.online:
                    break  # its experiments heard that it was lost
                await self._push_one(link, raw, context)
        return pb.Ack()

    async def _push_one(self, link: EnvoyLink, raw: bytes, context: Context) -> None:
        try:
            header, state = bulk.split_small_push(raw)
            head = pb.Report.FromString(header)
        except (transport.TransportError, DecodeError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"Bulk.PushStream: a malformed outcome: {exc}")
        link.last_seen = time.time()
        experiment = self.d.experiments.get(head.experiment)
        if experiment is None or link.name not in experiment.collaborators:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"envoy '{link.name}' is not part of experiment {head.experiment}")
        if head.WhichOneof("kind") != "outcome" or len(state) != head.bulk_bytes:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "Bulk.PushStream carries chain outcomes only, each with as many "
                         f"bytes of state as its header announces ({head.bulk_bytes}; "
                         f"{len(state)} came)")
        if experiment.status == "running":  # else a late result of an ended run: unread
            self._deliver_outcome(link, experiment, head, state)

    async def _outcome_header(self, raw: bytes, context: Context, method: str
                              ) -> tuple[EnvoyLink, Experiment, pb.Report]:
        """The envoy pushing a chain's outcome, its running experiment and the header."""
        head = await _parsed(pb.Report, raw, context,
                             f"{method}: the header is not a Report message")
        link, experiment = await self._reporting(head, context)
        if experiment.status != "running":  # a late result of an ended run: nobody reads it
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"experiment {experiment.id} is not running (it is {experiment.status})")
        if head.WhichOneof("kind") != "outcome":
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"{method} carries chain outcomes only")
        return link, experiment, head

    @staticmethod
    def _deliver_outcome(link: EnvoyLink, experiment: Experiment, head: pb.Report,
                         frame: bulk.Frame) -> None:
        head.outcome.collaborator = link.name  # an envoy answers for itself only
        experiment.inbox.put_nowait(("outcome", link.name, head.request,
                                     head.outcome.SerializeToString(), frame))

    # -- users ---------------------------------------------------------------------------------

    async def Submit(self, request_iterator: AsyncIterator[pb.Submission],
                     context: Context) -> pb.SubmitReply:
        submitter = await self._authenticate(context, None, "user")
        with await self._held(context, submitter, upload=True):
            first = await self._first(request_iterator, context, "submission header")
            if first.WhichOneof("kind") != "header":
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                             "a submission starts with its header")
            assembler = transport.Assembler("experiment package")
            package = None
            try:
                async for part in self._pieces(request_iterator, context):
                    package = assembler.add(part.package)
                package = package if package is not None else assembler.finish()
            except transport.TransportError as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return await self._accept(submitter, first.header, package, context)

    async def submit_package(self, messages: AsyncIterator[bytes],
                             context: Context) -> pb.SubmitReply:
        """Bulk.Submit: a large package (a header, then its raw pieces)."""
        submitter = await self._authenticate(context, None, "user")
        with await self._held(context, submitter, upload=True):
            raw = await self._first(messages, context, "Bulk.Submit header")
            header = await _parsed(pb.SubmissionHeader, raw, context,
                                   "Bulk.Submit: the header is not a SubmissionHeader message")
            frame = await self._receive(messages, context, header.bulk_bytes,
                                        "experiment package")
        return await self._accept(submitter, header, frame.view.tobytes(), context)

    async def _accept(self, submitter: str, header: pb.SubmissionHeader, package: bytes,
                      context: Context) -> pb.SubmitReply:
        if self.d.stopping:
            await _abort(context, grpc.StatusCode.UNAVAILABLE,
                         "the director is stopping: submit again once it is back")
        names = list(header.collaborators)
        twice = sorted({n for n in names if names.count(n) > 1})
        if not names or twice:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"collaborators must be distinct envoy names; named twice: {twice}"
                         if twice else "an experiment needs at least one collaborator")
        if self.d.active_of(submitter) >= self.d.config.limits.max_queued_per_user:
            limit = self.d.config.limits.max_queued_per_user
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"'{submitter}' has {limit} experiments queued or running, the "
                         f"director's limit (settings.max_queued_per_user: {limit}); wait for "
                         "some to end, or ask the director's admin to raise it")
        try:  # refuse a corrupt or mislabelled package now, not when the envoys load it
            flow_name = (await asyncio.to_thread(
                ExperimentPackage.from_bytes, package, expected_digest=header.digest)).flow_class
        except FedloomError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"the package was refused: {exc}")
        experiment = self.d.accept(submitter, header, package, flow_name)
        return pb.SubmitReply(experiment=experiment.id, run_id=experiment.run_id)

    async def Events(self, request: pb.EventsRequest, context: Context
                     ) -> AsyncIterator[pb.Event]:
        user = await self._authenticate(context, None, "user")
        experiment = self.d.experiments.get(request.experiment)
        if experiment is None:  # ended long ago, or before a restart: what the record says
            for event in await self._recorded_end(request.experiment, user, context):
                yield event
            return
        await self._own(experiment.submitter, user, experiment.id, context)
        if request.watch:
            with await self._held(context, user):
                async for event in self._watched(experiment, request):
                    yield event
            return
        log.info("experiment %s: following it for '%s'", experiment.id, user)
        ended = False
        with await self._held(context, user):
            try:
                async for event in experiment.events.follow(request.after):
                    yield event
                ended = True
            finally:
                if not ended and experiment.status not in FINAL:
                    # nobody will receive its result: free its envoys and reviewers
                    log.info("experiment %s: its submitter disconnected; cancelling it",
                             experiment.id)
                    self.d.cancel(experiment, "cancelled: its submitter disconnected")

    @staticmethod
    async def _watched(experiment: Experiment, request: pb.EventsRequest
                       ) -> AsyncIterator[pb.Event]:
        """A watcher's events (fx experiment logs): all but the final state (its submitter's
        to take), the events so far or, following, to the end; ``after`` counts the events a
        watcher is sent. Its leaving cancels nothing."""
        if request.follow:
            events: AsyncIterator[pb.Event] = experiment.events.follow()
        else:
            events = _aiter(experiment.events.so_far())
        sent = 0
        async for event in events:
            if event.WhichOneof("kind") in ("final_state", "final_state_bulk"):
                continue
            sent += 1
            if sent > request.after:
                yield event

    async def _recorded_end(self, experiment_id: str, user: str,
                            context: Context) -> list[pb.Event]:
        assert self.d.store is not None
        record = self.d.store.get_experiment(experiment_id)
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no experiment {experiment_id}")
        await self._own(record.submitter, user, experiment_id, context)
        events = [pb.Event(status=record.state)]
        if record.state != "done":
            events.append(pb.Event(failure=pb.Failure(
                kind="FedloomError", message=f"experiment {experiment_id} {record.state}: "
                f"{record.reason or 'no reason recorded'}")))
        return events

    async def Envoys(self, request: pb.EnvoysRequest, context: Context) -> pb.EnvoysReply:
        """The envoys, as much as settings.visibility lets users see; never another user's
        experiment."""
        user = await self._authenticate(context, None, "user")
        visibility = self.d.config.visibility
        reply = pb.EnvoysReply(visibility=visibility)
        for link in sorted(self.d.envoys.values(), key=lambda link: link.name):
            info = reply.envoys.add(name=link.name)
            if visibility != "names":
                info.online = link.online
            if visibility == "activity":
                info.last_seen, info.busy = link.last_seen, bool(link.experiment)
                running = self.d.experiments.get(link.experiment)
                if running is not None and running.submitter == user:
                    info.experiment = running.id
        return reply

    async def ListExperiments(self, request: pb.ExperimentsRequest,
                              context: Context) -> pb.ExperimentsReply:
        """The caller's own experiments, newest first: those running and those recorded."""
        user = await self._authenticate(context, None, "user")
        assert self.d.store is not None
        records = self.d.store.experiments(submitter=user)
        if request.limit:
            records = records[:request.limit]
        return pb.ExperimentsReply(experiments=[experiment_info(self.d, r) for r in records])

    async def ShowExperiment(self, request: pb.ExperimentRequest,
                             context: Context) -> pb.ExperimentInfo:
        user = await self._authenticate(context, None, "user")
        record = await self._record(request.experiment, user, context)
        return experiment_info(self.d, record)

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.Ack:
        user = await self._authenticate(context, None, "user")
        record = await self._record(request.experiment, user, context)
        experiment = self.d.experiments.get(request.experiment)
        if experiment is None or experiment.status in FINAL:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"experiment {record.id} has ended already ({record.state}"
                         f"{f': {record.reason}' if record.reason else ''}); nothing to cancel")
        log.info("experiment %s: cancelled by '%s'", experiment.id, user)
        self.d.cancel(experiment, "cancelled by the user")
        return pb.Ack(note="cancelling")

    async def _record(self, experiment_id: str, user: str,
                      context: Context) -> ExperimentRecord:
        """The record of ``experiment_id``, which must be ``user``'s."""
        assert self.d.store is not None
        record = self.d.store.get_experiment(experiment_id)
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"no experiment {experiment_id} on this director")
        await self._own(record.submitter, user, experiment_id, context)
        return record

    async def final_state(self, request: pb.EventsRequest, context: Context
                          ) -> AsyncIterator[bytes]:
        """Bulk.Result: the experiment's final state, to its submitter, once."""
        user = await self._authenticate(context, None, "user")
        experiment = self.d.experiments.get(request.experiment)
        frame = experiment.result if experiment is not None else None
        if experiment is not None:
            await self._own(experiment.submitter, user, experiment.id, context)
        if experiment is None or frame is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"experiment {request.experiment} has no final state waiting: it was "
                         f"taken already, or not within {ENDED_KEPT_SECONDS:g} s of the end")
        with await self._held(context, user):
            for piece in bulk.pieces(frame):
                yield piece
        experiment.result = None  # delivered whole: a transfer that broke can be tried again

    async def recorded_run(self, request: pb.FetchRunRequest, context: Context
                           ) -> AsyncIterator[bytes]:
        """Bulk.Fetch: the experiment's recorded run (checkpoint=True), a tar archive, in raw
        pieces after its size. Works for ended experiments also after a restart."""
        user = await self._authenticate(context, None, "user")
        assert self.d.store is not None
        record = self.d.store.get_experiment(request.experiment)
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no experiment {request.experiment}")
        await self._own(record.submitter, user, record.id, context)
        if not record.checkpoint:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"experiment {record.id} was not checkpointed: submit the flow with "
                         "checkpoint=True to keep its record")
        if record.state not in FINAL:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"experiment {record.id} is {record.state}; fetch its run when it "
                         "has ended")
        try:
            archive = await asyncio.to_thread(pack_run, self.d.checkpoint_root / ".metaflow",
                                              record.flow_name, record.run_id)
        except FedloomError as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        with await self._held(context, user):
            for piece in bulk.sized_pieces(archive):
                yield piece

    # -- who calls, and within which limits ------------------------------------------------------

    async def _held(self, context: Context, peer: str, *, upload: bool = False) -> Hold:
        """One of ``peer``'s streams, held for a ``with`` block; over the limit: refused."""
        try:
            return self.d.counters.acquire(peer, upload=upload)
        except LimitExceeded as exc:
            log.warning("refused a call: %s", exc)
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _first(self, messages: AsyncIterator[T], context: Context, what: str) -> T:
        timeout = self.d.config.limits.first_message_timeout
        try:
            return await asyncio.wait_for(anext(messages), timeout)
        except asyncio.TimeoutError:
            await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"no {what} within {timeout:g} s of opening the call "
                         "(settings.first_message_timeout)")
        except StopAsyncIteration:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"the {what} is missing")

    async def _pieces(self, messages: AsyncIterator[T], context: Context) -> AsyncIterator[T]:
        """The rest of an upload; silent for longer than the limit: refused."""
        timeout = self.d.config.limits.upload_idle_timeout
        while True:
            try:
                yield await asyncio.wait_for(anext(messages), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                await _abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"the upload stayed silent for {timeout:g} s "
                             "(settings.upload_idle_timeout)")

    async def _receive(self, messages: AsyncIterator[bytes], context: Context, total: int,
                       what: str) -> Any:
        try:
            receiver = bulk.Receiver(total, what)
            async for piece in self._pieces(messages, context):
                receiver.add(piece)
            return receiver.finish()
        except transport.TransportError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _link(self, session: str, context: Context) -> EnvoyLink:
        link = self.d.sessions.get(session)
        if link is None:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         "unknown session: register first")
        name = peer_name(context)
        if name is not None and name != link.name:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"certificate '{name}' cannot use the session of '{link.name}'")
        return link

    async def _own(self, submitter: str, user: str, experiment_id: str,
                   context: Context) -> None:
        if submitter != user:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"experiment {experiment_id} belongs to another user: '{user}' may "
                         "see, follow and cancel only their own experiments")

    async def _authenticate(self, context: Context, claimed: str | None, kind: str) -> str:
        """The caller's name: the certificate's, which must match what it claims. Without TLS
        (explicitly insecure) the claim is taken as is."""
        if self.d.credentials is None:
            return claimed or "anonymous"
        name = peer_name(context)
        role = peer_kind(context)
        if name is None:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED,
                         "a client certificate is required")
        if role is not None and role != kind:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"a {role} certificate cannot act as a {kind}")
        if claimed is not None and claimed != name:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"envoy '{claimed}' presented the certificate of '{name}'; start it "
                         f"with -n '{name}' or issue a certificate for '{claimed}'")
        return str(name)


async def _aiter(items: list[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


async def _parsed(kind: type[M], raw: bytes, context: Context, refusal: str) -> M:
    """``raw`` as a ``kind`` message; a call that sent something else is ended with
    ``INVALID_ARGUMENT`` and ``refusal``."""
    try:
        return kind.FromString(raw)
    except DecodeError:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, refusal)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("grpc's abort() raises")  # for type checkers: abort never returns

