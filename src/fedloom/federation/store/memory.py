"""A :class:`DirectorStore` held in memory: the same behaviour as the SQLite store, nothing kept
after the process ends. For tests, and for a director run without a work folder."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable

from fedloom.federation.store.base import (
    RESTART_REASON,
    UNFINISHED_STATES,
    DecisionRecord,
    DirectorStore,
    EnvoyRecord,
    ExperimentRecord,
    StoreError,
    check_new_experiment,
    format_experiment_id,
    offline_after_restart,
    registered,
    state_filter,
    timestamp,
    transitioned,
    unknown_envoy,
    unknown_experiment,
    went_offline,
)


class MemoryStore(DirectorStore):
    """Dicts behind one lock. Records are frozen, so handing them out shares nothing mutable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._numbers = itertools.count(1)
        self._experiments: dict[str, ExperimentRecord] = {}  # in submission order
        self._decisions: dict[str, list[DecisionRecord]] = {}
        self._envoys: dict[str, EnvoyRecord] = {}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the director's store is closed")

    def new_experiment_id(self) -> str:
        with self._lock:
            self._check_open()
            return format_experiment_id(next(self._numbers))

    def add_experiment(self, record: ExperimentRecord) -> None:
        with self._lock:
            self._check_open()
            check_new_experiment(record, record.id in self._experiments)
            self._experiments[record.id] = record
            self._decisions[record.id] = []

    def set_state(self, experiment_id: str, state: str, *, reason: str = "",
                  at: float | None = None) -> ExperimentRecord:
        with self._lock:
            self._check_open()
            record = self._experiment(experiment_id)
            changed = transitioned(record, state, reason, timestamp(at))
            self._experiments[experiment_id] = changed
            return changed

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        with self._lock:
            self._check_open()
            return self._experiments.get(experiment_id)

    def experiments(self, submitter: str | None = None,
                    states: Iterable[str] | None = None) -> list[ExperimentRecord]:
        wanted = state_filter(states)
        with self._lock:
            self._check_open()
            return [record for record in reversed(self._experiments.values())
                    if (submitter is None or record.submitter == submitter)
                    and (wanted is None or record.state in wanted)]

    def add_decision(self, experiment_id: str, decision: DecisionRecord) -> None:
        with self._lock:
            self._check_open()
            self._experiment(experiment_id)
            self._decisions[experiment_id].append(decision)

    def decisions(self, experiment_id: str) -> list[DecisionRecord]:
        with self._lock:
            self._check_open()
            return list(self._decisions.get(experiment_id, ()))

    def envoy_registered(self, name: str, address: str, at: float,
                         cert_expiry: float | None = None) -> None:
        with self._lock:
            self._check_open()
            self._envoys[name] = registered(self._envoys.get(name), name, address, at,
                                            cert_expiry)

    def envoy_offline(self, name: str, at: float) -> None:
        with self._lock:
            self._check_open()
            old = self._envoys.get(name)
            if old is None:
                raise unknown_envoy(name)
            self._envoys[name] = went_offline(old, at)

    def envoys(self) -> list[EnvoyRecord]:
        with self._lock:
            self._check_open()
            return [self._envoys[name] for name in sorted(self._envoys)]

    def recover(self, at: float, reason: str = RESTART_REASON) -> list[ExperimentRecord]:
        with self._lock:
            self._check_open()
            failed = [transitioned(record, "failed", reason, at)
                      for record in reversed(self._experiments.values())
                      if record.state in UNFINISHED_STATES]
            for record in failed:
                self._experiments[record.id] = record
            for name, envoy in self._envoys.items():
                self._envoys[name] = offline_after_restart(envoy, at)
            return failed

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _experiment(self, experiment_id: str) -> ExperimentRecord:
        record = self._experiments.get(experiment_id)
        if record is None:
            raise unknown_experiment(experiment_id)
        return record
