"""The director's store: one contract run against the memory and SQLite stores, then what only
a file can do (survive a restart, refuse a damaged or newer file)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedloom.federation.store import (
    FINAL_STATES,
    STATES,
    TRANSITIONS,
    DecisionRecord,
    DirectorStore,
    ExperimentRecord,
    MemoryStore,
    SqliteStore,
    StoreError,
    TransitionError,
)

# The changes that bring a new experiment to each state.
PATH_TO = {"queued": [], "reviewing": ["reviewing"], "waiting": ["waiting"],
           "running": ["running"], "done": ["running", "done"], "failed": ["failed"],
           "cancelled": ["cancelled"], "rejected": ["rejected"]}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectorStore]:
    made: DirectorStore = (MemoryStore() if request.param == "memory"
                           else SqliteStore(tmp_path / "director.db"))
    with made:
        yield made


def submit(store: DirectorStore, submitter: str = "alice", at: float = 100.0,
           participants: tuple[str, ...] = ("one", "two")) -> ExperimentRecord:
    record = ExperimentRecord(id=store.new_experiment_id(), submitter=submitter,
                              digest="ab" * 32, flow_name="MyFlow", run_id="run-1",
                              checkpoint=True, participants=participants, submitted_at=at)
    store.add_experiment(record)
    return record


def decision(participant: str, approved: bool = True, at: float = 101.0) -> DecisionRecord:
    return DecisionRecord(participant=participant, approved=approved, decided_by="admin",
                          reason="looks fine" if approved else "no", at=at, digest="ab" * 32)


def stored(store: DirectorStore, experiment_id: str) -> ExperimentRecord:
    record = store.get_experiment(experiment_id)
    assert record is not None
    return record


def number(experiment_id: str) -> int:
    return int(experiment_id.split("-")[0])


# -- experiments ---------------------------------------------------------------------------------

def test_ids_count_up_and_carry_a_random_part(store: DirectorStore) -> None:
    ids = [store.new_experiment_id() for _ in range(5)]
    assert all(re.fullmatch(r"\d+-[0-9a-f]{8}", id_) for id_ in ids)
    assert [number(id_) for id_ in ids] == [1, 2, 3, 4, 5]
    assert len({id_.split("-")[1] for id_ in ids}) == 5


def test_an_experiment_reads_back_as_added(store: DirectorStore) -> None:
    record = submit(store)
    assert store.get_experiment(record.id) == record
    assert record.state == "queued" and record.started_at is None and record.ended_at is None
    assert store.get_experiment("404-deadbeef") is None


def test_an_id_is_recorded_once(store: DirectorStore) -> None:
    record = submit(store)
    with pytest.raises(StoreError, match="recorded already"):
        store.add_experiment(record)


def test_a_run_records_when_it_started_and_ended(store: DirectorStore) -> None:
    record = submit(store)
    store.set_state(record.id, "reviewing", at=110.0)
    store.set_state(record.id, "waiting", at=120.0)
    running = store.set_state(record.id, "running", at=130.0)
    assert (running.started_at, running.ended_at) == (130.0, None)
    done = store.set_state(record.id, "done", reason="3 rounds", at=140.0)
    assert (done.state, done.started_at, done.ended_at, done.reason) == (
        "done", 130.0, 140.0, "3 rounds")
    assert store.get_experiment(record.id) == done


def test_without_a_time_a_change_is_stamped_now(store: DirectorStore) -> None:
    record = submit(store)
    before = time.time()
    failed = store.set_state(record.id, "failed", reason="boom")
    assert failed.ended_at is not None and before <= failed.ended_at <= time.time()


@pytest.mark.parametrize("start", STATES)
@pytest.mark.parametrize("target", STATES)
def test_only_the_listed_transitions_are_allowed(store: DirectorStore, start: str,
                                                 target: str) -> None:
    record = submit(store)
    for state in PATH_TO[start]:
        store.set_state(record.id, state, at=110.0)
    if target in TRANSITIONS[start]:
        assert store.set_state(record.id, target, at=120.0).state == target
        return
    expected = "a final state never changes" if start in FINAL_STATES else "cannot go from"
    with pytest.raises(TransitionError, match=expected):
        store.set_state(record.id, target, at=120.0)
    assert stored(store, record.id).state == start


def test_final_states_are_final_and_every_other_can_end() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert all(not TRANSITIONS[state] for state in FINAL_STATES)
    assert all({"failed", "cancelled"} <= TRANSITIONS[state]
               for state in set(STATES) - FINAL_STATES)


def test_unknown_states_and_experiments_are_refused(store: DirectorStore) -> None:
    record = submit(store)
    with pytest.raises(StoreError, match="unknown experiment state 'finished'"):
        store.set_state(record.id, "finished")
    with pytest.raises(StoreError, match="no experiment 9-deadbeef"):
        store.set_state("9-deadbeef", "running")
    with pytest.raises(StoreError, match="unknown experiment state 'runing'"):
        store.experiments(states=["runing"])


def test_experiments_list_newest_first_and_filter(store: DirectorStore) -> None:
    first = submit(store, "alice", at=100.0)
    second = submit(store, "bob", at=100.0)  # same time: submission order still decides
    third = submit(store, "alice", at=101.0)
    store.set_state(second.id, "running")
    assert [e.id for e in store.experiments()] == [third.id, second.id, first.id]
    assert [e.id for e in store.experiments(submitter="alice")] == [third.id, first.id]
    assert [e.id for e in store.experiments(states=["running"])] == [second.id]
    assert [e.id for e in store.experiments(states="queued")] == [third.id, first.id]
    assert store.experiments(submitter="bob", states={"queued"}) == []
    assert store.experiments(states=[]) == []


# -- decisions -----------------------------------------------------------------------------------

def test_decisions_read_back_in_order_per_experiment(store: DirectorStore) -> None:
    one, other = submit(store), submit(store)
    store.add_decision(one.id, decision("one"))
    store.add_decision(one.id, decision("two", approved=False, at=102.0))
    store.add_decision(other.id, decision("one"))
    assert store.decisions(one.id) == [decision("one"), decision("two", False, 102.0)]
    assert store.decisions(other.id) == [decision("one")]
    assert store.decisions("404-deadbeef") == []


def test_a_decision_needs_its_experiment(store: DirectorStore) -> None:
    with pytest.raises(StoreError, match="no experiment 404-deadbeef"):
        store.add_decision("404-deadbeef", decision("one"))


# -- envoys --------------------------------------------------------------------------------------

def test_an_envoy_keeps_its_first_sighting_across_registrations(store: DirectorStore) -> None:
    store.envoy_registered("zeta", "10.0.0.2:1", at=100.0, cert_expiry=5000.0)
    store.envoy_registered("alpha", "10.0.0.1:1", at=101.0)
    store.envoy_offline("zeta", at=110.0)
    store.envoy_registered("zeta", "10.0.0.9:2", at=120.0)
    alpha, zeta = store.envoys()
    assert (alpha.name, alpha.online, alpha.first_seen, alpha.cert_expiry) == (
        "alpha", True, 101.0, None)
    assert (zeta.address, zeta.first_seen, zeta.last_registered, zeta.online,
            zeta.last_offline, zeta.cert_expiry) == ("10.0.0.9:2", 100.0, 120.0, True, 110.0,
                                                     None)


def test_a_late_loss_of_an_old_connection_is_ignored(store: DirectorStore) -> None:
    store.envoy_registered("one", "a:1", at=100.0)
    store.envoy_registered("one", "a:1", at=120.0)  # reconnected
    store.envoy_offline("one", at=110.0)  # the first connection's loss, noticed late
    (envoy,) = store.envoys()
    assert envoy.online and envoy.last_offline is None


def test_an_envoy_offline_already_keeps_when_it_went(store: DirectorStore) -> None:
    store.envoy_registered("one", "a:1", at=100.0)
    store.envoy_offline("one", at=110.0)
    store.envoy_offline("one", at=130.0)
    assert store.envoys()[0].last_offline == 110.0


def test_an_unknown_envoy_cannot_go_offline(store: DirectorStore) -> None:
    with pytest.raises(StoreError, match="no envoy 'ghost'"):
        store.envoy_offline("ghost", at=100.0)


def test_a_thousand_envoys_come_and_go_quickly(store: DirectorStore) -> None:
    # Registrations and losses are plain writes, not synced one by one: 1,500 of them and a
    # listing take ~0.2 s here; the bound is generous for a busy machine.
    started = time.perf_counter()
    for i in range(1000):
        store.envoy_registered(f"envoy-{i:04d}", f"10.0.{i // 250}.{i % 250}:5000", at=100.0)
    for i in range(0, 1000, 2):
        store.envoy_offline(f"envoy-{i:04d}", at=200.0)
    envoys = store.envoys()
    assert time.perf_counter() - started < 5.0
    assert len(envoys) == 1000 and sum(e.online for e in envoys) == 500


# -- restart, close, threads ---------------------------------------------------------------------

def test_recover_fails_what_was_unfinished_and_takes_envoys_offline(
        store: DirectorStore) -> None:
    records = {state: submit(store) for state in STATES}
    for state, record in records.items():
        for step in PATH_TO[state]:
            store.set_state(record.id, step, reason="earlier", at=110.0)
    store.envoy_registered("one", "a:1", at=100.0)
    store.envoy_registered("two", "b:1", at=100.0)
    store.envoy_offline("two", at=105.0)

    failed = store.recover(at=200.0)

    unfinished = [records[s].id for s in reversed(STATES) if s not in FINAL_STATES]
    assert [record.id for record in failed] == unfinished  # newest first
    for record in failed:
        assert (record.state, record.reason, record.ended_at) == (
            "failed", "the director restarted", 200.0)
        assert store.get_experiment(record.id) == record
    assert stored(store, records["running"].id).started_at == 110.0
    for state in FINAL_STATES:
        assert stored(store, records[state].id).ended_at == 110.0
    assert [(e.online, e.last_offline) for e in store.envoys()] == [(False, 200.0),
                                                                    (False, 105.0)]
    assert store.recover(at=300.0, reason="again") == []


def test_a_closed_store_says_so(store: DirectorStore) -> None:
    record = submit(store)
    store.close()
    store.close()  # harmless
    for call in (store.new_experiment_id, lambda: store.get_experiment(record.id),
                 store.envoys, lambda: store.set_state(record.id, "failed")):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_threads_share_one_store(store: DirectorStore) -> None:
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def work(thread: int) -> None:
        barrier.wait()
        for i in range(25):
            ids.append(submit(store, submitter=f"user-{thread}").id)
            store.envoy_registered(f"envoy-{thread}-{i}", "a:1", at=float(i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(number(id_) for id_ in ids) == list(range(1, 201))
    assert len(store.experiments()) == 200 and len(store.envoys()) == 200


# -- only a file ---------------------------------------------------------------------------------

def test_a_reopened_file_has_everything_and_ids_continue(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    with SqliteStore(path) as store:
        running, done = submit(store), submit(store, "bob")
        store.set_state(running.id, "running", at=110.0)
        store.set_state(done.id, "rejected", reason="site one said no", at=111.0)
        store.add_decision(done.id, decision("one", approved=False))
        store.envoy_registered("one", "a:1", at=100.0, cert_expiry=9999.5)
        before = store.experiments()

    with SqliteStore(path) as store:
        assert store.experiments() == before
        assert store.decisions(done.id) == [decision("one", approved=False)]
        assert number(store.new_experiment_id()) == 3
        (failed,) = store.recover(at=200.0)
        assert (failed.id, failed.state, failed.started_at) == (running.id, "failed", 110.0)
        assert store.envoys()[0].cert_expiry == 9999.5

    with SqliteStore(path) as store:
        assert store.get_experiment(running.id) == failed
        assert not store.envoys()[0].online


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_file_from_a_newer_fedloom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match=r"director\.db was written by a newer fedloom"):
        SqliteStore(path)


def test_a_file_that_is_not_a_database_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    path.write_bytes(b"this is not an SQLite file, just some text " * 100)
    with pytest.raises(StoreError, match=r"director\.db.*move it away") as error:
        SqliteStore(path)
    assert str(path) in str(error.value)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a fedloom director's store"):
        SqliteStore(path)


def test_a_damaged_file_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "director.db"
    with SqliteStore(path) as store:
        for _ in range(200):
            submit(store, participants=tuple(f"participant-{i}" for i in range(20)))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page:len(data) - page] = b"\xff" * (len(data) - 3 * page)  # keep the header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"director\.db.*(damaged|move it away)"):
        SqliteStore(path)


def test_a_folder_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a folder"):
        SqliteStore(tmp_path)
