"""LocalRuntime: simulate a federation on this machine (serially, or in parallel on Ray)."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fedloom.engine import Backend, FlowEngine
from fedloom.errors import ParticipantError
from fedloom.participants import Aggregator, Collaborator
from fedloom.resume import find_resume_point
from fedloom.runtime.local.serial import SerialBackend
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
from fedloom.spec.graph import FlowGraph
from fedloom.stragglers import Faults, PolicySpec, check_policy_spec
from fedloom.tasks import FlowJob, TaskRecorder
from fedloom.tracking.records import Metrics, run_params

log = logging.getLogger(__name__)

BackendFactory = Callable[[Aggregator, Sequence[Collaborator], dict[str, Any]], Backend]


def _serial(aggregator: Aggregator, collaborators: Sequence[Collaborator],
            options: dict[str, Any]) -> Backend:
    faults = options.pop("faults", None)
    if options:
        raise ParticipantError(f"the single_process backend takes no options, got "
                               f"{sorted(options)}")
    return SerialBackend(collaborators, faults)


def _ray(aggregator: Aggregator, collaborators: Sequence[Collaborator],
         options: dict[str, Any]) -> Backend:
    try:
        module = importlib.import_module("fedloom.runtime.local.ray_backend")
    except ImportError as exc:
        raise ParticipantError("backend='ray' needs Ray: pip install 'fedloom[ray]' "
                               f"({exc})") from exc
    try:
        backend: Backend = module.RayBackend(aggregator, collaborators, **options)
    except TypeError as exc:
        raise ParticipantError(f"backend='ray': {exc}; options are address=, num_actors=, "
                               "ray_init_kwargs=, actor_start_timeout=") from exc
    return backend


BACKENDS: dict[str, BackendFactory] = {"single_process": _serial, "ray": _ray}


class LocalRuntime:
    """Runs a flow on this machine: ``backend='single_process'`` (default) or ``'ray'``.

    Ray options: ``address`` (join a running cluster: ``'auto'`` or ``'ray://host:port'``; by
    default an already-initialised Ray is used, else a local one is started), ``num_actors``
    (how many actors the collaborators that ask for no resources share; default one per CPU; a
    collaborator with ``num_cpus``/``num_gpus`` always gets an actor of its own with exactly
    that), ``ray_init_kwargs`` (passed to ``ray.init``) and ``actor_start_timeout`` (seconds).

    ``straggler_policy``: a :class:`~fedloom.stragglers.StragglerPolicy` for every fan-out, or a
    dict from a fan-out's first collaborator step to one. ``faults``: simulated delays, failures
    and disconnects (:class:`~fedloom.stragglers.Faults`) to rehearse a policy.

    ``progress``: show a bar of rounds with the latest metrics while a flow runs (at a
    terminal; plain lines elsewhere). ``None`` (default): on, unless ``FEDLOOM_PROGRESS=0``.
    """

    def __init__(self, aggregator: Aggregator | None = None,
                 collaborators: Sequence[Collaborator] | None = None,
                 backend: str = "single_process", *, straggler_policy: PolicySpec = None,
                 faults: Faults | None = None, progress: bool | None = None,
                 **backend_options: Any) -> None:
        self._aggregator = aggregator if aggregator is not None else Aggregator()
        self._collaborators = list(collaborators or [])
        _check_participants(self._aggregator, self._collaborators)
        check_policy_spec(straggler_policy)
        if faults is not None:
            if not isinstance(faults, Faults):
                raise ParticipantError(f"faults= must be a Faults, got {type(faults).__name__}")
            faults.check_names(self.collaborators)
        self.straggler_policy = straggler_policy
        self.faults = faults
        self.progress = progress
        if backend not in BACKENDS:
            raise ParticipantError(f"unknown backend {backend!r}; choose one of "
                                   f"{sorted(BACKENDS)}")
        self.backend = backend
        self._backend_options = backend_options
        self._backend: Backend | None = None
        self._aggregator_private: dict[str, Any] | None = None

    @property
    def collaborators(self) -> list[str]:
        """Names of the collaborators, in the order given."""
        return [c.name for c in self._collaborators]

    @property
    def aggregator(self) -> str:
        """Name of the aggregator."""
        return self._aggregator.name

    def execute(self, flow: FLSpec, resume: str | None = None) -> None:
        """Run ``flow`` (called by ``flow.run()``). Participants' private attributes are made on
        the first run and persist across runs of this runtime. ``resume``: a run id to go on
        from (see :func:`fedloom.resume.find_resume_point`)."""
        graph = validate_flow(type(flow))
        point = find_resume_point(graph, resume) if resume else None
        check_policy_spec(self.straggler_policy,
                          [name for name, s in graph.steps.items() if s.role == "collaborator"])
        checkpoint = is_checkpointing(flow)
        job = FlowJob(type(flow), graph, tuple(self.collaborators), new_run_id(),
                      record_tasks=checkpoint)
        backend = self._backend_for_run()
        if self._aggregator_private is None:
            self._aggregator_private = self._aggregator.build_private_attributes()
        backend.open(job)
        # The run is registered in the store only once everything it needs is ready.
        recorder = _recorder(graph, job.run_id, point.run_id if point else "") \
            if checkpoint else None
        set_run_id(flow, job.run_id)
        display = self._display(flow, graph.flow_name, job.run_id)
        engine = FlowEngine(job, self._aggregator.name, self._aggregator_private, backend,
                            recorder, stragglers=self.straggler_policy, observer=display)
        initial = point.state if point else public_state(flow)
        params = run_params(initial)
        if point:
            log.info("resuming %s", point.describe())
        # While it runs, the engine holds the state: the flow object keeping the initial model
        # too would cost one more copy of it for the whole run.
        replace_public_state(flow, {})
        try:
            final = engine.run(initial, (point.step, point.transition) if point else None)
        except BaseException:
            replace_public_state(flow, engine.last_state)
            raise
        finally:
            display.close()
            set_metrics(flow, Metrics(engine.metrics, flow=graph.flow_name, params=params))
            backend.close()
        replace_public_state(flow, final)

    def _display(self, flow: FLSpec, flow_name: str, run_id: str) -> RunDisplay:
        """The live bar of rounds and metrics (the one FederatedRuntime shows too)."""
        display = RunDisplay(run_id, rounds_of(flow), title=f"{flow_name} run {run_id}",
                             noun="collaborator", aggregator=self._aggregator.name,
                             enabled=progress_enabled(self.progress),
                             logger=logging.getLogger("fedloom.runtime.local"))
        display.status = "running"
        return display

    def _backend_for_run(self) -> Backend:
        if self._backend is None:
            options = {**self._backend_options, "faults": self.faults}
            self._backend = BACKENDS[self.backend](self._aggregator, self._collaborators,
                                                   options)
        return self._backend

    def shutdown(self) -> None:
        """Release the backend (Ray actors, and Ray if this runtime started it). Private
        attributes are made again if the runtime is used after this."""
        stop = getattr(self._backend, "shutdown", None)
        if stop is not None:
            stop()
        self._backend = None
        self._aggregator_private = None

    def __enter__(self) -> LocalRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (f"LocalRuntime(aggregator={self.aggregator!r}, collaborators="
                f"{self.collaborators!r}, backend={self.backend!r})")


def _recorder(graph: FlowGraph, run_id: str, resumed_from: str) -> TaskRecorder:
    from fedloom.checkpoint.recorder import MetaflowRecorder  # Metaflow only when asked for

    return MetaflowRecorder(graph, run_id, resumed_from=resumed_from)


def _check_participants(aggregator: Any, collaborators: list[Any]) -> None:
    if not isinstance(aggregator, Aggregator):
        raise ParticipantError(f"aggregator= must be an Aggregator, got "
                               f"{type(aggregator).__name__}")
    for c in collaborators:
        if not isinstance(c, Collaborator):
            raise ParticipantError(f"collaborators= must hold Collaborator objects, got "
                                   f"{type(c).__name__}")
    names = [c.name for c in collaborators]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ParticipantError(f"collaborator names must be unique; repeated: {repeated}")


_run_lock = threading.Lock()
_last_run_id = 0


def new_run_id() -> str:
    """A Metaflow-style run id (microseconds since the epoch), unique within this process."""
    global _last_run_id
    with _run_lock:
        candidate = time.time_ns() // 1000
        _last_run_id = max(candidate, _last_run_id + 1)
        return str(_last_run_id)
