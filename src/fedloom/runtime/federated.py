"""FederatedRuntime: submit a flow to a running director and follow it to the end.

``flow.run()`` packages the flow (its module or notebook, plus its constructor state), submits
it, prints each task's output as it happens (attributed to step and participant), and returns
with the final state on the flow object — or raises the run's error. It never hangs: the event
stream is the run's own, and Ctrl-C cancels the experiment everywhere.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from fedloom.capture import print_attributed
from fedloom.checkpoint.transfer import unpack_run
from fedloom.errors import ExperimentRejected, FedloomError, ParticipantError, ReviewDecision
from fedloom.federation import transport
from fedloom.federation.overview import EnvoyStatus, ExperimentStatus, TaskOutput
from fedloom.federation.package import ExperimentPackage, package_flow
from fedloom.federation.transport import bulk, messages, wire
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.federation.transport.proto import fedloom_pb2_grpc as rpc
from fedloom.resume import find_resume_point
from fedloom.runtime.progress import RunDisplay, progress_enabled, rounds_of
from fedloom.spec.flowspec import (
    FLSpec,
    is_checkpointing,
    public_state,
    replace_public_state,
    set_metrics,
    set_run_id,
    validate_flow,
)
from fedloom.state import transition_to_json, uncopyable
from fedloom.stragglers import PolicySpec, check_policy_spec, policy_to_json
from fedloom.tracking.records import MetricRecord, Metrics, run_params

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
RECONNECT_SECONDS = 60.0  # how long a follower waits for a director that went away to return


__all__ = ["EnvoyStatus", "ExperimentStatus", "FederatedRuntime", "TaskOutput"]


class FederatedRuntime:
    """Runs a flow across a federation. ``director`` is the spec's dict:
    ``{director_node_fqdn, director_port, cert_chain, api_cert, api_private_key}``.

    Without ``collaborators`` it runs nothing, but sees and controls your experiments:
    :meth:`experiments`, :meth:`experiment`, :meth:`logs`, :meth:`cancel`, :meth:`get_envoys`.

    ``progress``: while ``run()`` waits, show what it waits for, then a bar of rounds with the
    latest metrics (at a terminal; plain lines elsewhere). ``None`` (default): on, unless
    ``FEDLOOM_PROGRESS=0``."""

    def __init__(self, collaborators: Sequence[str] = (), director: Mapping[str, Any] | None = None,
                 notebook_path: str | Path | None = None, tls: bool = True, *,
                 straggler_policy: PolicySpec = None,
                 wait_for_envoys: float | None = None, progress: bool | None = None) -> None:
        if isinstance(collaborators, str) or \
                not all(isinstance(c, str) for c in collaborators):
            raise ParticipantError("collaborators= must be a list of envoy names")
        if director is None:
            raise ParticipantError("director= is required: {'director_node_fqdn': HOST, "
                                   "'director_port': PORT, 'cert_chain': CA, 'api_cert': CERT, "
                                   "'api_private_key': KEY}")
        # As LocalRuntime: a name twice would be one envoy asked to review and run twice.
        repeated = sorted(name for name, count in Counter(collaborators).items() if count > 1)
        if repeated:
            raise ParticipantError(f"collaborator names must be unique; repeated: {repeated} "
                                   "(name each envoy once)")
        self._collaborators = list(collaborators)
        if wait_for_envoys is not None and not wait_for_envoys > 0:
            raise ParticipantError(f"wait_for_envoys= must be a number of seconds > 0, got "
                                   f"{wait_for_envoys!r} (None: the director's setting)")
        self.wait_for_envoys = wait_for_envoys
        check_policy_spec(straggler_policy)
        self.straggler_policy = straggler_policy
        self.progress = progress
        self.endpoint = transport.Endpoint(str(director.get("director_node_fqdn", "localhost")),
                                           int(director.get("director_port", 50050)))
        self.notebook_path = notebook_path
        self._credentials = _credentials(director, tls)
        self.last_experiment = ""
        self.last_review: list[ReviewDecision] = []  # every participant's, for the last run

    @property
    def collaborators(self) -> list[str]:
        return list(self._collaborators)

    def get_envoys(self) -> list[EnvoyStatus]:
        """The envoys the director knows, as much as its ``visibility`` setting shows: the
        name, whether it is online (by default), when it was last seen and whether it is busy
        (with your experiment: which)."""
        with self._channel() as channel, self._rpc_errors("listing the envoys"):
            reply = rpc.DirectorStub(channel).Envoys(pb.EnvoysRequest(), timeout=30)
        return [EnvoyStatus.from_message(e, reply.visibility) for e in reply.envoys]

    def experiments(self, limit: int = 0) -> list[ExperimentStatus]:
        """Your experiments on the director, newest first (``limit``: only that many): those
        queued, in review, running, and those that ended (also before a restart)."""
        with self._channel() as channel, self._rpc_errors("listing your experiments"):
            reply = rpc.DirectorStub(channel).ListExperiments(
                pb.ExperimentsRequest(limit=limit), timeout=30)
        return [ExperimentStatus.from_message(e) for e in reply.experiments]

    def experiment(self, experiment: str) -> ExperimentStatus:
        """One of your experiments: its phase (who reviews it, which envoys it waits for, the
        step and round it runs), times, participants, and why it ended so."""
        with self._channel() as channel, \
                self._rpc_errors(f"showing experiment {experiment}"):
            info = rpc.DirectorStub(channel).ShowExperiment(
                pb.ExperimentRequest(experiment=experiment), timeout=30)
        return ExperimentStatus.from_message(info)

    def logs(self, experiment: str, follow: bool = False) -> Iterator[TaskOutput]:
        """The output of each task of one of your experiments, from the start (the director
        keeps it while it holds the experiment: while it runs, and 10 minutes after its end);
        with ``follow``, then each as it comes, until the experiment ends. Leaving early
        cancels nothing. A failed experiment ends the iteration with its error."""
        with self._channel() as channel, \
                self._rpc_errors(f"reading the output of experiment {experiment}"):
            request = pb.EventsRequest(experiment=experiment, watch=True, follow=follow)
            failure: pb.Failure | None = None
            for event in rpc.DirectorStub(channel).Events(request):
                kind = event.WhichOneof("kind")
                if kind in ("output", "outputs"):
                    yield from map(TaskOutput.from_message, messages.outputs_of(event))
                elif kind == "failure":
                    failure = event.failure
            if failure is not None and follow:
                raise messages.error(failure)

    def cancel(self, experiment: str) -> None:
        """Cancel one of your experiments, wherever it is (queued, in review, running)."""
        with self._channel() as channel, \
                self._rpc_errors(f"cancelling experiment {experiment}"):
            rpc.DirectorStub(channel).Cancel(pb.CancelRequest(experiment=experiment),
                                             timeout=30)

    def execute(self, flow: FLSpec, resume: str | None = None) -> None:
        """Called by ``flow.run()``. ``resume``: the id of a checkpointed run in the local
        Metaflow datastore (runs are fetched there at their end) to go on from."""
        if not self._collaborators:
            raise ParticipantError("this FederatedRuntime names no collaborators: "
                                   "FederatedRuntime(collaborators=[envoy names], ...) to run a "
                                   "flow")
        graph = validate_flow(type(flow))
        point = find_resume_point(graph, resume) if resume else None
        settings = {}
        policy = policy_to_json(self.straggler_policy)
        if policy:
            settings["straggler_policy"] = policy
        if point:
            settings["resume"] = json.dumps({"run_id": point.run_id, "step": point.step,
                                             "next": transition_to_json(point.transition)})
        state = point.state if point else public_state(flow)
        try:
            initial = wire.dumps(state)
        except wire.WireError as err:  # what LocalRuntime says at a fan-out, here at the start
            raise uncopyable(state, "", err, copies=wire.encodable,
                             to="sent to the federation as the flow's starting state") from err
        package = package_flow(type(flow), initial,
                               notebook_path=self.notebook_path, created_by=getpass.getuser(),
                               settings=settings)
        checkpoint = is_checkpointing(flow)
        with self._channel() as channel, self._rpc_errors("running the experiment"):
            stub = rpc.DirectorStub(channel)
            reply = self._submit(channel, stub, package, checkpoint)
            experiment = self.last_experiment = reply.experiment
            log.info("submitted experiment %s (package %s)", experiment, package.digest[:12])
            set_run_id(flow, reply.run_id)
            metrics: list[MetricRecord] = []  # as they arrive; on the flow however it ends
            try:
                final = self._follow(channel, stub, experiment, package, type(flow),
                                     rounds_of(flow), (reply.run_id, metrics))
            except KeyboardInterrupt:
                print(f"experiment {experiment}: cancelling it everywhere (Ctrl-C again to "
                      "stop waiting for the director)", file=sys.stderr, flush=True)
                with suppress(grpc.RpcError):  # it may have ended meanwhile
                    stub.Cancel(pb.CancelRequest(experiment=experiment), timeout=30)
                raise
            except ExperimentRejected:
                raise  # nothing ran, so nothing was recorded
            except BaseException:
                if checkpoint:  # a failed run's record is wanted most of all
                    self._fetch_quietly(channel, experiment, (graph.flow_name, reply.run_id))
                raise
            finally:
                set_metrics(flow, Metrics(metrics, flow=graph.flow_name,
                                          params=run_params(state)))
            if checkpoint:
                self._fetch_quietly(channel, experiment, (graph.flow_name, reply.run_id))
        replace_public_state(flow, final)

    def fetch_run(self, experiment: str | None = None,
                  datastore_root: str | Path | None = None) -> Path:
        """Copies the director's record of ``experiment`` (default: the last one submitted
        here) into the local Metaflow datastore, so ``metaflow.Flow(...)`` reads it; returns
        the run's folder. ``flow.run()`` does this by itself when the flow checkpoints."""
        experiment = experiment or self.last_experiment
        if not experiment:
            raise ParticipantError("no experiment to fetch: run a flow with this runtime first, "
                                   "or pass experiment=<id>")
        with self._channel() as channel, \
                self._rpc_errors(f"fetching the record of experiment {experiment}"):
            return self._fetch(channel, experiment, datastore_root)

    def _fetch(self, channel: grpc.Channel, experiment: str,
               datastore_root: str | Path | None,
               expected: tuple[str, str] | None = None) -> Path:
        archive = bulk.fetch_run(channel, experiment, timeout=3600)
        root = Path(datastore_root) if datastore_root else _local_datastore_root()
        return unpack_run(archive.view, root, expected)

    def _fetch_quietly(self, channel: grpc.Channel, experiment: str,
                       expected: tuple[str, str]) -> None:
        try:
            where = self._fetch(channel, experiment, None, expected)
        except (grpc.RpcError, FedloomError) as exc:
            details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            log.warning("the record of experiment %s stays on the director: %s (fetch it "
                        "later with FederatedRuntime.fetch_run)", experiment, details)
        else:
            log.info("experiment %s recorded in %s", experiment, where)

    def _submit(self, channel: grpc.Channel, stub: rpc.DirectorStub, package: ExperimentPackage,
                checkpoint: bool) -> pb.SubmitReply:
        """The package: in chunks on Submit when small, else in raw pieces on Bulk.Submit."""
        header = pb.SubmissionHeader(collaborators=self._collaborators, digest=package.digest,
                                     checkpoint=checkpoint,
                                     wait_for_envoys=self.wait_for_envoys or 0.0)
        data = package.to_bytes()
        if len(data) > bulk.INLINE_BYTES:
            return bulk.submit(channel, header, data)

        def submission() -> Iterator[pb.Submission]:
            yield pb.Submission(header=header)
            for part in transport.chunks(data):
                yield pb.Submission(package=part)

        reply: pb.SubmitReply = stub.Submit(submission(), timeout=600)
        return reply

    def _follow(self, channel: grpc.Channel, stub: rpc.DirectorStub, experiment: str,
                package: ExperimentPackage, flow_cls: type, rounds: int | None = None,
                metrics: tuple[str, list[MetricRecord]] = ("", [])) -> dict[str, Any]:
        """The experiment's events until its end; returns its final state. ``metrics``: the
        run id, and the list each metric is added to as it arrives (with its task's output)."""
        assembler = transport.Assembler("final state")
        frame: bytes | memoryview | None = None
        failure: pb.Failure | None = None
        # a live line at a terminal, else log lines
        display = RunDisplay(experiment, rounds, enabled=progress_enabled(self.progress))
        run_id, received = metrics
        try:
            for event in self._events(channel, stub, experiment):
                kind = event.WhichOneof("kind")
                if kind in ("output", "outputs"):
                    for out in messages.outputs_of(event):
                        print_attributed(out.step, out.participant, out.stdout, out.stderr)
                        display.on_output(out)
                        if out.metrics and out.ok:  # a failed attempt's do not count
                            records = messages.metric_records(out, run_id)
                            received.extend(records)
                            display.on_metrics(records)
                elif kind == "status":
                    display.on_status(event.status)
                elif kind == "progress":
                    display.on_progress(event.progress)
                elif kind == "review":
                    self.last_review = [_decision(d) for d in event.review.decisions]
                    print_review(experiment, event.review.accepted, self.last_review)
                    if not event.review.accepted:
                        raise ExperimentRejected(experiment, self.last_review)
                elif kind == "final_state":
                    frame = assembler.add(event.final_state) or frame
                elif kind == "final_state_bulk":  # large: taken from the director on Bulk
                    frame = bulk.result(channel, experiment, event.final_state_bulk).view
                elif kind == "failure":
                    failure = event.failure
        finally:
            display.close()
        if failure is not None:
            raise messages.error(failure)
        if frame is None:
            raise FedloomError(f"experiment {experiment} ended without a result; see the "
                               "director's log")
        # Objects of the flow's own classes come back under the package's module name; here
        # they are the user's own classes again (the package is the user's code).
        own = flow_cls.__module__
        aliases = {package.module: own} if package.module != own else {}
        state = wire.loads(frame, allowed_modules={own}, module_aliases=aliases,
                           allow_main=True, adopt=True)  # the frame is ours alone
        return dict(state)

    def _events(self, channel: grpc.Channel, stub: rpc.DirectorStub,
                experiment: str) -> Iterator[pb.Event]:
        """The experiment's events; when the director goes away, waits for it to return and
        goes on after the events already seen (a restarted director tells how it ended)."""
        seen = 0
        while True:
            try:
                for event in stub.Events(pb.EventsRequest(experiment=experiment, after=seen)):
                    seen += 1
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                self._await_director(channel, experiment, exc)

    def _await_director(self, channel: grpc.Channel, experiment: str,
                        lost: grpc.RpcError) -> None:
        log.warning("experiment %s: lost the director at %s (%s); waiting up to %g s for it "
                    "to come back", experiment, self.endpoint.address, lost.details(),
                    RECONNECT_SECONDS)
        try:
            grpc.channel_ready_future(channel).result(timeout=RECONNECT_SECONDS)
        except grpc.FutureTimeoutError:
            raise FedloomError(
                f"the director at {self.endpoint.address} went away while experiment "
                f"{experiment} ran ({lost.details()}) and did not come back within "
                f"{RECONNECT_SECONDS:g} s. If it restarts, it marks the experiment failed; a "
                f"checkpointed run's record can then be fetched with "
                f"FederatedRuntime(...).fetch_run('{experiment}')") from None

    @contextmanager
    def _rpc_errors(self, doing: str) -> Iterator[None]:
        """gRPC's errors as fedloom errors that say what failed and what to do."""
        try:
            yield
        except grpc.RpcError as exc:
            raise director_error(exc, self.endpoint.address, doing) from None

    def _channel(self) -> grpc.Channel:
        channel = transport.open_channel(self.endpoint, self._credentials)
        try:
            transport.wait_ready(channel, self.endpoint, CONNECT_TIMEOUT,
                                 tls=self._credentials is not None)
        except BaseException:
            channel.close()
            raise
        return channel


def director_error(exc: grpc.RpcError, address: str, doing: str) -> FedloomError:
    """A gRPC error from the director as a fedloom error naming what failed."""
    code, details = exc.code(), exc.details() or "no details"
    if code == grpc.StatusCode.UNAVAILABLE:
        return FedloomError(f"the director at {address} cannot be reached while {doing}: "
                            f"{details}. Is it running? (fx director start)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FedloomError(f"the director at {address} did not answer in time while {doing}")
    return FedloomError(f"the director at {address} refused {doing}: {details}")


def _decision(message: pb.Decision) -> ReviewDecision:
    return ReviewDecision(message.participant, message.approved, message.reason,
                          message.decided_by, message.at)


def print_review(experiment: str, accepted: bool, decisions: list[ReviewDecision]) -> None:
    """The review's outcome as a table: participant, decision, reason, who decided, when."""
    table = Table(title=f"experiment {experiment}: {'Accepted' if accepted else 'Rejected'}",
                  title_justify="left")
    for column in ("participant", "decision", "reason", "decided by", "at"):
        table.add_column(column)
    for d in decisions:
        when = datetime.fromtimestamp(d.at).isoformat(sep=" ", timespec="seconds") if d.at \
            else ""
        table.add_row(d.participant, d.verdict, d.reason, d.decided_by, when)
    Console(highlight=False).print(table)


def _local_datastore_root() -> Path:
    """Where local runs are recorded, so fetched runs sit beside them."""
    try:
        from fedloom.checkpoint.metaflow_store import default_datastore_root
    except ImportError:  # without Metaflow the record is still kept, where Metaflow would look
        return Path.cwd() / ".metaflow"
    return Path(default_datastore_root())


def _credentials(director: Mapping[str, Any], tls: bool) -> grpc.ChannelCredentials | None:
    if not tls:
        return None
    from fedloom.federation.pki import TlsFiles, channel_credentials

    paths = [director.get(k) for k in ("cert_chain", "api_cert", "api_private_key")]
    if not all(paths):
        raise ParticipantError("tls=True needs director={'cert_chain': CA, 'api_cert': CERT, "
                               "'api_private_key': KEY} (make them with fx pki), or pass "
                               "tls=False to connect without TLS")
    return channel_credentials(TlsFiles(*(Path(p) for p in paths)))  # type: ignore[arg-type]
