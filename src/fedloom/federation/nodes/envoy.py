"""An envoy: dials the director, waits for work on a stream (no polling), and runs each
experiment's collaborator in a process of its own, which dies with the envoy and answers its
pings. Reconnects by itself when the director restarts or is away; stops when retrying cannot
help (a certificate refused, TLS on one side only)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import grpc

from fedloom import __version__
from fedloom.errors import FedloomError
from fedloom.federation import transport
from fedloom.federation.nodes import lifeline
from fedloom.federation.nodes.config import EnvoyConfig
from fedloom.federation.nodes.experiment_process import (
    ExperimentSpec,
    collaborator_main,
    send_package,
)
from fedloom.federation.pki import TlsFiles
from fedloom.federation.review.desk import Plan, ReviewDesk
from fedloom.federation.review.service import LocalReviewServer
from fedloom.federation.transport import bulk, handshake
from fedloom.federation.transport.pipes import FramePipe, MemoryFrame
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc

log = logging.getLogger(__name__)

RECONNECT_SECONDS = (0.5, 1, 2, 5, 10)
MISSED_ANSWERS = 3  # health-check periods a collaborator process may leave a ping unanswered
STARTUP_SECONDS = 60.0  # for a new collaborator process to answer at all (Python starts)
STARTUP_LIMIT = 600.0  # ... while it visibly makes progress (uses CPU), at most this long


class EnvoyRefused(FedloomError):
    """The director refused this envoy (certificate or name), or cannot be talked to as this
    envoy is configured (TLS on one side only, a certificate from another CA): reconnecting
    would not help."""


@dataclass
class RunningExperiment:
    """One experiment's collaborator process on this envoy."""

    id: str
    package: transport.Assembler
    package_bytes: bytes | None = None  # the package as reviewed
    digest: str = ""
    offer: pb.Offer | None = None
    process: BaseProcess | None = None
    conn: FramePipe | None = None
    chains: dict[str, transport.Assembler] = field(default_factory=dict)
    answered: float = 0.0  # time.monotonic() of the process's last message; 0: none yet
    ended: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # its failure was reported (once)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_step: str = ""  # the step it was last given, and when
    last_step_at: float = 0.0

    def report_once(self) -> bool:
        """True the first time only: a process reported as failed is not reported again."""
        with self.lock:
            first, self.failed = not self.failed, True
            return first


class Envoy:
    """Serves one site's data to the federation."""

    def __init__(self, config: EnvoyConfig, endpoint: transport.Endpoint,
                 credentials: grpc.ChannelCredentials | None, workdir: Path,
                 tls_files: TlsFiles | None = None) -> None:
        """``tls_files``: the files ``credentials`` were made of, to find out why a connection
        fails (without them, a TLS failure is retried like an unreachable director)."""
        self.config = config
        self.endpoint = endpoint
        self._credentials = credentials
        self._tls_files = tls_files
        self._workdir = workdir
        self._instance = uuid.uuid4().hex  # this process: a reconnect is not a twin
        self._health_period = 5.0  # the director's, from RegisterReply
        self._registered = False
        self._doubt = ""  # a diagnosis that counts only if it repeats
        self._stop = threading.Event()
        self._experiments: dict[str, RunningExperiment] = {}
        self._stub: rpc.DirectorStub | None = None
        self._channel: grpc.Channel | None = None  # for Bulk (large states)
        self._outcomes: bulk.OutcomeStream | None = None  # small outcomes, on one stream
        self._session = ""
        self.desk = ReviewDesk(config.name, config.review_experiment, workdir,
                               config.review_timeout)
        self.started_at = time.time()
        # Its connection to the director, for fx envoy status: connecting, connected, retrying
        # (since the first failure in a row, and why), stopped (and why).
        self.connection, self.connection_since, self.connection_error = \
            "connecting", time.time(), ""

    def run(self) -> None:
        """Serve until :meth:`stop`; reconnects (with back-off) whenever the director is away.
        Meanwhile ``fx envoy review`` and ``fx envoy status`` reach this envoy on its local
        socket; when it stops for good, why is kept in ``last-stop.json`` in its work folder."""
        from fedloom.federation.nodes.status import EnvoyNode, write_last_stop

        review_server = LocalReviewServer(self.desk, self._workdir, node=EnvoyNode(self))
        review_server.start()
        error = ""
        try:
            self._serve()
        except BaseException as exc:
            error = str(exc) if isinstance(exc, FedloomError) else ""
            raise
        finally:
            self._connected("stopped", error)
            write_last_stop(self._workdir, error)
            review_server.stop()

    def experiments_now(self) -> list[RunningExperiment]:
        """Its experiments now (in review, or with a collaborator process)."""
        return list(self._experiments.values())

    def _connected(self, state: str, error: str = "") -> None:
        if state != self.connection:
            self.connection_since = time.time()
        self.connection, self.connection_error = state, error

    def _serve(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._registered = False
            why = "the connection to the director ended"
            try:
                self._serve_once()
            except EnvoyRefused:
                self._end_all("the director refused this envoy")
                raise
            except grpc.RpcError as exc:
                if _refused(exc):  # retrying cannot help: the director said who we are not
                    self._end_all("the director refused this envoy")
                    raise EnvoyRefused(f"the director at {self.endpoint.address} refused envoy "
                                       f"'{self.config.name}': {_describe(exc)}") from None
                if _code(exc) == grpc.StatusCode.ALREADY_EXISTS:  # a live twin, or our ghost
                    why = (f"the director did not register it: {_details(exc)} (it takes over "
                           "once that connection is gone)")
                else:
                    why = f"connection to {self.endpoint.address} lost: {_describe(exc)}"
            except transport.TransportError as exc:
                why = str(exc)
            if self._registered:
                attempt = 0
            self._end_all("the envoy lost its connection to the director")
            if self._stop.is_set():
                break
            self._connected("retrying", why)
            # Jittered, so that a thousand envoys of a restarted director do not all come
            # back in the same instant.
            step = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
            delay = step * random.uniform(0.5, 1.5)
            log.warning("envoy '%s': %s; retrying in %.1f s (back-off %g s, jittered)",
                        self.config.name, why, delay, step)
            self._stop.wait(delay)
            attempt += 1

    def stop(self) -> None:
        self._stop.set()
        self._end_all("the envoy is stopping")

    def _serve_once(self) -> None:
        channel = transport.open_channel(self.endpoint, self._credentials)
        closed = threading.Event()  # set when this connection is over
        try:
            try:
                transport.wait_ready(channel, self.endpoint, timeout=10,
                                     tls=self._credentials is not None)
            except transport.TransportError:
                self._diagnose("gRPC could not connect")
            self._stub = rpc.DirectorStub(channel)
            self._channel = channel
            try:
                reply = self._stub.Register(self._register_request(), timeout=30)
            except grpc.RpcError as exc:
                if _code(exc) == grpc.StatusCode.UNAVAILABLE:  # e.g. our certificate refused
                    self._diagnose(_describe(exc))
                raise
            self._doubt = ""
            self._registered = True
            self._connected("connected")
            self._session = reply.session
            self._health_period = max(reply.health_check_period, 0.2)
            log.info("envoy '%s' registered with the director at %s", self.config.name,
                     self.endpoint.address)
            work = self._stub.GetWork(pb.WorkRequest(session=reply.session))
            self._outcomes = bulk.OutcomeStream(channel, reply.session,
                                                lambda why: self._outcomes_lost(work, why))
            stopper = threading.Thread(target=self._cancel_on_stop, args=(work,), daemon=True)
            stopper.start()
            threading.Thread(target=self._beat, args=(self._stub, reply, closed),
                             daemon=True, name="fedloom-heartbeat").start()
            try:
                for item in work:
                    try:
                        self._handle(item)
                    except (FedloomError, OSError, ValueError) as exc:  # one bad item
                        log.error("envoy '%s': could not handle %s for experiment %s: %s",
                                  self.config.name, item.WhichOneof("kind"), item.experiment,
                                  exc)
            except KeyboardInterrupt:  # stopped (Ctrl-C, SIGTERM, fx envoy stop)
                self._say_stopping()
                raise
        finally:
            closed.set()
            if self._outcomes is not None:
                self._outcomes.close()
                self._outcomes = None
            channel.close()

    def _outcomes_lost(self, work: Any, why: str) -> None:
        """The outcome stream ended under a live connection: what it carried may be lost,
        so this connection ends, and with it (for the director) this envoy's chains."""
        log.warning("envoy '%s': the stream of chain outcomes to the director ended (%s); "
                    "reconnecting", self.config.name, why)
        work.cancel()

    def _say_stopping(self) -> None:
        """Tells the director, while still connected, that this envoy's experiments cannot go
        on here (else it learns only that the connection broke)."""
        stub, why = self._stub, f"envoy '{self.config.name}' is stopping"
        for running in list(self._experiments.values()):
            if stub is None or running.process is None or not running.report_once():
                continue
            with contextlib.suppress(grpc.RpcError):
                stub.SendReport(iter([pb.Report(
                    session=self._session, experiment=running.id,
                    failure=pb.Failure(kind="FlowRunError", message=why))]), timeout=5)

    def _register_request(self) -> pb.RegisterRequest:
        return pb.RegisterRequest(name=self.config.name, fedloom_version=__version__,
                                  instance=self._instance)

    def _diagnose(self, failure: str) -> None:
        """Why connecting failed (gRPC said ``failure``): raises EnvoyRefused when retrying
        cannot help, else a TransportError saying what to wait for. A verdict that is not
        certain (the director hung up) stops the envoy only when the next attempt gives it
        again."""
        verdict = handshake.diagnose(self.endpoint.host, self.endpoint.port, self._tls_files,
                                     tls_expected=self._credentials is not None,
                                     failure=failure)
        if verdict.retry:
            self._doubt = ""
            raise transport.TransportError(verdict.message)
        if verdict.certain or verdict.message == self._doubt:
            raise EnvoyRefused(f"envoy '{self.config.name}' cannot connect to the director: "
                               f"{verdict.message}")
        self._doubt = verdict.message
        raise transport.TransportError(f"{verdict.message} (trying again to be sure)")

    def _beat(self, stub: rpc.DirectorStub, reply: pb.RegisterReply,
              closed: threading.Event) -> None:
        """The health check: a message on one long-lived stream once a period (the director
        allows three periods of silence; for a director of thousands, a message on an open
        stream costs far less than a call). A stream that breaks while the connection lives
        on is opened again; a closed connection ends it."""
        period = max(reply.health_check_period, 0.2)
        while not closed.is_set():
            try:
                stub.Beat(_beats(reply.session, period, closed))
            except grpc.RpcError as exc:
                if closed.is_set() or _code(exc) in (grpc.StatusCode.UNAVAILABLE,
                                                     grpc.StatusCode.UNAUTHENTICATED):
                    return  # the work stream notices the broken connection too
                if _code(exc) == grpc.StatusCode.UNIMPLEMENTED:  # an older director
                    self._beat_unary(stub, reply.session, period, closed)
                    return
                log.info("envoy '%s': the health-check stream ended (%s); opening it again",
                         self.config.name, _describe(exc))
                closed.wait(period / 2)

    def _beat_unary(self, stub: rpc.DirectorStub, session: str, period: float,
                    closed: threading.Event) -> None:
        """The health check as one call a beat, for a director without the Beat stream."""
        while not closed.wait(period / 2):
            try:
                stub.Heartbeat(pb.WorkRequest(session=session), timeout=period)
            except grpc.RpcError as exc:
                if _code(exc) != grpc.StatusCode.DEADLINE_EXCEEDED:
                    return  # the work stream notices the broken connection too
                log.info("envoy '%s': a health check took over %g s", self.config.name, period)

    def _cancel_on_stop(self, work: Any) -> None:
        self._stop.wait()
        work.cancel()

    def _handle(self, work: pb.Work) -> None:
        kind = work.WhichOneof("kind")
        if kind == "review":
            self._on_review(work.experiment, work.review)
        elif kind == "offer":
            self._on_offer(work.experiment, work.offer)
        elif kind == "chain":
            self._on_chain(work.experiment, work.chain)
        elif kind == "end":
            self._end(work.experiment, work.end)
        elif kind == "notice":  # e.g. another process tried to register under our name
            log.warning("envoy '%s': the director says: %s", self.config.name, work.notice)

    def _on_review(self, experiment_id: str, request: pb.ReviewRequest) -> None:
        lifeline.warm_up()  # while the plan is reviewed: its process starts at once later
        running = self._experiments.setdefault(
            experiment_id, RunningExperiment(experiment_id, transport.Assembler("package")))
        if request.bulk_bytes:
            package = self._pull_package(experiment_id, request)
        else:
            package = running.package.add(request.package)
        if package is None:
            return
        running.package_bytes, running.digest = None, ""  # until the bytes prove to be digest
        try:
            plan = Plan.from_bytes(experiment_id, request.submitter, request.collaborators,
                                   package, request.digest)
        except FedloomError as exc:
            self._send_decision(experiment_id, self.desk.refuse(
                experiment_id, request.submitter, request.digest, f"the package is unusable: "
                f"{exc}"))
            return

        # Plan.from_bytes checked the bytes against the digest: these are what is reviewed,
        # and the only bytes a collaborator process of this experiment will be given.
        running.package_bytes, running.digest = package, request.digest

        def report(done: Future[pb.Decision]) -> None:
            if not done.cancelled():
                self._send_decision(experiment_id, done.result())

        self.desk.submit(plan).add_done_callback(report)

    def _pull_package(self, experiment_id: str, request: pb.ReviewRequest) -> bytes | None:
        """A large package, from the director; one that cannot be had is refused."""
        assert self._channel is not None
        try:
            frame = bulk.pull(self._channel, pb.PullRequest(
                session=self._session, experiment=experiment_id, request=bulk.PACKAGE),
                request.bulk_bytes, "package")
        except (grpc.RpcError, FedloomError) as exc:
            self._send_decision(experiment_id, self.desk.refuse(
                experiment_id, request.submitter, request.digest,
                f"could not get the package from the director: {_describe(exc)}"))
            return None
        return frame.view.tobytes()

    def _send_decision(self, experiment_id: str, decision: pb.Decision) -> None:
        try:
            self._send(iter([pb.Report(session=self._session, experiment=experiment_id,
                                       decision=decision)]))
        except (grpc.RpcError, FedloomError) as exc:
            log.warning("envoy '%s': could not send the decision on experiment %s: %s",
                        self.config.name, experiment_id, _describe(exc))

    def _on_offer(self, experiment_id: str, offer: pb.Offer) -> None:
        running = self._experiments.get(experiment_id)
        approved = self.desk.approved_digest(experiment_id)
        if running is None or running.package_bytes is None or approved is None or \
                approved != offer.digest or running.digest != offer.digest:
            why = (f"envoy '{self.config.name}' refuses to run package {offer.digest[:12]} of "
                   f"experiment {experiment_id}: "
                   + (f"it approved package {approved[:12]}" if approved
                      else "it approved no package for this experiment"))
            log.error("%s", why)
            self._send(iter([pb.Report(session=self._session, experiment=experiment_id,
                                       failure=pb.Failure(kind="ReviewError", message=why))]))
            return
        running.offer = offer
        ctx = lifeline.context()
        parent, child = ctx.Pipe()
        spec = ExperimentSpec(offer.digest, tuple(offer.collaborators),
                              offer.run_id, offer.checkpoint, self.config.collaborator,
                              str(self._experiment_folder(experiment_id)))
        running.process = ctx.Process(target=collaborator_main,
                                      args=(child, self.config.name, spec), daemon=True,
                                      name=f"fedloom-collaborator-{experiment_id}")
        lifeline.start(running.process)  # it dies with this envoy, however this one ends
        child.close()
        running.conn = FramePipe(parent)
        with contextlib.suppress(OSError):  # a process that died at once is reported below
            send_package(running.conn, running.package_bytes)
        threading.Thread(target=self._forward, args=(running,), daemon=True).start()
        threading.Thread(target=self._watch, args=(running, self._health_period), daemon=True,
                         name=f"fedloom-watch-{experiment_id}").start()

    def _experiment_folder(self, experiment_id: str) -> Path:
        return self._workdir / "experiments" / experiment_id

    def _on_chain(self, experiment_id: str, chain: pb.ChainRequest) -> None:
        running = self._experiments.get(experiment_id)
        if running is None or running.conn is None:
            return
        running.last_step, running.last_step_at = chain.step, time.time()
        frame = self._pull(running, chain) if chain.bulk_bytes else \
            self._assemble(running, chain)
        if frame is None:
            return
        try:
            running.conn.send(("chain", chain.request, chain.step, frame))
        except OSError:  # the process is gone; _forward reports it
            log.warning("envoy '%s': the collaborator of experiment %s is gone",
                        self.config.name, experiment_id)

    def _assemble(self, running: RunningExperiment, chain: pb.ChainRequest) -> bytes | None:
        """A small state, inside the work items; None until its last piece."""
        assembler = running.chains.setdefault(chain.request,
                                              transport.Assembler(f"state for {chain.step}"))
        frame = assembler.add(chain.state)
        if frame is not None:
            del running.chains[chain.request]
        return frame

    def _pull(self, running: RunningExperiment, chain: pb.ChainRequest) -> MemoryFrame | None:
        """A large state, from the director; a failure to get it fails the chain there (the
        aggregator would otherwise wait for a result that cannot come), unless the state is no
        longer wanted (a newer fan-out replaced it: the aggregator has moved on)."""
        assert self._channel is not None
        request = pb.PullRequest(session=self._session, experiment=running.id,
                                 request=chain.request)
        try:
            return bulk.pull(self._channel, request, chain.bulk_bytes,
                             f"state for {chain.step}")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # superseded: the run moved on
                log.info("envoy '%s': the state for '%s' is no longer wanted: %s",
                         self.config.name, chain.step, exc.details())
                return None
            self._pull_failed(running, chain, exc)
        except FedloomError as exc:
            self._pull_failed(running, chain, exc)
        return None

    def _pull_failed(self, running: RunningExperiment, chain: pb.ChainRequest,
                     exc: BaseException) -> None:
        why = f"envoy '{self.config.name}' could not get the state for '{chain.step}': " \
              f"{_describe(exc)}"
        log.error("%s", why)
        with contextlib.suppress(grpc.RpcError, FedloomError):
            self._send(iter([pb.Report(session=self._session, experiment=running.id,
                                       failure=pb.Failure(kind="FlowRunError", message=why))]))

    def _watch(self, running: RunningExperiment, period: float) -> None:
        """The collaborator process's health check: a ping every period, answered by a thread
        of its own; silent for MISSED_ANSWERS periods (stopped, or stuck in code that never
        lets that thread run), it is reported as failed and killed."""
        started, cpu_before = time.monotonic(), -1.0
        while not running.ended.wait(period):
            now = time.monotonic()
            silent = now - (running.answered or started)
            allowed = MISSED_ANSWERS * period if running.answered else \
                max(STARTUP_SECONDS, MISSED_ANSWERS * period)
            if not running.answered and silent > allowed and silent < STARTUP_LIMIT:
                # Still starting: on a crowded machine (a hundred processes starting at
                # once) Python's imports alone can take minutes. Busy is not hung.
                cpu_now = _cpu_seconds(running.process)
                if cpu_now > cpu_before:
                    cpu_before = cpu_now
                    continue
            if silent > allowed:
                if self._experiments.get(running.id) is running and running.report_once():
                    if running.process is not None:
                        running.process.kill()
                    self._report_failure(running, (
                        f"the collaborator process of envoy '{self.config.name}' stopped "
                        f"answering (silent {silent:.1f} s; it is checked every {period:g} s)"))
                return
            try:
                assert running.conn is not None
                running.conn.send(("ping", now))
            except OSError:
                return  # gone: _forward reports it

    def _process_died(self, running: RunningExperiment) -> None:
        if not running.report_once():
            return  # reported already (and killed) as silent
        process = running.process
        code = process.exitcode if process is not None else None
        if process is not None and code is None:
            process.join(timeout=5)
            code = process.exitcode
        self._report_failure(running, f"the collaborator process of envoy '{self.config.name}' "
                                      f"exited unexpectedly ({_exit_status(code)}; what it "
                                      "printed last is in this envoy's log)")

    def _report_failure(self, running: RunningExperiment, why: str) -> None:
        """Its collaborator is gone: the director hears it as this envoy's failure."""
        log.error("%s", why)
        try:
            self._send(iter([pb.Report(session=self._session, experiment=running.id,
                                       failure=pb.Failure(kind="FlowRunError", message=why))]))
        except (grpc.RpcError, FedloomError) as exc:
            log.warning("envoy '%s': could not report it: %s", self.config.name, _describe(exc))

    def _forward(self, running: RunningExperiment) -> None:
        """Reports from the collaborator process, sent on to the director."""
        assert running.conn is not None
        while True:
            try:
                message = running.conn.recv()
            except (EOFError, OSError):
                if self._experiments.get(running.id) is running:  # not ended by us: it died
                    self._process_died(running)
                return
            running.answered = time.monotonic()
            if message[0] == "pong":
                continue
            try:
                self._report(running.id, message)
            except (grpc.RpcError, FedloomError) as exc:
                log.warning("envoy '%s': could not report to the director: %s",
                            self.config.name, _describe(exc))
                return

    def _report(self, experiment_id: str, message: tuple[Any, ...]) -> None:
        assert self._stub is not None
        reports: Iterator[pb.Report]
        head = pb.Report(session=self._session, experiment=experiment_id)
        if message[0] == "ready":
            head.ready = self.config.name
            reports = iter([head])
        elif message[0] == "setup_failed":
            head.failure.CopyFrom(pb.Failure.FromString(message[1]))
            reports = iter([head])
        else:
            _, request, outcome, frame = message
            head.request = request
            head.outcome.CopyFrom(pb.ChainOutcome.FromString(outcome))
            outcomes = self._outcomes
            if outcomes is not None and outcomes.send(head, frame):
                return
            if self._channel is None:
                raise transport.TransportError("not connected to the director")
            bulk.push(self._channel, head, frame)
            return
        self._send(reports)

    def _send(self, reports: Iterator[pb.Report]) -> None:
        stub = self._stub
        if stub is None:
            raise transport.TransportError("not connected to the director")
        stub.SendReport(reports, timeout=600)

    def _end(self, experiment_id: str, reason: str) -> None:
        self.desk.withdraw(experiment_id, reason or "the experiment ended")
        running = self._experiments.pop(experiment_id, None)
        shutil.rmtree(self._experiment_folder(experiment_id), ignore_errors=True)
        if running is None:
            return
        running.ended.set()
        if reason:
            log.info("envoy '%s': experiment %s ended: %s", self.config.name, experiment_id,
                     reason)
        _stop_process(running, aborted=bool(reason))

    def _end_all(self, reason: str) -> None:
        for experiment_id in list(self._experiments):
            self._end(experiment_id, reason)


def _cpu_seconds(process: BaseProcess | None) -> float:
    """CPU time used so far by ``process`` (Linux: /proc); -1 when unknown or gone."""
    pid = process.pid if process is not None else None
    if pid is None:
        return -1.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


def _beats(session: str, every: float, closed: threading.Event) -> Iterator[pb.WorkRequest]:
    """The health-check stream's messages: the session first, then an empty one per beat."""
    yield pb.WorkRequest(session=session)
    while not closed.wait(every):
        yield pb.WorkRequest()


def _exit_status(code: int | None) -> str:
    """A process's exit code in words: a signal by its name."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _stop_process(running: RunningExperiment, aborted: bool) -> None:
    """Ends the collaborator process: asked to stop when the experiment completed; terminated
    when it was aborted (it may be inside a step that would never return)."""
    process = running.process
    if running.conn is not None and not aborted:
        with contextlib.suppress(OSError):  # the process may be gone already
            running.conn.send(("stop",))
    if process is None:
        return
    if aborted:
        process.terminate()
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if hasattr(exc, "code") else None


def _details(exc: grpc.RpcError) -> str:
    return str(exc.details()) if hasattr(exc, "details") else str(exc)


def _refused(exc: grpc.RpcError) -> bool:
    return _code(exc) in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return f"{code.name if code else 'error'}: {details}"
    return str(exc)
