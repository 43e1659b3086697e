"""Large values pickled straight into Metaflow's blob store (no in-memory copy of the pickle),
read back with Metaflow's own loader and client."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

pytest.importorskip("metaflow")
from metaflow import Flow, Step

from fedloom import FLSpec, aggregator, collaborator
from fedloom.checkpoint import MetaflowStore
from fedloom.checkpoint.artifacts import PROTOCOL, StoredBlob
from fedloom.checkpoint.cas_stream import LARGE
from tests.conftest import NAMES, make_runtime

BIG = LARGE // 4 + 1000  # float32 elements: just over the streaming threshold


def blob_files(store: MetaflowStore) -> list[Path]:
    data = Path(store.datastore_root) / "F" / "data"
    return sorted(p for p in data.rglob("*") if p.is_file())


def test_large_value_is_streamed_in_metaflows_layout(tmp_path: Path) -> None:
    store = MetaflowStore("F", str(tmp_path))
    assert store.sink is not None
    model = {"weights": np.arange(BIG, dtype=np.float32), "bias": np.ones((3, 2)), "step": 7}
    stored = store.sink.pickle(model)
    assert isinstance(stored, StoredBlob)
    expected = cloudpickle.dumps(model, protocol=PROTOCOL)
    assert stored.size == len(expected)
    [(key, blob)] = list(store._flow_ds.ca_store.load_blobs([stored.key]))  # Metaflow's loader
    assert key == stored.key and blob == expected
    loaded = pickle.loads(blob)
    np.testing.assert_array_equal(loaded["weights"], model["weights"])
    assert loaded["step"] == 7
    store.close()


def test_same_bytes_are_stored_once_and_small_values_stay_in_memory(tmp_path: Path) -> None:
    store = MetaflowStore("F", str(tmp_path))
    assert store.sink is not None
    weights = np.random.default_rng(1).standard_normal(BIG).astype(np.float32)
    first, again = store.sink.pickle(weights), store.sink.pickle(weights.copy())
    assert isinstance(first, StoredBlob) and first == again
    store.close()  # waits for the duplicate's removal
    names = [p.name for p in blob_files(store)]
    assert names == [first.key, f"{first.key}_meta"]  # one blob, its marker, no temporary file
    small = store.sink.pickle(np.zeros(10))
    assert isinstance(small, bytes) and pickle.loads(small).shape == (10,)


def test_a_value_that_fails_halfway_leaves_nothing(tmp_path: Path) -> None:
    store = MetaflowStore("F", str(tmp_path))
    assert store.sink is not None
    with pytest.raises(TypeError):
        store.sink.pickle([np.ones(BIG, dtype=np.float32), threading.Lock()])
    store.close()
    assert blob_files(store) == []


class BigModelFlow(FLSpec):
    """The join changes the collaborators' models in place: their records must not change."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model = np.zeros(BIG, dtype=np.float32)

    @aggregator
    def start(self) -> None:
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self) -> None:
        self.model = self.model + NAMES.index(self.input) + 1
        self.next(self.join)

    @aggregator
    def join(self, inputs: list[BigModelFlow]) -> None:
        for i in inputs:
            if i.model.flags.writeable:  # Ray hands over read-only arrays
                i.model *= 0  # in place, after the collaborators' tasks were recorded
        self.model = np.full(BIG, 5.0, dtype=np.float32)
        self.next(self.end)

    @aggregator
    def end(self) -> None:
        pass


def test_records_of_large_state_are_what_each_task_left(metaflow_client: Path,
                                                        backend: str) -> None:
    flow = BigModelFlow(checkpoint=True)
    flow.runtime = make_runtime(backend=backend)
    flow.run()
    run = Flow("BigModelFlow").latest_run
    assert run.successful
    for task in Step(f"BigModelFlow/{run.id}/train"):
        expected = NAMES.index(task.data.input) + 1
        np.testing.assert_array_equal(task.data.model, np.full(BIG, expected, np.float32))
    np.testing.assert_array_equal(run["end"].task.data.model, np.full(BIG, 5.0, np.float32))
    # join and end hold the same model: stored once
    assert run["join"].task["model"]._object["sha"] == run["end"].task["model"]._object["sha"]
    leftovers = [p for p in (metaflow_client / ".metaflow").rglob(".fedloom-*")]
    assert leftovers == []
