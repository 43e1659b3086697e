"""A :class:`DirectorStore` in one SQLite file: the director's experiments, review decisions and
envoys, kept across restarts.

One connection behind a lock serves every thread. The file is in WAL mode with
``synchronous=NORMAL``: a crash of the director never loses a commit, and a power cut may lose
only the last few — which for envoys costs nothing, since ``recover()`` marks them all offline
and they register again. Experiment records and decisions are what users and site admins rely on
(a decision is the record that a site allowed code to run on its data, and the director acts on
it at once), so those commits are ``synchronous=FULL``: the WAL is synced before they return.
They come a few per experiment, so the syncs cost nothing; envoy bookkeeping, a write per
registration or loss for every envoy, stays unsynced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

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
    registered,
    state_filter,
    timestamp,
    transitioned,
    unknown_envoy,
    unknown_experiment,
    went_offline,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version of the files this code writes
APPLICATION_ID = 0x666C6F6D  # "flom": PRAGMA application_id marks the file as fedloom's
BUSY_TIMEOUT = 5.0  # seconds to wait for a reader in another process (an admin's sqlite3 shell)

SCHEMA = f"""
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('experiment', 0);
CREATE TABLE experiments (
    position INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
    id TEXT NOT NULL UNIQUE,
    submitter TEXT NOT NULL,
    digest TEXT NOT NULL,
    flow_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    checkpoint INTEGER NOT NULL,
    participants TEXT NOT NULL,  -- a JSON list of collaborator names
    submitted_at REAL NOT NULL,
    state TEXT NOT NULL,
    started_at REAL,
    ended_at REAL,
    reason TEXT NOT NULL
);
CREATE INDEX experiments_by_submitter ON experiments (submitter);
CREATE INDEX experiments_by_state ON experiments (state);
CREATE TABLE decisions (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment TEXT NOT NULL REFERENCES experiments (id),
    participant TEXT NOT NULL,
    approved INTEGER NOT NULL,
    decided_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX decisions_by_experiment ON decisions (experiment);
CREATE TABLE envoys (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_registered REAL NOT NULL,
    online INTEGER NOT NULL,
    last_offline REAL,
    cert_expiry REAL
);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

EXPERIMENT_COLUMNS = ("id, submitter, digest, flow_name, run_id, checkpoint, participants, "
                      "submitted_at, state, started_at, ended_at, reason")
DECISION_COLUMNS = "participant, approved, decided_by, reason, at, digest"
ENVOY_COLUMNS = "name, address, first_seen, last_registered, online, last_offline, cert_expiry"

Row = tuple[object, ...]


class SqliteStore(DirectorStore):
    """The director's store in the SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = _open(self.path)

    # -- experiments -----------------------------------------------------------------------------

    def new_experiment_id(self) -> str:
        with self._transaction() as db:
            db.execute("UPDATE counters SET value = value + 1 WHERE name = 'experiment'")
            (number,) = db.execute(
                "SELECT value FROM counters WHERE name = 'experiment'").fetchone()
        return format_experiment_id(number)

    def add_experiment(self, record: ExperimentRecord) -> None:
        with self._transaction(durable=True) as db:
            check_new_experiment(record, _experiment(db, record.id) is not None)
            db.execute(f"INSERT INTO experiments ({EXPERIMENT_COLUMNS}) "
                       f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _experiment_row(record))

    def set_state(self, experiment_id: str, state: str, *, reason: str = "",
                  at: float | None = None) -> ExperimentRecord:
        with self._transaction(durable=True) as db:
            record = _experiment(db, experiment_id)
            if record is None:
                raise unknown_experiment(experiment_id)
            changed = transitioned(record, state, reason, timestamp(at))
            _save_state(db, changed)
        return changed

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        with self._reading() as db:
            return _experiment(db, experiment_id)

    def experiments(self, submitter: str | None = None,
                    states: Iterable[str] | None = None) -> list[ExperimentRecord]:
        wanted = state_filter(states)
        conditions: list[str] = ["1"]
        parameters: list[object] = []
        if submitter is not None:
            conditions.append("submitter = ?")
            parameters.append(submitter)
        if wanted is not None:
            conditions.append(f"state IN ({', '.join('?' * len(wanted))})")
            parameters.extend(sorted(wanted))
        with self._reading() as db:
            rows = db.execute(f"SELECT {EXPERIMENT_COLUMNS} FROM experiments "
                              f"WHERE {' AND '.join(conditions)} ORDER BY position DESC",
                              parameters).fetchall()
        return [_experiment_record(row) for row in rows]

    # -- decisions -------------------------------------------------------------------------------

    def add_decision(self, experiment_id: str, decision: DecisionRecord) -> None:
        with self._transaction(durable=True) as db:
            if _experiment(db, experiment_id) is None:
                raise unknown_experiment(experiment_id)
            db.execute(f"INSERT INTO decisions (experiment, {DECISION_COLUMNS}) "
                       f"VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (experiment_id, decision.participant, int(decision.approved),
                        decision.decided_by, decision.reason, decision.at, decision.digest))

    def decisions(self, experiment_id: str) -> list[DecisionRecord]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {DECISION_COLUMNS} FROM decisions WHERE experiment = ? "
                              f"ORDER BY position", (experiment_id,)).fetchall()
        return [DecisionRecord(participant, bool(approved), decided_by, reason, at, digest)
                for participant, approved, decided_by, reason, at, digest in rows]

    # -- envoys ----------------------------------------------------------------------------------

    def envoy_registered(self, name: str, address: str, at: float,
                         cert_expiry: float | None = None) -> None:
        with self._transaction() as db:
            _save_envoy(db, registered(_envoy(db, name), name, address, at, cert_expiry))

    def envoy_offline(self, name: str, at: float) -> None:
        with self._transaction() as db:
            old = _envoy(db, name)
            if old is None:
                raise unknown_envoy(name)
            _save_envoy(db, went_offline(old, at))

    def envoys(self) -> list[EnvoyRecord]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {ENVOY_COLUMNS} FROM envoys ORDER BY name").fetchall()
        return [_envoy_record(row) for row in rows]

    # -- lifetime --------------------------------------------------------------------------------

    def recover(self, at: float, reason: str = RESTART_REASON) -> list[ExperimentRecord]:
        states = sorted(UNFINISHED_STATES)
        with self._transaction(durable=True) as db:
            rows = db.execute(f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE state IN "
                              f"({', '.join('?' * len(states))}) ORDER BY position DESC",
                              states).fetchall()
            failed = [transitioned(_experiment_record(row), "failed", reason, at)
                      for row in rows]
            for record in failed:
                _save_state(db, record)
            db.execute("UPDATE envoys SET online = 0, last_offline = ? WHERE online = 1", (at,))
        return failed

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for single statements (each reads a consistent snapshot)."""
        with self._lock, self._failures():
            yield self._open_connection()

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction, committed on success; ``durable``
        syncs the commit to disk before returning."""
        with self._lock, self._failures():
            db = self._open_connection()
            if durable:
                db.execute("PRAGMA synchronous = FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:  # SQLite rolls back by itself after some errors
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if durable:
                    db.execute("PRAGMA synchronous = NORMAL")

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if type(exc) is sqlite3.DatabaseError:  # damaged since it was opened
                raise _unreadable(self.path, exc) from exc
            raise StoreError(f"the director's store {self.path} failed: {exc}") from exc

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StoreError(f"the director's store {self.path} is closed")
        return self._connection


# -- opening a file ------------------------------------------------------------------------------

def _open(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` with the current schema, or a :class:`StoreError` that says
    what is wrong with the file and what to do."""
    if path.is_dir():
        raise StoreError(f"the director's store {path} is a folder; give the path of a file "
                         f"in it (created if missing)")
    try:
        # Autocommit (isolation_level=None): transactions are the explicit BEGIN/COMMIT above.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                             check_same_thread=False)
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    try:
        _configure(db, path)
        _prepare_schema(db, path)
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.Error):
            raise _unreadable(path, exc) from exc
        raise
    return db


def _configure(db: sqlite3.Connection, path: Path) -> None:
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal" and str(path) != ":memory:":
        log.warning("the director's store %s is in %s journal mode, not WAL (its file system "
                    "may not support WAL); writes will be slower", path, mode)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")


def _prepare_schema(db: sqlite3.Connection, path: Path) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    (application,) = db.execute("PRAGMA application_id").fetchone()
    (tables,) = db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    if version == 0 and application == 0 and tables == 0:  # a new (or empty) file
        db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        return
    if application != APPLICATION_ID:
        raise StoreError(f"{path} is an SQLite file but not a fedloom director's store; point "
                         f"the director at another work folder, or move {path} away")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer fedloom (store schema {version}; this "
                         f"fedloom reads schema {SCHEMA_VERSION}): upgrade fedloom, or move "
                         f"{path} away to start an empty store")
    if version < SCHEMA_VERSION:  # no older schema exists yet; upgrades will go here
        raise StoreError(f"{path} has store schema {version}, which this fedloom cannot "
                         f"upgrade; move it away to start an empty store")
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StoreError(f"{path} is damaged ({'; '.join(problems[:3])}); move it away "
                         f"(e.g. mv {path} {path}.damaged) and restart the director with an "
                         f"empty store")


def _unreadable(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"cannot read the director's store {path}: {exc}. If the file is "
                      f"damaged or not a database, move it away (e.g. mv {path} {path}.damaged)"
                      f" and restart the director with an empty store; if it is a permissions "
                      f"problem, let the director's user read and write it and its folder")


# -- rows and records ----------------------------------------------------------------------------

def _experiment(db: sqlite3.Connection, experiment_id: str) -> ExperimentRecord | None:
    row = db.execute(f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?",
                     (experiment_id,)).fetchone()
    return None if row is None else _experiment_record(row)


def _experiment_row(record: ExperimentRecord) -> Row:
    return (record.id, record.submitter, record.digest, record.flow_name, record.run_id,
            int(record.checkpoint), json.dumps(list(record.participants)), record.submitted_at,
            record.state, record.started_at, record.ended_at, record.reason)


def _experiment_record(row: Row) -> ExperimentRecord:
    (id_, submitter, digest, flow_name, run_id, checkpoint, participants, submitted_at, state,
     started_at, ended_at, reason) = row
    return ExperimentRecord(
        id=str(id_), submitter=str(submitter), digest=str(digest), flow_name=str(flow_name),
        run_id=str(run_id), checkpoint=bool(checkpoint),
        participants=tuple(json.loads(str(participants))), submitted_at=_time(submitted_at),
        state=str(state), started_at=_maybe_time(started_at), ended_at=_maybe_time(ended_at),
        reason=str(reason))


def _save_state(db: sqlite3.Connection, record: ExperimentRecord) -> None:
    db.execute("UPDATE experiments SET state = ?, reason = ?, started_at = ?, ended_at = ? "
               "WHERE id = ?",
               (record.state, record.reason, record.started_at, record.ended_at, record.id))


def _envoy(db: sqlite3.Connection, name: str) -> EnvoyRecord | None:
    row = db.execute(f"SELECT {ENVOY_COLUMNS} FROM envoys WHERE name = ?", (name,)).fetchone()
    return None if row is None else _envoy_record(row)


def _envoy_record(row: Row) -> EnvoyRecord:
    name, address, first_seen, last_registered, online, last_offline, cert_expiry = row
    return EnvoyRecord(str(name), str(address), _time(first_seen), _time(last_registered),
                       bool(online), _maybe_time(last_offline), _maybe_time(cert_expiry))


def _save_envoy(db: sqlite3.Connection, envoy: EnvoyRecord) -> None:
    db.execute(f"INSERT OR REPLACE INTO envoys ({ENVOY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (envoy.name, envoy.address, envoy.first_seen, envoy.last_registered,
                int(envoy.online), envoy.last_offline, envoy.cert_expiry))


def _time(value: object) -> float:
    if not isinstance(value, (int, float)):
        raise StoreError(f"a time in the director's store is {value!r}, not a number")
    return float(value)


def _maybe_time(value: object) -> float | None:
    return None if value is None else _time(value)
