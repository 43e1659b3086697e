"""Resume: a run that failed at a later round goes on from its checkpoint, in a new run that
records where it came from, and ends with the model an uninterrupted run would have."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import Faults, FLSpec, StepFailed, aggregator, collaborator, fedavg
from fedloom.resume import ResumeError
from tests.conftest import make_runtime

NAMES = ["a", "b", "c"]


def scale(index: int, name: str) -> dict:
    return {"scale": float(index + 1)}  # private: made again by its owner on resume


class Training(FLSpec):
    def __init__(self, rounds: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.rounds = rounds

    @aggregator
    def start(self):
        self.model = np.zeros(4)
        self.names = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="names")

    @collaborator
    def train(self):
        rng = np.random.default_rng([self.round, self.names.index(self.input)])  # seeded
        self.model = self.model + rng.normal(size=4) * self.scale
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = fedavg([i.model for i in inputs])
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="names")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def run(backend: str, flow: Training, **options) -> None:
    flow.runtime = make_runtime(NAMES, backend=backend, collab_private=scale, **options)
    try:
        flow.run()
    finally:
        flow.runtime.shutdown()


def test_a_run_that_failed_in_round_three_resumes_to_the_same_final_model(
        backend, metaflow_client):
    from metaflow import Flow

    uninterrupted = Training()
    run(backend, uninterrupted)
    failing = Training(checkpoint=True)
    with pytest.raises(StepFailed, match="SimulatedFailure"):
        run(backend, failing, faults=Faults(fail={"b"}, fan_outs={2}))  # the third round
    resumed = Training(checkpoint=True)
    resumed.runtime = make_runtime(NAMES, backend=backend, collab_private=scale)
    try:
        resumed.run(resume=failing._run_id)
    finally:
        resumed.runtime.shutdown()
    np.testing.assert_allclose(resumed.model, uninterrupted.model)
    assert resumed.round == 4
    record = Flow("Training")[resumed._run_id]
    assert record.successful and f"fedloom-resumed-from:{failing._run_id}" in record.tags
    steps = {step.id: len(list(step)) for step in record}
    assert "start" not in steps and steps["train"] == 2 * len(NAMES)  # rounds 3 and 4 only


def test_what_cannot_be_resumed_says_why(metaflow_client):
    done = Training(rounds=1, checkpoint=True)
    run("single_process", done)
    again = Training(checkpoint=True)
    again.runtime = make_runtime(NAMES, collab_private=scale)
    with pytest.raises(ResumeError, match="finished; there is nothing to resume"):
        again.run(resume=done._run_id)
    with pytest.raises(ResumeError, match="no recorded run Training/123 in this Metaflow"):
        again.run(resume="123")


SCRIPT = """
from tests.conftest import make_runtime
from tests.test_resume import NAMES, Training, scale

flow = Training(checkpoint=True)
flow.runtime = make_runtime(NAMES, collab_private=scale)
flow.run()
print("ROUND", flow.round, "MODEL", flow.model.round(6).tolist())
"""


def test_fx_run_resume_runs_the_users_script_with_its_flow_resuming(metaflow_client):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    failing = Training(checkpoint=True)
    with pytest.raises(StepFailed):
        run("single_process", failing, faults=Faults(fail={"c"}, fan_outs={1}))
    uninterrupted = Training()
    run("single_process", uninterrupted)
    script = metaflow_client / "train.py"
    script.write_text(SCRIPT)

    # A bare environment, but the session's temporary folders (see tests/conftest.py).
    env = {"PYTHONPATH": root, "PATH": "", **{key: os.environ[key] for key in (
        "TMPDIR", "METAFLOW_CLIENT_CACHE_PATH") if key in os.environ}}

    def fx(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedloom.cli", "run", "resume",
                               str(script), target], cwd=metaflow_client, capture_output=True,
                              text=True, timeout=120, env=env)

    done = fx(f"Training/{failing._run_id}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ROUND 4 MODEL {uninterrupted.model.round(6).tolist()}" in done.stdout
    wrong = fx(f"Other/{failing._run_id}")
    assert wrong.returncode != 0 and "never ran a flow named Other" in wrong.stderr
