"""The director's state and scheduling: envoys, experiments, the queue, on one asyncio event
loop (no thread per stream, no locks around the state); its gRPC handlers are in
``director_service``, one experiment's course in ``experiment_run``.

The loop runs in a thread of its own, so the node's main thread (the CLI) keeps signals and the
console. Whatever reaches the state from another thread (a review decided at the console, an
aggregator process's messages) comes in through :meth:`Director.post`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fedloom.federation import transport
from fedloom.federation.names import SHOWN_IN_ERRORS, listed
from fedloom.federation.nodes import lifeline
from fedloom.federation.nodes.config import DirectorConfig
from fedloom.federation.nodes.events import EventLog
from fedloom.federation.nodes.limits import PeerCounters
from fedloom.federation.review.desk import ReviewDesk
from fedloom.federation.review.service import LocalReviewServer
from fedloom.federation.store import (
    DecisionRecord,
    DirectorStore,
    ExperimentRecord,
    SqliteStore,
)
from fedloom.federation.transport import bulk
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.runtime.local.runtime import new_run_id

log = logging.getLogger(__name__)

MISSED_HEALTH_CHECKS = 3  # periods of silence after which an envoy counts as lost
FIRST_BEAT_GRACE = 10.0  # more seconds for a new connection's first health check (a thousand
#                          envoys reconnecting at once to a restarted director are slow to)
ENDED_KEPT_SECONDS = 600.0  # an ended experiment's events and large final state stay this long
STORE_FILE = "director.sqlite"
FINAL = ("done", "failed", "cancelled", "rejected")


@dataclass
class EnvoyLink:
    """One envoy's connection: its work queue and health."""

    name: str
    session: str
    instance: str
    address: str
    work: asyncio.Queue[pb.Work | None] = field(default_factory=asyncio.Queue)
    online: bool = True
    last_seen: float = field(default_factory=time.time)
    beating: bool = False  # its health checks have begun (it registered before)
    since: float = field(default_factory=time.time)  # online (or offline) since
    experiment: str = ""
    lost_reason: str = "disconnected"
    cert_expiry: float | None = None  # its certificate's not-after, when TLS tells it


@dataclass
class Experiment:
    """An experiment while the director holds it in memory (its record is in the store)."""

    id: str
    submitter: str
    collaborators: tuple[str, ...]
    digest: str
    package: bytes
    checkpoint: bool
    flow_name: str
    wait_for_envoys: float
    run_id: str = field(default_factory=new_run_id)
    events: EventLog = field(default_factory=EventLog)
    inbox: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    status: str = "queued"
    submitted_at: float = field(default_factory=time.time)
    waiting: str = ""  # what a queued experiment waits for, as last told
    missing_since: float | None = None  # when envoys it needs were first seen offline
    deadline: asyncio.TimerHandle | None = None
    result: Any = None  # a large final state, until its submitter takes it (Bulk.Result)
    reviewers: set[str] = field(default_factory=set)  # reviewing: who has yet to decide
    step: str = ""  # running: the step last sent to the envoys, how often, and when
    round: int = 0
    step_at: float = 0.0


class Director:
    """The director: start with :meth:`start`, serve until :meth:`stop`."""

    def __init__(self, config: DirectorConfig, server_credentials: grpc.ServerCredentials | None,
                 workdir: Path, store: DirectorStore | None = None) -> None:
        self.config = config
        self.credentials = server_credentials
        self.workdir = workdir
        self.store = store
        self.envoys: dict[str, EnvoyLink] = {}
        self.sessions: dict[str, EnvoyLink] = {}
        self.experiments: dict[str, Experiment] = {}
        self.queue: list[str] = []
        self.counters = PeerCounters(config.limits)
        self.desk = ReviewDesk("director", config.review_experiment, workdir,
                               config.review_timeout)
        self.outbox = bulk.Outbox()  # large chain states, until their envoys pull them
        # Decisions are synced to disk one by one (a site's approval must survive a crash): a
        # thousand envoys' decisions would hold the event loop for seconds, so a thread of
        # their own writes them, in order.
        self._decision_writer = ThreadPoolExecutor(1, thread_name_prefix="fedloom-decisions")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.port = 0  # where it listens, once started
        self.stopping = False  # no new experiment starts; running ones are being cancelled
        self._server: grpc.aio.Server | None = None
        self._review_server: LocalReviewServer | None = None
        self._stopped = threading.Event()
        self._runs: set[asyncio.Task[None]] = set()

    # -- lifecycle (called from the node's main thread) ---------------------------------------

    def start(self) -> int:
        """Open the store, listen, and serve on the loop's own thread; returns the port."""
        started: list[int | BaseException] = []
        ready = threading.Event()
        thread = threading.Thread(target=self._serve, args=(started, ready),
                                  name="fedloom-director", daemon=True)
        thread.start()
        ready.wait()
        if isinstance(started[0], BaseException):
            raise started[0]
        return started[0]

    def wait(self) -> None:
        while not self._stopped.wait(1.0):  # in slices: Ctrl-C reaches the main thread
            pass

    def stop(self, reason: str = "the director is stopping") -> None:
        loop = self.loop
        if loop is not None and not self._stopped.is_set():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(reason), loop)
            future.result(timeout=30)
        self._stopped.wait(30)

    def post(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, from any thread."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(callback, *args)

    def _serve(self, started: list[int | BaseException], ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            port = loop.run_until_complete(self._open())
        except BaseException as exc:
            started.append(exc)
            ready.set()
            loop.close()
            self._stopped.set()
            return
        started.append(port)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()
            self._stopped.set()

    async def _open(self) -> int:
        from fedloom.federation.nodes.director_service import DirectorService
        from fedloom.federation.nodes.status import DirectorNode

        if self.store is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.store = SqliteStore(self.workdir / STORE_FILE)
        self._recover()
        endpoint = transport.Endpoint(self.config.listen_host, self.config.listen_port)
        self._server, port = transport.new_aio_server(self.credentials, endpoint)
        self.port = port
        DirectorService(self).add_to(self._server)
        self._review_server = LocalReviewServer(self.desk, self.workdir,
                                                node=DirectorNode(self))
        self._review_server.start()
        await self._server.start()
        asyncio.get_running_loop().create_task(self._watch_health())
        return port

    def _recover(self) -> None:
        """Experiments a previous director left unfinished cannot go on: they failed."""
        assert self.store is not None
        for record in self.store.recover(time.time(), "the director restarted"):
            log.warning("experiment %s of '%s' was %s when the director stopped: marked failed",
                        record.id, record.submitter, record.state)

    async def _shutdown(self, reason: str) -> None:
        self.stopping = True
        log.info("the director is stopping: %d experiment(s) queued, %d started are cancelled",
                 len(self.queue), sum(1 for e in self.experiments.values()
                                      if e.status not in FINAL and e.id not in self.queue))
        for experiment_id in list(self.queue):
            self.cancel(self.experiments[experiment_id], reason)
        for experiment in list(self.experiments.values()):
            if experiment.status not in FINAL:
                experiment.inbox.put_nowait(("cancel", reason))
        if self._runs:
            await asyncio.wait(self._runs, timeout=15)
        for link in self.envoys.values():
            link.work.put_nowait(None)
        if self._server is not None:
            await self._server.stop(2)
        if self._review_server is not None:
            self._review_server.stop()
        if self.store is not None:
            self._decision_writer.shutdown(wait=True)
            self.store.close()
        assert self.loop is not None
        self.loop.call_soon(self.loop.stop)

    # -- envoys --------------------------------------------------------------------------------

    def healthy(self, link: EnvoyLink) -> bool:
        silent = time.time() - link.last_seen
        return link.online and silent < MISSED_HEALTH_CHECKS * self.config.envoy_health_check_period

    def register(self, name: str, instance: str, address: str,
                 cert_expiry: float | None = None) -> EnvoyLink:
        """A (re)connected envoy; the caller checked no live twin holds the name."""
        old = self.envoys.get(name)
        link = EnvoyLink(name, uuid.uuid4().hex, instance, address, cert_expiry=cert_expiry)
        if old is not None:  # a restarted envoy replaces its old connection
            self._drop_link(old, "reconnected (its collaborator did not survive)")
        self.envoys[name] = link
        self.sessions[link.session] = link
        assert self.store is not None
        self.store.envoy_registered(name, address, link.since, cert_expiry)
        # Back while an experiment it belongs to runs: it is offered that one again.
        running = next((e for e in self.experiments.values()
                        if e.status == "running" and name in e.collaborators), None)
        if running is not None:
            link.experiment = running.id
            running.inbox.put_nowait(("returned", name))
        log.info("envoy '%s' registered from %s", name, address)
        self.schedule()
        return link

    def envoy_lost(self, link: EnvoyLink) -> None:
        """Its work stream ended: it left, broke, or missed its health checks."""
        if self.envoys.get(link.name) is not link or not link.online:
            return  # replaced by a newer connection, or already lost
        self._drop_link(link, link.lost_reason)
        log.info("envoy '%s' %s", link.name, link.lost_reason)
        self.schedule()

    def _drop_link(self, link: EnvoyLink, why: str) -> None:
        link.online = False
        link.since = time.time()
        link.work.put_nowait(None)
        self.sessions.pop(link.session, None)
        assert self.store is not None
        self.store.envoy_offline(link.name, link.since)
        experiment = self.experiments.get(link.experiment)
        if experiment is not None and experiment.status not in FINAL:
            experiment.inbox.put_nowait(("lost", link.name, why))

    async def _watch_health(self) -> None:
        """Declares lost the envoys whose connection is up but that stopped answering: their
        work stream ends (the stream's own wait would notice too, but only when it wakes)."""
        period = self.config.envoy_health_check_period
        loop = asyncio.get_running_loop()
        while True:
            slept_from = loop.time()
            await asyncio.sleep(period)
            # Heartbeats wait unread while this loop is late: silence the director caused by
            # being busy (a thousand envoys registering at once) is not the envoys' fault.
            late = max(0.0, loop.time() - slept_from - period)
            now = time.time()
            for link in list(self.envoys.values()):
                silent = now - link.last_seen
                allowed = MISSED_HEALTH_CHECKS * period + late + \
                    (0.0 if link.beating else FIRST_BEAT_GRACE)
                if link.online and silent > allowed:
                    link.lost_reason = (f"missed its health checks (silent for {silent:.0f} s; "
                                        f"expected every {period:g} s)")
                    self.envoy_lost(link)

    def send(self, name: str, work: pb.Work) -> None:
        link = self.envoys.get(name)
        if link is not None and link.online:
            link.work.put_nowait(work)

    # -- experiments ---------------------------------------------------------------------------

    def accept(self, submitter: str, header: pb.SubmissionHeader, package: bytes,
               flow_name: str) -> Experiment:
        assert self.store is not None
        experiment = Experiment(self.store.new_experiment_id(), submitter,
                                tuple(header.collaborators), header.digest, package,
                                header.checkpoint, flow_name,
                                header.wait_for_envoys or self.config.wait_for_envoys)
        self.store.add_experiment(ExperimentRecord(
            id=experiment.id, submitter=submitter, digest=experiment.digest,
            flow_name=flow_name, run_id=experiment.run_id, checkpoint=experiment.checkpoint,
            participants=experiment.collaborators, state="queued",
            submitted_at=experiment.submitted_at))
        self.experiments[experiment.id] = experiment
        lifeline.warm_up()  # while it is queued and reviewed: its aggregator starts at once
        self.queue.append(experiment.id)
        experiment.events.status("queued")
        log.info("experiment %s submitted by '%s' for %d envoy(s): %s", experiment.id,
                 submitter, len(experiment.collaborators), listed(experiment.collaborators))
        self.schedule()
        return experiment

    def active_of(self, user: str) -> int:
        return sum(1 for e in self.experiments.values()
                   if e.submitter == user and e.status not in FINAL)

    def set_status(self, experiment: Experiment, status: str, reason: str = "") -> None:
        experiment.status = status
        assert self.store is not None
        self.store.set_state(experiment.id, status, reason=reason, at=time.time())

    def schedule(self) -> None:
        """Starts every queued experiment whose envoys are all online and free (in order of
        submission); tells the others what they wait for."""
        if self.stopping:
            return
        for experiment_id in list(self.queue):
            experiment = self.experiments[experiment_id]
            links = [self.envoys.get(name) for name in experiment.collaborators]
            if all(link is not None and link.online and not link.experiment for link in links):
                self.queue.remove(experiment_id)
                self._clear_deadline(experiment)
                for name in experiment.collaborators:
                    self.envoys[name].experiment = experiment.id
                self._start(experiment)
            else:
                self._tell_waiting(experiment)

    def _tell_waiting(self, experiment: Experiment) -> None:
        missing = [n for n in experiment.collaborators
                   if (link := self.envoys.get(n)) is None or not link.online]
        others: list[str] = []  # the experiments its envoys are busy with (for the log)
        if missing:
            if experiment.missing_since is None:
                experiment.missing_since = time.time()
                assert self.loop is not None
                experiment.deadline = self.loop.call_later(
                    experiment.wait_for_envoys, self._envoys_late, experiment)
            since = time.strftime("%H:%M:%S", time.localtime(experiment.missing_since))
            text = f"waiting for envoys {listed(missing)} (offline) since {since}"
        else:
            self._clear_deadline(experiment)
            busy = [n for n in experiment.collaborators if self.envoys[n].experiment]
            # its submitter is told which envoys are busy, not with whose experiments
            text = f"queued: envoys {', '.join(busy)} are busy"
            others = sorted({self.envoys[n].experiment for n in busy})
        if text != experiment.waiting:
            experiment.waiting = text
            experiment.events.status(text)
            log.info("experiment %s: %s%s", experiment.id, text,
                     f" with experiment(s) {', '.join(others)}" if others else "")

    def _clear_deadline(self, experiment: Experiment) -> None:
        if experiment.deadline is not None:
            experiment.deadline.cancel()
        experiment.deadline, experiment.missing_since = None, None

    def _envoys_late(self, experiment: Experiment) -> None:
        if experiment.id not in self.queue:
            return
        missing = [n for n in experiment.collaborators
                   if (link := self.envoys.get(n)) is None or not link.online]
        never = [n for n in missing if n not in self.envoys]
        reason = (f"envoys {listed(missing, SHOWN_IN_ERRORS)} did not come online within "
                  f"{experiment.wait_for_envoys:g} s (wait_for_envoys)"
                  + (f"; never registered: {listed(never, SHOWN_IN_ERRORS)}" if never else "")
                  + ". Start them (fx envoy start), or submit to envoys that are online "
                    "(FederatedRuntime(...).get_envoys())")
        self.queue.remove(experiment.id)
        experiment.events.failure(reason)
        self.end(experiment, "failed", reason)

    def _start(self, experiment: Experiment) -> None:
        from fedloom.federation.nodes.experiment_run import ExperimentRun

        self.set_status(experiment, "reviewing")
        assert self.loop is not None
        task = self.loop.create_task(ExperimentRun(self, experiment).run())
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def cancel(self, experiment: Experiment, reason: str) -> None:
        if experiment.id in self.queue:
            self.queue.remove(experiment.id)
            self._clear_deadline(experiment)
            experiment.events.failure(f"{reason} before it started")
            self.end(experiment, "cancelled", reason)
        elif experiment.status not in FINAL:
            experiment.inbox.put_nowait(("cancel", reason))

    def end(self, experiment: Experiment, status: str, reason: str) -> None:
        """The experiment is over: its envoys are freed, its record final."""
        self.outbox.drop(experiment.id)
        for name in experiment.collaborators:
            link = self.envoys.get(name)
            if link is not None and link.experiment == experiment.id:
                link.work.put_nowait(pb.Work(experiment=experiment.id, end=reason))
                link.experiment = ""
        self.set_status(experiment, status, reason)
        experiment.package = b""  # ended: its record stays, its (maybe large) package goes
        experiment.events.close()
        said = reason if reason.startswith(status) else f"{status}: {reason}"
        log.info("experiment %s %s", experiment.id, said if reason else "completed")
        assert self.loop is not None
        self.loop.call_later(ENDED_KEPT_SECONDS, self.experiments.pop, experiment.id, None)
        self.schedule()

    def record_decision(self, experiment: Experiment, decision: pb.Decision) -> None:
        assert self.store is not None
        self._decision_writer.submit(self.store.add_decision, experiment.id, DecisionRecord(
            decision.participant, decision.approved, decision.decided_by, decision.reason,
            decision.at, decision.digest))

    @property
    def checkpoint_root(self) -> Path:
        """Where aggregator processes record runs (the folder holding ``.metaflow``)."""
        return self.workdir / "checkpoints"
