"""@collaborator(retries=n): a failing step runs again on the state it was given; attempts are
logged and checkpointed as attempts of one task."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedloom import FLSpec, StepFailed, aggregator, collaborator
from tests.conftest import make_runtime

NAMES = ["steady", "flaky"]


def failures_to_come(index: int, name: str) -> dict:
    # Private, so it lives with the collaborator and is not reset between attempts.
    return {"failures_left": [2 if name == "flaky" else 0]}


class Flaky(FLSpec):
    @aggregator
    def start(self):
        self.model = np.zeros(3)
        self.names = self.runtime.collaborators
        self.next(self.train, foreach="names")

    @collaborator(retries=2)
    def train(self):
        self.model += 1  # in place: a retry must not see this from the failed attempt
        print(f"{self.input} trying")
        if self.failures_left[0]:
            self.failures_left[0] -= 1
            raise ConnectionError(f"{self.input}: storage hiccup")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.models = {i.input: i.model.tolist() for i in inputs}
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_step_that_fails_twice_succeeds_on_its_third_attempt_from_the_state_it_was_given(
        backend, caplog):
    flow = Flaky()
    flow.runtime = make_runtime(NAMES, backend=backend, collab_private=failures_to_come)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        try:
            flow.run()
        finally:
            flow.runtime.shutdown()
    assert flow.models == {"steady": [1.0] * 3, "flaky": [1.0] * 3}  # one increment each
    if backend == "single_process":  # Ray workers log in their own processes
        retried = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
        assert len(retried) == 2 and "failed (attempt 1 of 3): ConnectionError" in retried[0]


def test_when_every_attempt_fails_the_run_fails_with_the_last_error(backend):
    flow = Flaky()
    flow.runtime = make_runtime(NAMES, backend=backend,
                                collab_private=lambda i, name: {"failures_left": [5]})
    with pytest.raises(StepFailed, match="storage hiccup") as info:
        try:
            flow.run()
        finally:
            flow.runtime.shutdown()
    assert info.value.step == "train"


def test_attempts_are_checkpointed_as_attempts_of_one_task(metaflow_client):
    from metaflow import Flow, Task

    flow = Flaky(checkpoint=True)
    flow.runtime = make_runtime(NAMES, collab_private=failures_to_come)
    flow.run()
    run = Flow("Flaky")[flow._run_id]
    assert run.successful
    trained = {t.data.input: t for t in run["train"]}
    assert set(trained) == set(NAMES)  # one task per collaborator, however many attempts
    flaky = trained["flaky"]
    assert flaky.current_attempt == 2 and flaky.successful
    assert trained["steady"].current_attempt == 0
    first = Task(flaky.pathspec, attempt=0)
    assert not first.successful and "flaky trying" in first.stdout
    assert "storage hiccup" in str(first.exception)


def test_retries_are_only_for_collaborator_steps_and_count_whole_numbers():
    with pytest.raises(TypeError, match="only collaborator steps retry"):
        aggregator(retries=1)(lambda self: None)
    with pytest.raises(TypeError, match="retries is a whole number >= 0"):
        collaborator(retries=-1)(lambda self: None)
