"""Straggler policies and simulated faults on both LocalRuntime backends."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import (
    Faults,
    FLSpec,
    ParticipantError,
    StepFailed,
    StragglerError,
    StragglerPolicy,
    TransitionError,
    aggregator,
    collaborator,
)
from tests.conftest import make_runtime

NAMES = ["a", "b", "c", "d"]


class Rounds(FLSpec):
    """Each collaborator adds its index + 1 to the model; the join averages what arrived and
    keeps, per round, who was dropped and why."""

    def __init__(self, rounds: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.rounds = rounds

    @aggregator
    def start(self):
        self.model = np.zeros(2)
        self.names = self.runtime.collaborators
        self.round = 0
        self.history = []
        self.next(self.train, foreach="names", exclude=["history"])

    @collaborator
    def train(self):
        self.model = self.model + self.names.index(self.input) + 1
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = np.mean([i.model for i in inputs], axis=0)
        self.history.append({"arrived": sorted(i.input for i in inputs),
                             "dropped": dict(inputs.dropped)})
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="names", exclude=["history"])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def run(backend, rounds: int = 2, **options) -> Rounds:
    flow = Rounds(rounds)
    if backend == "ray":  # one actor each: a slow collaborator delays only itself
        options["num_actors"] = len(NAMES)
    flow.runtime = make_runtime(NAMES, backend=backend, **options)
    try:
        flow.run()
    finally:
        flow.runtime.shutdown()
    return flow


def test_without_a_policy_every_collaborator_arrives_and_nothing_is_dropped(backend):
    flow = run(backend)
    assert flow.history == [{"arrived": NAMES, "dropped": {}}] * 2


def test_a_late_collaborator_is_dropped_at_the_deadline_and_offered_work_next_round(backend):
    # c is 2 s late in the first fan-out only; the deadline is 1.5 s. (On Ray the delay is
    # real: c is busy until 2 s, so the second round's work reaches it well within its time.)
    faults = Faults(delay={"c": 2.0}, fan_outs={0})
    flow = run(backend, straggler_policy=StragglerPolicy(deadline=1.5, min_collaborators=2),
               faults=faults)
    first, second = flow.history
    assert first["arrived"] == ["a", "b", "d"]
    assert first["dropped"].keys() == {"c"} and "timed out" in first["dropped"]["c"]
    assert second == {"arrived": NAMES, "dropped": {}}  # offered work again
    # Round 1 averaged a, b, d only (1, 2, 4): c's late result never leaked into any round.
    np.testing.assert_allclose(flow.model, [7 / 3 + 2.5] * 2)


def test_a_collaborator_still_busy_with_a_late_step_is_dropped_again_as_on_ray(backend):
    # b is 2.5 s late in the first fan-out, whose deadline is 1 s. Not interrupted, it is busy
    # until t=2.5, past the second round's deadline (t~2): dropped again. The third round
    # (deadline t~3) reaches it once it is free. Serial rehearses exactly what Ray does.
    faults = Faults(delay={"b": 2.5}, fan_outs={0})
    flow = run(backend, rounds=3, faults=faults,
               straggler_policy=StragglerPolicy(deadline=1.0, min_collaborators=2))
    assert [h["arrived"] for h in flow.history] == [["a", "c", "d"], ["a", "c", "d"], NAMES]
    assert all("timed out" in h["dropped"]["b"] for h in flow.history[:2])
    if backend == "single_process":
        assert "still busy with a late step" in flow.history[1]["dropped"]["b"]


def test_failures_and_disconnects_are_dropped_with_their_reason(backend):
    faults = Faults(fail={"b"}, disconnect={"d"}, fan_outs={1})
    flow = run(backend, straggler_policy=StragglerPolicy(min_fraction=0.5), faults=faults)
    assert flow.history[0] == {"arrived": NAMES, "dropped": {}}
    assert flow.history[1]["arrived"] == ["a", "c"]
    dropped = flow.history[1]["dropped"]
    assert "failed" in dropped["b"] and "SimulatedFailure" in dropped["b"]
    assert dropped["d"] == "disconnected (simulated)"


def test_too_few_finishers_fail_the_run_listing_who_was_missing(backend):
    faults = Faults(fail={"a", "b"}, delay={"c": 3.0})
    with pytest.raises(StragglerError, match=r"only 1 collaborator\(s\) finished the fan-out to "
                       r"'train', and its straggler policy needs 2") as info:
        run(backend, faults=faults,
            straggler_policy=StragglerPolicy(deadline=1.0, min_collaborators=2))
    missing = {d.collaborator: d.kind for d in info.value.dropped}
    assert missing == {"a": "failed", "b": "failed", "c": "timed out"}


def test_without_a_policy_a_simulated_failure_stops_the_run_as_a_real_one_would(backend):
    with pytest.raises(StepFailed, match="SimulatedFailure") as info:
        run(backend, faults=Faults(fail={"b"}))
    assert (info.value.step, info.value.participant) == ("train", "b")


def test_faults_are_seeded_and_reproducible():
    faults = Faults(fail_probability=0.3, slow_probability=0.5, slow_seconds=2.0,
                    disconnect_probability=0.1, seed=7)
    draws = [faults.for_chain(name, n) for name in NAMES for n in range(20)]
    again = Faults(fail_probability=0.3, slow_probability=0.5, slow_seconds=2.0,
                   disconnect_probability=0.1, seed=7)
    assert draws == [again.for_chain(name, n) for name in NAMES for n in range(20)]
    assert 0.15 < sum(d.fail for d in draws) / len(draws) < 0.45
    assert {d.delay for d in draws} == {0.0, 2.0}
    other = Faults(fail_probability=0.3, slow_probability=0.5, slow_seconds=2.0, seed=8)
    assert draws != [other.for_chain(name, n) for name in NAMES for n in range(20)]


def test_bad_policies_and_faults_are_refused_with_what_to_fix():
    with pytest.raises(ParticipantError, match="needs deadline="):
        StragglerPolicy()
    with pytest.raises(ParticipantError, match="positive number of seconds"):
        StragglerPolicy(deadline=0)
    with pytest.raises(ParticipantError, match=r"min_fraction=1.5\) must be in \(0, 1\]"):
        StragglerPolicy(min_fraction=1.5)
    with pytest.raises(ParticipantError, match=r"Faults name \['zed'\]"):
        make_runtime(NAMES, faults=Faults(fail={"zed"}))
    flow = Rounds()
    flow.runtime = make_runtime(NAMES, straggler_policy={"trian": StragglerPolicy(deadline=1)})
    with pytest.raises(ParticipantError, match=r"\['trian'\], which are not collaborator steps"):
        flow.run()
    flow.runtime = make_runtime(NAMES, straggler_policy=StragglerPolicy(min_collaborators=5))
    with pytest.raises(TransitionError, match="needs 5 collaborators to finish, but it goes to "
                                              "only 4"):
        flow.run()
