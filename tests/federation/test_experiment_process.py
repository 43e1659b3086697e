"""What an envoy sends for the checkpoint is data, never pickles the user would later load."""

from __future__ import annotations

import pickle

import numpy as np

from fedloom.federation.nodes.experiment_process import _recordable, _task_record
from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.tasks import TaskRecord

EVIL = b"cos\nsystem\n(S'echo pwned'\ntR."  # a pickle that would run a shell command


def test_a_sites_artifacts_are_recorded_as_values_so_a_smuggled_pickle_stays_bytes():
    info = pb.TaskInfo(step="train", participant="site", ok=True)
    record = _task_record(info, {"payload": EVIL, "model": np.arange(3.0)})
    assert pickle.loads(record.artifacts["payload"]) == EVIL  # loading gives the bytes back
    np.testing.assert_array_equal(pickle.loads(record.artifacts["model"]), np.arange(3.0))


def test_values_the_aggregator_could_not_decode_are_left_out_and_noted():
    import os

    task = TaskRecord("train", "site", 0.0, 1.0, artifacts={
        "model": pickle.dumps(np.ones(2)), "hook": pickle.dumps(os.getcwd)})
    [values] = _recordable([task], frozenset({"experiment_pkg"}))
    assert set(values) == {"model"} and task.unpicklable == ["hook"]
