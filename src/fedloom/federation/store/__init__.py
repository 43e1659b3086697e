"""The director's durable state: experiments, review decisions and envoys, kept across restarts
in SQLite (:class:`SqliteStore`) or, for tests, in memory (:class:`MemoryStore`)."""

from fedloom.federation.store.base import (
    FINAL_STATES,
    RESTART_REASON,
    STATES,
    TRANSITIONS,
    UNFINISHED_STATES,
    DecisionRecord,
    DirectorStore,
    EnvoyRecord,
    ExperimentRecord,
    StoreError,
    TransitionError,
)
from fedloom.federation.store.memory import MemoryStore
from fedloom.federation.store.sqlite import SqliteStore

__all__ = [
    "FINAL_STATES",
    "RESTART_REASON",
    "STATES",
    "TRANSITIONS",
    "UNFINISHED_STATES",
    "DecisionRecord",
    "DirectorStore",
    "EnvoyRecord",
    "ExperimentRecord",
    "MemoryStore",
    "SqliteStore",
    "StoreError",
    "TransitionError",
]
