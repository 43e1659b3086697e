"""The Ray backend: collaborator chains run in parallel in Ray actors.

Each actor hosts one or more collaborators (their private attributes are made inside the actor
and never leave it). At a fan-out the sent state goes into Ray's object store once; every actor
reads it without a copy and makes one private copy per collaborator it hosts. The aggregator side
runs in this (the driver) process, with the one engine.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedloom.capture import print_attributed
from fedloom.engine import (
    ChainResult,
    CollaboratorSite,
    copies_for,
    keep_finished_tasks,
    run_chain_with_fault,
)
from fedloom.errors import FedloomError, FlowRunError
from fedloom.participants import Aggregator, Collaborator
from fedloom.runtime.local.ray_placement import ActorPlan, NodeResources, check_fits, plan_actors
from fedloom.state import Given, State, StateCopier, uncopyable
from fedloom.stragglers import NO_FAULT, Dropped, Faults
from fedloom.tasks import FlowJob, TaskRecord

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25  # an actor sends finished chains at least this often


class Shipment:
    """Wraps a state for the object store: Ray serialises a bare dict value by value, which
    would turn two names for one object into two objects; inside an instance, aliases hold."""

    __slots__ = ("state",)

    def __init__(self, state: State) -> None:
        self.state = state


class CollaboratorGroup:
    """Lives in a Ray actor: the sites of the collaborators this actor hosts."""

    def __init__(self, participants: list[Collaborator]) -> None:
        self._participants = participants
        self._sites: dict[str, CollaboratorSite] = {}
        self._job: FlowJob | None = None
        self._faults: Faults | None = None

    def ping(self) -> bool:
        """Answers once the actor is placed and running."""
        return True

    def setup(self) -> dict[str, Any] | FedloomError:
        """Make the private attributes here, where they will live; report where that is."""
        try:
            self._sites = {p.name: CollaboratorSite(p.name, p.build_private_attributes(),
                                                    in_process=False)
                           for p in self._participants}
        except FedloomError as err:
            return err  # returned, not raised: Ray would also print it from the worker
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "gpu_ids": ray.get_gpu_ids(),
                "pid": os.getpid()}

    def start_run(self, job: FlowJob, faults: Faults | None = None) -> None:
        self._job = job
        self._faults = faults
        for site in self._sites.values():
            site.start_run()

    def run_chains(self, step: str, names: list[str], sent: Shipment, fan_out: int = 0,
                   tolerant: bool = False
                   ) -> Iterator[list[ChainResult | Dropped] | FedloomError]:
        """Chain outcomes as they are done (a streaming generator): a slow chain is sent on its
        own, so the driver shows a collaborator's output when its chain ends; fast chains are
        batched (at most every ``FLUSH_SECONDS``) so that many small ones stay cheap. When
        ``tolerant``, a failing chain is reported as dropped and the others go on."""
        assert self._job is not None, "start_run() comes first"
        # Arrays in ``sent`` are read-only views of shared memory: one copy per collaborator.
        copier, given = copies_for(self._sites, self._job, names, sent.state)
        batch: list[ChainResult | Dropped] = []
        flushed = time.monotonic()
        for name in names:
            try:
                batch.append(self._chain(step, name, copier, given[name], fan_out, tolerant))
            except FedloomError as err:
                if batch:
                    yield batch
                yield err
                return
            if time.monotonic() - flushed >= FLUSH_SECONDS:
                yield batch
                batch, flushed = [], time.monotonic()
        if batch:
            yield batch

    def _chain(self, step: str, name: str, copier: StateCopier, given: Given | None,
               fan_out: int, tolerant: bool) -> ChainResult | Dropped:
        assert self._job is not None
        fault = self._faults.for_chain(name, fan_out) if self._faults else NO_FAULT
        if fault.delay and not fault.disconnect:
            time.sleep(fault.delay)  # collaborators run side by side here: a real delay
        return run_chain_with_fault(self._sites[name], self._job, step, copier.copy(), fault,
                                    fan_out, tolerant, given)


class RayBackend:
    """Runs collaborator chains in Ray actors, on this machine or an existing Ray cluster."""

    name = "ray"

    def __init__(self, aggregator: Aggregator, collaborators: Sequence[Collaborator], *,
                 address: str | None = None, num_actors: int | None = None,
                 ray_init_kwargs: dict[str, Any] | None = None,
                 actor_start_timeout: float = 120.0, faults: Faults | None = None) -> None:
        self._aggregator = aggregator
        self._collaborators = list(collaborators)
        self._address = address
        self._num_actors = num_actors
        self._init_kwargs = dict(ray_init_kwargs or {})
        self._start_timeout = actor_start_timeout
        self._started_ray = False
        self._actors: list[Any] = []
        self._plans: list[ActorPlan] = []
        self._actor_of: dict[str, int] = {}
        self.placement: dict[str, dict[str, Any]] = {}  # collaborator -> node, GPUs, pid
        self._finalizer: object = None  # shuts down a Ray we started, at exit
        self._faults = faults
        self._fan_outs = 0

    # -- Backend interface ------------------------------------------------------------------

    def open(self, job: FlowJob) -> None:
        self._ensure_ray()
        if not self._actors:
            self._start_actors()
        job_ref = ray.put(job)
        self._wait([a.start_run.remote(job_ref, self._faults) for a in self._actors],
                   "starting the run")
        self._fan_outs = 0

    def run_chains(self, step: str, names: Sequence[str], sent: State, *,
                   deadline: float | None = None,
                   tolerant: bool = False) -> list[ChainResult | Dropped]:
        try:
            # Once per fan-out, whatever the number of collaborators.
            sent_ref = ray.put(Shipment(sent))
        except Exception as exc:  # e.g. a lock in a public attribute
            raise uncopyable(sent, step, exc) from exc
        fan_out, self._fan_outs = self._fan_outs, self._fan_outs + 1
        subsets: dict[int, list[str]] = {}
        for name in names:
            subsets.setdefault(self._actor_of[name], []).append(name)
        streams = {self._actors[i].run_chains.options(num_returns="streaming").remote(
            step, subset, sent_ref, fan_out, tolerant): i for i, subset in subsets.items()}
        by_name = {o.collaborator: o for o in self._gather(streams, deadline)}
        for name in names:
            if name not in by_name:  # not back by the deadline: its late result is never read
                by_name[name] = Dropped(name, "timed out",
                                        f"timed out: no result within {deadline} s")
        return [by_name[name] for name in names]

    def close(self) -> None:
        """Nothing to release per run: actors keep private state for the next run."""

    def shutdown(self) -> None:
        """Stop the actors, and Ray itself if this backend started it."""
        self.shutdown_actors()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    # -- helpers ----------------------------------------------------------------------------

    def _ensure_ray(self) -> None:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "configure_logging": False}
        kwargs.update(self._init_kwargs)
        # Workers import the flow's module the way this process does.
        kwargs.setdefault("runtime_env", {"env_vars": {
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
        ray.init(address=self._address, **kwargs)
        self._started_ray = True
        self._finalizer = weakref.finalize(self, _shutdown_ray_if_initialized)

    def _start_actors(self) -> None:
        nodes = _cluster_nodes()
        cpus = sum(n.cpus for n in nodes) - self._aggregator.num_cpus
        self._plans = plan_actors(self._collaborators, self._num_actors, cpus)
        check_fits(self._plans, self._aggregator, nodes)
        by_name = {c.name: c for c in self._collaborators}
        actor_cls = ray.remote(CollaboratorGroup)
        self._actors = [
            actor_cls.options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
                              scheduling_strategy="SPREAD",
                              name=None).remote([by_name[m] for m in plan.members])
            for plan in self._plans]
        self._actor_of = {m: i for i, plan in enumerate(self._plans) for m in plan.members}
        # Placement is bounded (resources may never free up); making the private attributes
        # is the user's own work (loading a dataset can take minutes), so it is not.
        self._wait([a.ping.remote() for a in self._actors], "placing Ray actors",
                   timeout=self._start_timeout)
        where = self._wait([a.setup.remote() for a in self._actors],
                           "making the collaborators' private attributes")
        self.placement = {m: place for plan, place in zip(self._plans, where, strict=True)
                          for m in plan.members}

    def _wait(self, refs: list[Any], doing: str, timeout: float | None = None) -> list[Any]:
        try:
            results = list(ray.get(refs, timeout=timeout))
        except GetTimeoutError:
            self.shutdown_actors()
            raise FlowRunError(
                f"Ray did not finish {doing} within {timeout:g} s ({len(refs)} actor(s)); "
                f"available now: {ray.available_resources()}. If that is less than the "
                "participants ask for, free resources or lower num_cpus/num_gpus; otherwise "
                "starting worker processes is slow here: raise actor_start_timeout=") from None
        except RayTaskError as err:
            raise _unwrap(err) from None
        except RayActorError as err:
            self.shutdown_actors()
            raise FlowRunError(_actor_failure(doing, err)) from None
        failed = next((r for r in results if isinstance(r, FedloomError)), None)
        if failed is not None:
            self.shutdown_actors()
            raise failed
        return results

    def _gather(self, streams: dict[Any, int],
                deadline: float | None) -> list[ChainResult | Dropped]:
        """Chain outcomes as they finish, their output shown at once, until all are in or the
        deadline passes; a failure (not tolerated) stops the run without waiting for the
        other actors' chains."""
        pending = dict(streams)
        results: list[ChainResult | Dropped] = []
        ends = None if deadline is None else time.monotonic() + deadline
        while pending:
            timeout = None if ends is None else max(ends - time.monotonic(), 0)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                break  # the deadline passed: what is still running is dropped
            for stream in ready:
                outcome = self._next_outcome(stream, self._plans[pending[stream]].members)
                if outcome is None:
                    del pending[stream]
                elif isinstance(outcome, FedloomError):
                    print_task_outputs(getattr(outcome, "tasks", []))
                    self._abandon(pending, stream)
                    if isinstance(outcome, FlowRunError):
                        keep_finished_tasks(outcome, [r for r in results
                                                      if isinstance(r, ChainResult)])
                    raise outcome
                else:
                    for result in outcome:
                        print_task_outputs(result.tasks)
                    results.extend(outcome)
        return results

    def _abandon(self, pending: dict[Any, int], failed: Any) -> None:
        """Stop the actors whose chains are still running: their results would be thrown away,
        and a step stuck forever would make the next run wait forever behind it. Their
        private attributes are made again on the next run."""
        if any(stream is not failed for stream in pending):
            self.shutdown_actors()

    def _next_outcome(self, stream: Any, members: tuple[str, ...]
                      ) -> list[ChainResult | Dropped] | FedloomError | None:
        try:
            return ray.get(next(stream))  # type: ignore[no-any-return]
        except StopIteration:
            return None
        except RayTaskError as err:
            raise _unwrap(err) from None
        except RayActorError as err:
            self.shutdown_actors()
            raise FlowRunError(
                f"the Ray worker hosting collaborator(s) {list(members)} died "
                f"({type(err).__name__}: {err}). Its private attributes are gone; they are "
                "made again on the next run.", participant=members[0]) from None

    def shutdown_actors(self) -> None:
        """Kill the actors (their private attributes go with them)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


def print_task_outputs(tasks: Sequence[TaskRecord]) -> None:
    """Show what remote tasks printed, once each, attributed to step and collaborator."""
    for task in tasks:
        print_attributed(task.step, task.participant, task.stdout, task.stderr)


def _actor_failure(doing: str, err: Exception) -> str:
    text = str(err)
    cause = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), text)
    if "could not be computed" in text or "Can't get attribute" in text:
        return (f"Ray workers could not load what the collaborators need while {doing} (the "
                f"flow, or a private_attributes_callable and its arguments): {cause}. Things "
                "defined in the script you run (__main__) must be plain module-level functions "
                "and classes; wrappers such as functools.lru_cache are pickled by reference and "
                "don't exist in the workers, so move them into an importable module.")
    return f"a Ray worker died while {doing}: {cause}"


def _unwrap(err: RayTaskError) -> Exception:
    """The error a step raised inside an actor, as the serial backend would have raised it."""
    cause = err.cause
    if isinstance(cause, FedloomError):
        return cause
    return FlowRunError(f"a Ray actor failed: {err}")


def _cluster_nodes() -> list[NodeResources]:
    return [NodeResources(n["NodeID"], float(n["Resources"].get("CPU", 0)),
                          int(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def _shutdown_ray_if_initialized() -> None:
    if ray.is_initialized():
        ray.shutdown()
