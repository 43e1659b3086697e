"""The serial backend: every collaborator chain runs in this process, one after another.

A deadline is applied in simulated parallel time (:class:`~fedloom.stragglers.SimulatedClock`):
each chain runs as it would if collaborators ran side by side, from the start of the fan-out, or
from when its collaborator finishes a late step of an earlier fan-out, taking its own running
time plus any injected delay (nothing sleeps). A chain that ends past the deadline is dropped and
its result discarded, so a rehearsal drops whom Ray would drop, in the same rounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fedloom.engine import (
    ChainResult,
    CollaboratorSite,
    copies_for,
    keep_finished_tasks,
    run_chain_with_fault,
)
from fedloom.errors import FlowRunError
from fedloom.participants import Collaborator
from fedloom.runtime.local.sharing import SharedLists
from fedloom.state import Given, State, StateCopier, uncopyable
from fedloom.stragglers import NO_FAULT, Dropped, Fault, Faults, SimulatedClock
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
        self._clock = SimulatedClock()

    def open(self, job: FlowJob) -> None:
        if not self._sites:
            self._sites = {c.name: CollaboratorSite(c.name, c.build_private_attributes())
                           for c in self._participants}
        for site in self._sites.values():
            site.start_run()
        self._job = job
        self._fan_outs = 0
        self._clock = SimulatedClock()

    def run_chains(self, step: str, names: Sequence[str], sent: State, *,
                   deadline: float | None = None,
                   tolerant: bool = False) -> list[ChainResult | Dropped]:
        if self._job is None:
            raise RuntimeError("open() must be called before run_chains()")
        fan_out, self._fan_outs = self._fan_outs, self._fan_outs + 1
        began = self._clock.begin_fan_out()
        # One copy per collaborator (the floor for isolation), but flat lists of names and
        # numbers: one for all, taken in turns (see sharing.py).
        copier, given = copies_for(self._sites, self._job, names, sent)
        lists = SharedLists(copier, sent, self._job.flow_cls)
        # Without a deadline, and nobody still busy from an earlier fan-out, simulated time is
        # just the longest chain: a chain with no fault skips the clock (see idle_at).
        plain = deadline is None and not tolerant and self._faults is None and \
            self._clock.idle_at(began)
        outcomes: list[ChainResult | Dropped] = []
        last = began  # when the last chain ended (simulated)
        try:
            if plain:
                last += self._run_plain(step, names, sent, copier, given, lists, outcomes)
            else:
                for name in names:
                    fault = self._faults.for_chain(name, fan_out) if self._faults else NO_FAULT
                    received = _copy(copier, sent, step)
                    counts = lists.counts()
                    outcome, ended = self._chain(step, name, received, given[name], fault,
                                                 fan_out, began, deadline, tolerant)
                    del received  # for settle's count: only the result may hold it now
                    lists.settle(outcome.state if isinstance(outcome, ChainResult) else None,
                                 counts)
                    outcomes.append(outcome)
                    last = max(last, ended)
        except FlowRunError as err:
            keep_finished_tasks(err, [o for o in outcomes if isinstance(o, ChainResult)])
            raise
        lists.finish()
        # As on Ray: the fan-out waits for everyone, or until the deadline passes.
        self._clock.end_fan_out(last if deadline is None else min(last, began + deadline))
        return outcomes

    def _run_plain(self, step: str, names: Sequence[str], sent: State, copier: StateCopier,
                   given: dict[str, Given | None], lists: SharedLists,
                   outcomes: list[ChainResult | Dropped]) -> float:
        """Every chain of an untimed fan-out without faults (the common case, kept lean: it
        runs once per collaborator); appends their results to ``outcomes`` and returns how
        long the longest took."""
        assert self._job is not None
        job, sites, perf, copy = self._job, self._sites, time.perf_counter, copier.copy
        counts, settle = lists.counts, lists.settle
        longest = 0.0
        for name in names:
            try:
                received = copy()
            except Exception as exc:  # e.g. a lock in a public attribute
                raise uncopyable(sent, step, exc) from exc
            before = counts()
            started = perf()
            result = sites[name].run_chain(job, step, received, given[name])
            took = perf() - started
            del received  # for settle's count: only the result may hold it now
            settle(result.state, before)
            outcomes.append(result)
            if took > longest:
                longest = took
        return longest

    def _chain(self, step: str, name: str, received: State, given: Given | None, fault: Fault,
               fan_out: int, began: float, deadline: float | None,
               tolerant: bool) -> tuple[ChainResult | Dropped, float]:
        """The chain's outcome, and when it ended in simulated time."""
        assert self._job is not None
        started = time.perf_counter()
        site = self._sites[name]
        result = site.run_chain(self._job, step, received, given) \
            if fault is NO_FAULT and not tolerant else \
            run_chain_with_fault(site, self._job, step, received, fault, fan_out, tolerant, given)
        # A disconnected collaborator does nothing (its delay never happens), as on Ray.
        took = 0.0 if fault.disconnect else time.perf_counter() - started + fault.delay
        start, ended = self._clock.run(name, began, took)
        if deadline is None or ended - began <= deadline:
            return result, ended
        waited = start - began
        how = f"took {took:.3g} s" if not waited else \
            f"was still busy with a late step for {waited:.3g} s, then took {took:.3g} s"
        return Dropped(name, "timed out", f"timed out: {how}; the deadline is {deadline:g} s",
                       result.tasks), ended

    def close(self) -> None:
        self._job = None


def _copy(copier: StateCopier, sent: State, step: str) -> State:
    try:
        return copier.copy()
    except Exception as exc:  # e.g. a lock in a public attribute
        raise uncopyable(sent, step, exc) from exc

