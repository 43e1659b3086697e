"""MetaflowStore: what fedloom writes, read back with the real Metaflow client.

Metaflow's client keeps process-wide state: the metadata provider class and its datastore root
(``LocalStorage.datastore_root``, resolved once from the cwd and then sticky), the namespace,
and a file cache. The autouse fixture resets all of it around each test; config values such as
METAFLOW_DATASTORE_SYSROOT_LOCAL are read when metaflow is imported, so checks of "where a
fresh client looks" run the client in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("metaflow")

import metaflow.client.core as mf_core
from metaflow import Flow, Metaflow, Step, Task
from metaflow.plugins.datastores.local_storage import LocalStorage

from fedloom.checkpoint import MetaflowStore, serialize_artifacts

FLOW = "FederatedFlow"
COLLABORATORS = ["Portland", "intel@lab_5", "New York"]


@pytest.fixture(autouse=True)
def isolated(metaflow_client: Path) -> Path:
    return metaflow_client


def new_run_id() -> str:
    return str(int(time.time() * 1e6))


def write(store: MetaflowStore, step: str, participant: str, state: dict[str, Any], *,
          ok: bool = True, stdout: str = "", stderr: str = "", **kw: Any) -> str:
    task_id = store.new_task_id(step)
    blobs, skipped = serialize_artifacts(state)
    assert skipped == []
    now = time.time()
    store.write_task(step, task_id, blobs, stdout=stdout, stderr=stderr, participant=participant,
                     ok=ok, started_at=now, finished_at=now, **kw)
    return task_id


def federated_run(store: MetaflowStore, rounds: int = 2) -> dict[str, Any]:
    """start -> (train on 3 collaborators -> join) x rounds -> end, like the spec's flow."""
    run_id = new_run_id()
    store.start_run(run_id)
    model = np.zeros(4, dtype=np.float32)
    ids: dict[str, list[str]] = {"start": [], "train": [], "join": [], "end": []}
    ids["start"].append(write(store, "start", "aggregator", {"model": model, "rounds": rounds},
                              stdout="starting\n"))
    for r in range(rounds):
        for i, name in enumerate(COLLABORATORS):
            local = model + i + 1
            ids["train"].append(write(store, "train", name,
                                      {"model": local, "input": name, "current_round": r},
                                      stdout=f"Train Epoch: {r} [{name}]\nloss: {i}\n",
                                      stderr="" if i else "warning: slow\n"))
        model = model + 2
        ids["join"].append(write(store, "join", "aggregator", {"model": model, "current_round": r}))
    ids["end"].append(write(store, "end", "aggregator", {"model": model}, stdout="done\n"))
    store.finish_run(True)
    return {"run_id": run_id, "ids": ids, "model": model}


def test_client_reads_the_run(tmp_path: Path) -> None:
    store = MetaflowStore(FLOW, str(tmp_path))
    made = federated_run(store)
    run_id, ids = made["run_id"], made["ids"]
    mf_core.metadata(f"local@{tmp_path}")

    assert FLOW in [f.id for f in Metaflow()]
    run = Flow(FLOW).latest_run
    assert run.id == run_id
    assert {s.id for s in run} == {"start", "train", "join", "end"}
    assert run.finished and run.successful

    all_ids = [t for step_ids in ids.values() for t in step_ids]
    assert len(set(all_ids)) == len(all_ids) == 1 + 2 * 4 + 1
    assert [int(t) for t in ids["train"]] == sorted(int(t) for t in ids["train"])

    train = Step(f"{FLOW}/{run_id}/train")
    tasks = list(train)
    assert len(tasks) == 6
    for task in tasks:
        name = task.data.input
        i = COLLABORATORS.index(name)
        assert task.metadata_dict["participant"] == name
        np.testing.assert_array_equal(task.data.model, np.zeros(4, np.float32) + i + 1
                                      + 2 * task.data.current_round)
        assert task.stdout == f"Train Epoch: {task.data.current_round} [{name}]\nloss: {i}\n"
        assert task.stderr == ("warning: slow\n" if i == 0 else "")
        assert task.successful and task.finished and task.exception is None
        assert {a.id for a in task} == {"model", "input", "current_round"}  # status is private

    last_join = Task(f"{FLOW}/{run_id}/join/{ids['join'][-1]}")
    np.testing.assert_array_equal(last_join.data.model, made["model"])
    assert Task(f"{FLOW}/{run_id}/start/{ids['start'][0]}").stdout == "starting\n"
    assert run.end_task.data.model is not None
    assert LocalStorage.datastore_root == os.path.realpath(tmp_path / ".metaflow")


def test_default_namespace_of_the_writing_user(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec's session calls no namespace(): the run carries the writer's user tag."""
    monkeypatch.setenv("USER", "alice")
    store = MetaflowStore(FLOW)
    run_id = federated_run(store, rounds=1)["run_id"]
    mf_core.default_namespace()
    assert mf_core.get_namespace() == "user:alice"
    assert Flow(FLOW).latest_run.id == run_id


def test_no_user_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without USER/USERNAME (root in a container) Metaflow itself would refuse to write."""
    monkeypatch.delenv("USER", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    store = MetaflowStore(FLOW)
    run_id = federated_run(store, rounds=1)["run_id"]
    run = Flow(FLOW).latest_run
    assert run.id == run_id and run.successful
    assert any(tag.startswith("user:") for tag in run.system_tags)


def test_failed_run_keeps_what_was_recorded(tmp_path: Path) -> None:
    store = MetaflowStore(FLOW)
    run_id = new_run_id()
    store.start_run(run_id)
    start = write(store, "start", "aggregator", {"model": np.ones(3)}, stdout="starting\n")
    good = write(store, "train", "Portland", {"input": "Portland"}, stdout="fine\n")
    bad = write(store, "train", "New York", {"input": "New York"}, ok=False, stdout="half\n",
                stderr="Traceback (most recent call last):\nValueError: boom\n",
                exception="ValueError: boom")
    store.finish_run(False)

    run = Flow(FLOW).latest_run
    assert run.id == run_id
    assert not run.successful and not run.finished and run.end_task is None
    np.testing.assert_array_equal(Task(f"{FLOW}/{run_id}/start/{start}").data.model, np.ones(3))
    ok_task = Task(f"{FLOW}/{run_id}/train/{good}")
    assert ok_task.successful and ok_task.data.input == "Portland"
    failed = Task(f"{FLOW}/{run_id}/train/{bad}")
    assert not failed.successful and not failed.finished
    assert failed.exception == "ValueError: boom"
    assert failed.stderr.endswith("ValueError: boom\n") and failed.stdout == "half\n"
    assert failed.data.input == "New York"  # the state it had is kept too
    with pytest.raises(RuntimeError):
        write(store, "train", "late", {})


def test_failure_after_end_and_finish_contract() -> None:
    store = MetaflowStore(FLOW)
    with pytest.raises(RuntimeError):
        store.new_task_id("start")  # no run yet
    run_id = new_run_id()
    store.start_run(run_id)
    write(store, "start", "aggregator", {})
    with pytest.raises(ValueError, match="reserved"):
        store.write_task("start", "99", {"_task_ok": b""}, stdout="", stderr="",
                         participant="aggregator", ok=True, started_at=0.0, finished_at=0.0)
    with pytest.raises(ValueError, match="'end'"):
        store.finish_run(True)  # the run never reached end
    end = write(store, "end", "aggregator", {"model": np.arange(3)}, stdout="bye\n")
    store.finish_run(False)  # e.g. the engine failed after end

    run = Flow(FLOW).latest_run
    assert run.id == run_id and not run.successful and not run.finished
    task = Task(f"{FLOW}/{run_id}/end/{end}")
    assert task.current_attempt == 1 and task.exception == "the run failed after its 'end' step"
    np.testing.assert_array_equal(task.data.model, np.arange(3))
    first = Task(f"{FLOW}/{run_id}/end/{end}", attempt=0)
    assert first.successful and first.stdout == "bye\n"


def test_retried_attempt_is_the_one_read() -> None:
    store = MetaflowStore(FLOW)
    run_id = new_run_id()
    store.start_run(run_id)
    task_id = store.new_task_id("train")
    for attempt, ok in enumerate([False, True]):
        blobs, _ = serialize_artifacts({"attempt_seen": attempt})
        store.write_task("train", task_id, blobs, stdout=f"try {attempt}\n", stderr="",
                         participant="Portland", ok=ok, started_at=time.time(),
                         finished_at=time.time(), attempt=attempt)
    task = Task(f"{FLOW}/{run_id}/train/{task_id}")
    assert task.current_attempt == 1 and task.successful
    assert task.data.attempt_seen == 1 and task.stdout == "try 1\n"


def test_state_is_pickled_when_serialized() -> None:
    store = MetaflowStore(FLOW)
    run_id = new_run_id()
    store.start_run(run_id)
    model = np.zeros(3)
    blobs, _ = serialize_artifacts({"model": model})
    model += 7  # the engine keeps going; the record must not change
    task_id = store.new_task_id("train")
    store.write_task("train", task_id, blobs, stdout="", stderr="", participant="Portland",
                     ok=True, started_at=time.time(), finished_at=time.time())
    np.testing.assert_array_equal(Task(f"{FLOW}/{run_id}/train/{task_id}").data.model, np.zeros(3))


def test_unpicklable_values_are_reported() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            raise RuntimeError("no")

    blobs, skipped = serialize_artifacts({"lock": threading.Lock(), "gen": (i for i in range(3)),
                                          "weird": Boom(), "fine": [1, 2], "fn": lambda x: x + 1})
    assert skipped == ["lock", "gen", "weird"]
    assert set(blobs) == {"fine", "fn"}  # cloudpickle keeps lambdas (and __main__ classes)


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_identical_blobs_are_stored_once(tmp_path: Path) -> None:
    store = MetaflowStore(FLOW, str(tmp_path))
    run_id = new_run_id()
    store.start_run(run_id)
    weights = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)  # 4 MB
    root = Path(store.datastore_root)
    sizes = [_tree_bytes(root)]
    ids = []
    for name in ["Portland", "New York"]:
        ids.append(write(store, "train", name, {"model": weights.copy(), "input": name}))
        sizes.append(_tree_bytes(root))
    first, second = sizes[1] - sizes[0], sizes[2] - sizes[1]
    assert 4_000_000 <= first < 4_200_000
    assert second < 100_000  # metadata only: the 4 MB blob is not written again
    for task_id in ids:
        np.testing.assert_array_equal(Task(f"{FLOW}/{run_id}/train/{task_id}").data.model,
                                      weights)


def _fresh_client(cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """What a new Python process (its metaflow config read at import) sees from ``cwd``."""
    code = ("import json; from metaflow import Flow, namespace; namespace(None); "
            f"r = Flow({FLOW!r}).latest_run; "
            "print(json.dumps({'id': r.id, 'ok': r.successful, 'model': r.data.model.tolist()}))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    clean["METAFLOW_CLIENT_CACHE_PATH"] = str(cwd / "client-cache")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**clean, **env},
                         capture_output=True, text=True, timeout=90, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_default_root_is_where_the_client_looks(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    nested = tmp_path / "project" / "notebooks"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    store = MetaflowStore(FLOW)  # no .metaflow up the tree: one is made in the cwd
    assert store.datastore_root == os.path.realpath(nested / ".metaflow")
    made = federated_run(store, rounds=1)
    seen = _fresh_client(nested, {})
    assert seen == {"id": made["run_id"], "ok": True, "model": made["model"].tolist()}
    assert Flow(FLOW).latest_run.id == made["run_id"]  # and the in-process client

    deeper = nested / "sub"
    deeper.mkdir()
    monkeypatch.chdir(deeper)  # an existing .metaflow further up is used, as Metaflow does
    assert MetaflowStore(FLOW).datastore_root == store.datastore_root


def test_sysroot_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysroot = tmp_path / "shared"
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(sysroot))
    store = MetaflowStore(FLOW)
    assert store.datastore_root == os.path.realpath(sysroot / ".metaflow")
    made = federated_run(store, rounds=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    seen = _fresh_client(elsewhere, {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(sysroot)})
    assert seen["id"] == made["run_id"] and seen["ok"]
    assert not (tmp_path / ".metaflow").exists()
    assert LocalStorage.datastore_root is None  # the store left the client's global alone


def test_latest_run_and_fresh_ids_per_run(tmp_path: Path) -> None:
    store = MetaflowStore(FLOW, str(tmp_path))
    first = federated_run(store, rounds=1)
    while new_run_id() == first["run_id"]:  # ids are microseconds; never reuse one
        pass
    second = federated_run(store, rounds=1)
    mf_core.metadata(f"local@{tmp_path}")
    runs = list(Flow(FLOW))
    assert {r.id for r in runs} == {first["run_id"], second["run_id"]}
    assert second["ids"]["start"] == first["ids"]["start"]  # ids restart in each run
    assert Flow(FLOW).latest_run.id == max(first["run_id"], second["run_id"], key=int)
