"""The serial backend: every collaborator chain runs in this process, one after another.

A deadline is applied in simulated parallel time: each chain counts from the start of the
fan-out, as it would if collaborators ran side by side, taking its own running time plus any
injected delay (nothing sleeps). A chain that ran past the deadline is dropped and its result
discarded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fedloom.engine import (
    ChainResult,
    CollaboratorSite,
    keep_finished_tasks,
    run_chain_with_fault,
)
from fedloom.errors import FlowRunError
from fedloom.participants import Collaborator
from fedloom.state import State, StateCopier, uncopyable
from fedloom.stragglers import NO_FAULT, Dropped, Fault, Faults
from fedloom.tasks import FlowJob


class SerialBackend:
    """Runs collaborators in turn. Their private attributes are made once, in this process, and
    persist for the life of the runtime (as a long-lived site's would)."""

    name = "single_process"

    def __init__(self, collaborators: Sequence[Collaborator], faults: Faults | None = None) -> None:
        self._participants = list(collaborators)
        self._sites: dict[str, CollaboratorSite] = {}
        self._job: FlowJob | None = None
        self._faults = faults
        self._fan_outs = 0

    def open(self, job: FlowJob) -> None:
        if not self._sites:
            self._sites = {c.name: CollaboratorSite(c.name, c.build_private_attributes())
                           for c in self._participants}
        for site in self._sites.values():
            site.start_run()
        self._job = job
        self._fan_outs = 0

    def run_chains(self, step: str, names: Sequence[str], sent: State, *,
                   deadline: float | None = None,
                   tolerant: bool = False) -> list[ChainResult | Dropped]:
        if self._job is None:
            raise RuntimeError("open() must be called before run_chains()")
        fan_out, self._fan_outs = self._fan_outs, self._fan_outs + 1
        # One copy per collaborator: the floor for isolation.
        copier = StateCopier(sent)
        outcomes: list[ChainResult | Dropped] = []
        try:
            for name in names:
                fault = self._faults.for_chain(name, fan_out) if self._faults else NO_FAULT
                try:
                    received = copier.copy()
                except Exception as exc:  # e.g. a lock in a public attribute
                    raise uncopyable(sent, step, exc) from exc
                outcomes.append(self._chain(step, name, received, fault, fan_out, deadline,
                                            tolerant))
        except FlowRunError as err:
            keep_finished_tasks(err, [o for o in outcomes if isinstance(o, ChainResult)])
            raise
        return outcomes

    def _chain(self, step: str, name: str, received: State, fault: Fault, fan_out: int,
               deadline: float | None, tolerant: bool) -> ChainResult | Dropped:
        assert self._job is not None
        started = time.perf_counter()
        result = run_chain_with_fault(self._sites[name], self._job, step, received, fault,
                                      fan_out, tolerant)
        if isinstance(result, Dropped):
            return result
        took = time.perf_counter() - started + fault.delay
        if deadline is not None and took > deadline:
            return Dropped(name, "timed out", f"timed out: took {took:.3g} s, the deadline is "
                           f"{deadline:g} s", result.tasks)
        return result

    def close(self) -> None:
        self._job = None

