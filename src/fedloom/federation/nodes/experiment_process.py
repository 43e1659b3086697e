"""The two processes an experiment runs in: the aggregator (a child of the director) and each
collaborator (a child of its envoy). Both load the approved package, make their private
attributes there, and talk to their parent over a pipe; the parent relays over gRPC.

Messages on the pipes are tuples of plain values and bytes (wire frames, protobuf bytes), so
neither side ever unpickles anything but the restricted wire format for flow state.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fedloom.engine import ChainResult, CollaboratorSite, FlowEngine
from fedloom.errors import FedloomError, FlowRunError, TransitionError
from fedloom.federation.nodes import lifeline
from fedloom.federation.nodes.config import PrivateAttributesSpec
from fedloom.federation.package import ExperimentPackage, load_package
from fedloom.federation.transport import messages, wire
from fedloom.federation.transport.pipes import AnsweringPipe, FramePipe
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.spec.flowspec import validate_flow
from fedloom.state import State, Transition, transition_from_json, uncopyable
from fedloom.stragglers import Dropped, dropped_for_failure, policy_from_json
from fedloom.tasks import FlowJob, TaskRecord, TaskRecorder


@dataclass(frozen=True)
class ExperimentSpec:
    """What a process needs to run its side of an experiment (picklable: plain values). The
    package itself follows on the pipe (see :func:`send_package`)."""

    digest: str
    collaborators: tuple[str, ...]
    run_id: str
    checkpoint: bool
    private: PrivateAttributesSpec
    workdir: str
    checkpoint_root: str = ""  # the folder holding .metaflow; "" is Metaflow's default
    # The node: the process that makes the spec and starts the process (which dies with it).
    parent_pid: int = field(default_factory=os.getpid)


def send_package(conn: FramePipe, package: bytes) -> None:
    """The package, to a process just started: its first message, in a memory file (a large
    initial state is neither pickled into the process's arguments nor copied through a pipe)."""
    conn.send(("package", package))


def _load(spec: ExperimentSpec, conn: FramePipe | AnsweringPipe
          ) -> tuple[ExperimentPackage, FlowJob]:
    kind, data = conn.recv()
    if kind != "package":
        raise FedloomError(f"expected the experiment package first, got {kind!r}")
    # The node checked these bytes against the digest it approved, and hands them over from its
    # own memory: they are not hashed again here.
    package = ExperimentPackage.from_verified_bytes(data, spec.digest)
    flow_cls = load_package(package, Path(spec.workdir))
    job = FlowJob(flow_cls, validate_flow(flow_cls), spec.collaborators, spec.run_id,
                  record_tasks=spec.checkpoint)
    return package, job


def initial_state_aliases(package: ExperimentPackage) -> dict[str, str]:
    """The constructor state was encoded where the flow was defined (often ``__main__`` in a
    notebook or script); here that code is the package's module."""
    original = package.metadata.get("flow_module", "")
    return {original: package.module} if original and original != package.module else {}


# -- aggregator side ---------------------------------------------------------------------------

class RemoteChains:
    """The engine's backend in the aggregator process: chains run on envoys, via the director."""

    def __init__(self, conn: FramePipe, allowed_modules: frozenset[str]) -> None:
        self._conn = conn
        self._allowed = allowed_modules
        self._lost: dict[str, str] = {}  # envoys gone for the rest of the experiment, and why
        self._run_id = ""

    def open(self, job: FlowJob) -> None:
        """Envoys were prepared by the director before this process started."""
        self._run_id = job.run_id

    def close(self) -> None:
        """Nothing to release."""

    def run_chains(self, step: str, names: Sequence[str], sent: State, *,
                   deadline: float | None = None,
                   tolerant: bool = False) -> list[ChainResult | Dropped]:
        while self._conn.poll(0):  # news that came while the aggregator was busy
            self._notice(self._conn.recv())
        outcomes: dict[str, ChainResult | Dropped] = {}
        for name in names:
            if name in self._lost:
                self._envoy_lost(outcomes, name, self._lost[name], step, tolerant)
        asked = [name for name in names if name not in outcomes]
        request = uuid.uuid4().hex
        if asked:
            self._conn.send(("chains", request, step, asked, _encoded(
                sent, step, f"sent to each collaborator of '{step}'")))
        ends = None if deadline is None else time.monotonic() + deadline
        while len(outcomes) < len(names):
            if ends is not None and not self._conn.poll(max(ends - time.monotonic(), 0)):
                break  # the deadline passed; results that come later are ignored
            message = self._conn.recv()  # the director always answers: results, or "abort"
            if message[0] == "abort":
                raise FlowRunError(message[1])
            if message[0] in ("lost", "rejoined"):
                self._notice(message)
                if message[0] == "lost" and message[1] in asked and \
                        message[1] not in outcomes:
                    self._envoy_lost(outcomes, message[1], message[2], step, tolerant)
                continue
            _, got_request, outcome_bytes, frame = message
            if got_request != request:
                continue  # a late answer to an earlier fan-out: never mixed into this one
            outcome = pb.ChainOutcome.FromString(outcome_bytes)
            try:
                outcomes[outcome.collaborator] = self._result(outcome, frame)
            except FlowRunError as err:
                if not tolerant:
                    raise
                outcomes[outcome.collaborator] = dropped_for_failure(outcome.collaborator, err)
        for name in names:
            if name not in outcomes:
                outcomes[name] = Dropped(name, "timed out",
                                         f"timed out: no result within {deadline} s")
        return [outcomes[name] for name in names]

    def _notice(self, message: tuple[Any, ...]) -> None:
        """An envoy lost, or back in the experiment (it is given work again from the next
        fan-out); anything else outside a fan-out is a late result, ignored."""
        if message[0] == "abort":
            raise FlowRunError(message[1])
        if message[0] == "lost":
            self._lost[message[1]] = message[2]
        elif message[0] == "rejoined":
            self._lost.pop(message[1], None)

    def _envoy_lost(self, outcomes: dict[str, ChainResult | Dropped], name: str, why: str,
                    step: str, tolerant: bool) -> None:
        if not tolerant:
            raise FlowRunError(f"envoy '{name}' {why} during the experiment (its collaborator "
                               "is gone; without a straggler policy the run cannot go on)",
                               step=step, participant=name)
        outcomes[name] = Dropped(name, "disconnected", f"envoy {why}")

    def _result(self, outcome: pb.ChainOutcome, frame: bytes) -> ChainResult:
        payload = wire.loads(frame, allowed_modules=self._allowed, adopt=True)
        artifacts = payload.get("artifacts") or [{}] * len(outcome.tasks)
        tasks = [_task_record(info, values, self._run_id)
                 for info, values in zip(outcome.tasks, artifacts, strict=False)]
        if outcome.HasField("failure"):
            err = messages.error(outcome.failure)
            if isinstance(err, FlowRunError):
                err.tasks = tasks
            raise err
        # As in this process: what the chain's tasks logged, not what failed attempts did.
        metrics = [m for task in tasks if task.ok for m in task.metrics]
        return ChainResult(outcome.collaborator, outcome.join_step, payload["state"], tasks,
                           metrics)


class OutputBatchingPipe(FramePipe):
    """The aggregator's pipe to the director, with the tasks' output sent in batches: the
    hundred tasks of a fan-out, recorded one after the other, go as one message (and reach
    the user as one event), not a hundred. A batch goes out :data:`OUTPUT_DELAY` seconds
    after its first task, or before any other message, so it never falls behind one."""

    OUTPUT_DELAY = 0.02

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._outputs: list[bytes] = []
        self._outputs_lock = threading.Lock()

    def add_output(self, task_info: bytes) -> None:
        with self._outputs_lock:
            self._outputs.append(task_info)
            if len(self._outputs) > 1:
                return  # a flush is due already
        flush = threading.Timer(self.OUTPUT_DELAY, self.flush_outputs)
        flush.daemon = True
        flush.start()

    def flush_outputs(self) -> None:
        with self._outputs_lock:  # held while sending: batches leave in order
            if self._outputs:
                outputs, self._outputs = self._outputs, []
                super().send(("outputs", outputs))

    def send(self, message: tuple[Any, ...]) -> None:
        self.flush_outputs()
        super().send(message)


class OutputForwarder:
    """Sends every task's output to the director (for the user), then records it if asked."""

    def __init__(self, conn: OutputBatchingPipe, inner: TaskRecorder | None) -> None:
        self._conn = conn
        self._inner = inner

    def record(self, task: TaskRecord) -> None:
        self._conn.add_output(messages.task_info(task).SerializeToString())
        if self._inner is not None:
            self._inner.record(task)

    def finish(self, ok: bool) -> None:
        if self._inner is not None:
            self._inner.finish(ok)


def aggregator_main(connection: Connection, spec: ExperimentSpec) -> None:
    """Entry point of the aggregator process."""
    lifeline.bind_to_parent(spec.parent_pid)
    conn = OutputBatchingPipe(connection)
    try:
        package, job = _load(spec, conn)
        allowed = frozenset({package.module})
        initial = wire.loads(package.initial_state, allowed_modules=allowed,
                             module_aliases=initial_state_aliases(package))
        # Decoded: its encoded copy (a model's size) is not kept for the whole run.
        package = replace(package, initial_state=b"")
        private = spec.private.build()
        resume_from, resume_at = _resume(package)
        # Set up while the envoys start their collaborators; the flow runs when they are up.
        if conn.recv()[0] != "go":
            return  # the experiment ended before it could run
        recorder: TaskRecorder | None = None
        if spec.checkpoint:
            from fedloom.checkpoint.recorder import MetaflowRecorder

            recorder = MetaflowRecorder(job.graph, spec.run_id, spec.checkpoint_root or None,
                                        resumed_from=resume_from)
        stragglers = policy_from_json(package.metadata.get("straggler_policy", ""))
        engine = FlowEngine(job, "aggregator", private, RemoteChains(conn, allowed),
                            OutputForwarder(conn, recorder), live_output=False,
                            stragglers=stragglers)
        final = engine.run(initial, resume_at)
        conn.send(("done", _encoded(final, "", "sent back to run() as the flow's final state")))
    except BaseException as exc:  # everything goes to the user; the director stays up
        conn.send(("failed", messages.failure(exc).SerializeToString()))


def _encoded(state: State, step: str, to: str) -> wire.FrameParts:
    """The state for the wire; what cannot go is named, with how to fix it, as locally."""
    try:
        return wire.dumps_parts(state)
    except wire.WireError as err:
        raise uncopyable(state, step, err, to=to, copies=wire.encodable) from err


def _recordable(tasks: list[TaskRecord], allowed: frozenset[str]) -> list[dict[str, Any]]:
    """Each task's recorded attributes as values for the wire, not as pickles: what an envoy
    sends is decoded only by the restricted wire format, so a checkpoint the director keeps,
    and the user fetches and unpickles, holds nothing a site could smuggle in. Values the
    aggregator could not decode are left out (and noted as not recordable)."""
    recordable = []
    for task in tasks:
        values: dict[str, Any] = {}
        for name, blob in task.artifacts.items():
            assert isinstance(blob, bytes), "a collaborator process records no run itself"
            value = pickle.loads(blob)  # this process's own pickles, of its own state
            try:
                wire.loads(wire.dumps(value), allowed_modules=allowed)
            except wire.WireError:
                task.unpicklable.append(name)
                continue
            values[name] = value
        recordable.append(values)
    return recordable


def _task_record(info: pb.TaskInfo, values: dict[str, Any], run_id: str = "") -> TaskRecord:
    """A collaborator's task as the aggregator records it: its values pickled here."""
    from fedloom.checkpoint.artifacts import serialize_artifacts, sink_for

    blobs, skipped = serialize_artifacts(values, sink_for(run_id)) if values else ({}, [])
    record = messages.task_record(info, blobs, run_id)
    record.unpicklable.extend(skipped)
    return record


def _resume(package: ExperimentPackage) -> tuple[str, tuple[str, Transition] | None]:
    """The run this experiment resumes and where, from the package (reviewers saw it)."""
    text = package.metadata.get("resume", "")
    if not text:
        return "", None
    point = json.loads(text)
    return str(point["run_id"]), (str(point["step"]), transition_from_json(point["next"]))


# -- collaborator side -------------------------------------------------------------------------

def collaborator_main(connection: Connection, name: str, spec: ExperimentSpec) -> None:
    """Entry point of a collaborator process on an envoy. It answers its envoy's pings from
    a thread of its own, so a process that is stopped or stuck (a step that never lets that
    thread run) is found by its envoy."""
    lifeline.bind_to_parent(spec.parent_pid)
    conn = AnsweringPipe(FramePipe(connection))
    try:
        package, job = _load(spec, conn)
        site = CollaboratorSite(name, spec.private.build(), in_process=False)
    except BaseException as exc:
        conn.send(("setup_failed", messages.failure(exc).SerializeToString()))
        return
    allowed = frozenset({package.module})
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return  # the envoy went away
        if message[0] == "stop":
            return
        _, request, step, frame = message
        conn.send(("outcome", request, *_run_chain(site, job, name, step, frame, allowed)))


def _run_chain(site: CollaboratorSite, job: FlowJob, name: str, step: str, frame: bytes,
               allowed: frozenset[str]) -> tuple[bytes, wire.FrameParts]:
    tasks: list[TaskRecord] = []
    try:
        # Copied out, not adopted: a step that trains in place would hold the frame twice.
        result = site.run_chain(job, step, wire.loads(frame, allowed_modules=allowed))
        outcome = pb.ChainOutcome(collaborator=name, join_step=result.join_step)
        state: Any = result.state
        tasks = result.tasks
    except FedloomError as exc:
        tasks = list(getattr(exc, "tasks", []))
        outcome = pb.ChainOutcome(collaborator=name, failure=messages.failure(exc))
        state = {}
    artifacts = _recordable(tasks, allowed)  # first: it notes what cannot be recorded
    outcome.tasks.extend(messages.task_info(t) for t in tasks)
    try:
        sent = wire.dumps_parts({"state": state, "artifacts": artifacts})
    except Exception as exc:  # e.g. a lock in a public attribute: say so instead of dying
        named = uncopyable(state, outcome.join_step, exc, copies=wire.encodable,
                           to=f"sent back to '{outcome.join_step}'")
        outcome = pb.ChainOutcome(collaborator=name, failure=messages.failure(TransitionError(
            str(named), step=tasks[-1].step if tasks else step, participant=name)))
        sent = wire.dumps_parts({"state": {}, "artifacts": []})
    return outcome.SerializeToString(), sent
