"""Serial LocalRuntime: transitions, isolation, private attributes, errors."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from fedloom import (
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    ParticipantError,
    PrivateAttributeError,
    StepFailed,
    TransitionError,
    aggregator,
    collaborator,
    fedavg,
)
from tests.conftest import NAMES, make_runtime


class Rounds(FLSpec):
    """Each collaborator adds its private ``data`` to the model; the join averages."""

    def __init__(self, rounds: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.model = np.zeros(3)
        self.rounds = rounds

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.log = []
        self.next(self.train, foreach="collaborators", exclude=["log"])

    @collaborator
    def train(self):
        self.seen_rounds = getattr(self, "seen_rounds", 0) + 1
        self.model = self.model + self.data
        self.calls += 1  # private: persists in the collaborator
        self.calls_seen = self.calls
        self.seen_now = self.seen_rounds
        self.next(self.join, exclude=["seen_rounds"])

    @aggregator
    def join(self, inputs):
        self.log.append([i.input for i in inputs])
        self.calls_log = [i.calls_seen for i in inputs]
        self.seen_log = [i.seen_now for i in inputs]
        self.model = fedavg([i.model for i in inputs])
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators", exclude=["log"])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        self.finished = True


def data_runtime(backend: str = "single_process", names=NAMES) -> LocalRuntime:
    return make_runtime(names, backend=backend,
                        collab_private=lambda i, _: {"data": np.full(3, float(i)), "calls": 0})


def test_rounds_average_and_final_state_on_flow(backend):
    flow = Rounds(rounds=3)
    flow.runtime = data_runtime(backend)
    flow.run()
    # mean of data (0, 1, 2) is 1 per round
    np.testing.assert_allclose(flow.model, [3.0, 3.0, 3.0])
    assert flow.round == 3 and flow.finished is True
    assert flow.log == [NAMES] * 3
    assert flow._run_id is not None and flow._run_id.isdigit()
    assert not hasattr(flow, "data") and not hasattr(flow, "calls")


def test_run_again_starts_a_new_run_from_the_final_state(backend):
    flow = Rounds(rounds=1)
    flow.runtime = data_runtime(backend)
    flow.run()
    first_id = flow._run_id
    flow.run()
    assert flow._run_id != first_id
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])  # continued from [1, 1, 1]


def test_private_state_persists_across_rounds_and_runs_and_stays_private(backend):
    flow = Rounds(rounds=2)
    flow.runtime = data_runtime(backend)
    flow.run()
    assert flow.calls_log == [2, 2, 2]
    flow.run()
    assert flow.calls_log == [4, 4, 4]  # same runtime: the sites (and their data) live on
    assert not hasattr(flow, "calls")


def test_collaborator_keeps_what_it_did_not_send_back(backend):
    flow = Rounds(rounds=3)
    flow.runtime = data_runtime(backend)
    flow.run()
    # seen_rounds was excluded from the join, so it stayed on each collaborator and counted up.
    assert flow.seen_log == [3, 3, 3]
    assert not hasattr(flow, "seen_rounds")


class Isolation(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.shared = {"items": []}
        self.alias = self.shared  # two names, one object
        self.arr = np.zeros(2)
        self.agg_only = "kept"
        self.next(self.touch, foreach="collaborators", exclude=["agg_only"])

    @collaborator
    def touch(self):
        assert self.alias is self.shared  # aliases survive the copy
        self.shared["items"].append(self.input)
        self.arr += 1
        self.ids = (id(self.shared), id(self.arr))
        assert not hasattr(self, "agg_only")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.items = [i.shared["items"] for i in inputs]
        self.arrays = [i.arr.copy() for i in inputs]
        self.all_ids = [i.ids for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_each_collaborator_gets_its_own_copy_and_aggregator_keeps_its_state(backend):
    flow = Isolation()
    flow.runtime = make_runtime(backend=backend)
    flow.run()
    assert flow.items == [[n] for n in NAMES]
    assert flow.shared == {"items": []}  # the aggregator's own object was never touched
    np.testing.assert_array_equal(flow.arr, [0, 0])
    assert all(np.array_equal(a, [1, 1]) for a in flow.arrays)
    assert flow.agg_only == "kept"  # excluded from the fan-out, still there at the join
    flat = [i for pair in flow.all_ids for i in pair]
    assert len(set(flat)) == len(flat)  # no two collaborators shared a mutable object


class Unpicklable(FLSpec):
    @aggregator
    def start(self):
        with self.lock:  # the aggregator's private, unpicklable object
            self.collaborators = self.runtime.collaborators
        self.next(self.use, foreach="collaborators")

    @collaborator
    def use(self):
        with self.lock:
            self.used = True
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.all_used = all(i.used for i in inputs)
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_unpicklable_private_attributes_work(backend):
    flow = Unpicklable()
    flow.runtime = make_runtime(backend=backend, agg_private={"lock": threading.Lock()},
                                collab_private=lambda i, n: {"lock": threading.Lock()})
    flow.run()
    assert flow.all_used is True


class Visibility(FLSpec):
    @aggregator
    def start(self):
        assert self.agg_secret == "a"
        assert not hasattr(self, "col_secret")
        assert not hasattr(self.runtime, "_collaborators")
        assert not hasattr(self.runtime, "_aggregator")
        self.collaborators = self.runtime.collaborators
        self.next(self.look, foreach="collaborators")

    @collaborator
    def look(self):
        assert self.col_secret == f"c-{self.input}"
        assert not hasattr(self, "agg_secret")
        assert not hasattr(self.runtime, "_aggregator")
        assert not hasattr(self.runtime, "_collaborators")
        assert self.runtime.collaborators == NAMES
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        assert not any(hasattr(i, "col_secret") for i in inputs)
        assert self.agg_secret == "a"
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_attributes_visible_only_to_their_owner(backend):
    flow = Visibility()
    flow.runtime = make_runtime(backend=backend, agg_private={"agg_secret": "a"},
                                collab_private=lambda i, n: {"col_secret": f"c-{n}"})
    flow.run()
    assert not hasattr(flow, "agg_secret")


def test_private_attributes_by_callable_with_kwargs_and_callable_wins(caplog):
    def make(index, scale):
        return {"data": np.full(3, float(index * scale)), "calls": 0}

    collaborators = []
    for i, name in enumerate(NAMES):
        c = Collaborator(name=name, private_attributes_callable=make, index=i, scale=2)
        c.private_attributes = {"data": np.full(3, 100.0), "calls": 0}  # loses to the callable
        collaborators.append(c)
    flow = Rounds(rounds=1)
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collaborators)
    with caplog.at_level(logging.WARNING):
        flow.run()
    np.testing.assert_allclose(flow.model, [2.0, 2.0, 2.0])  # mean of 0, 2, 4
    assert "using the callable" in caplog.text


def test_private_attribute_colliding_with_public_attribute_is_an_error(backend):
    flow = Rounds()
    flow.runtime = make_runtime(backend=backend,
                                collab_private=lambda i, n: {"model": 1, "data": 0, "calls": 0})
    with pytest.raises(PrivateAttributeError) as info:
        flow.run()
    assert info.value.step == "train"
    # Serial stops at the first collaborator; Ray reports whichever parallel failure came first.
    assert info.value.participant == NAMES[0] if backend == "single_process" else \
        info.value.participant in NAMES
    assert "['model']" in str(info.value)


class Leak(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.leak, foreach="collaborators")

    @collaborator
    def leak(self):
        self.shared_loader = self.loader
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_public_attribute_that_is_a_private_object_is_refused(backend):
    flow = Leak()
    flow.runtime = make_runtime(backend=backend, collab_private=lambda i, n: {"loader": [i]})
    with pytest.raises(PrivateAttributeError, match=r"'shared_loader' holds \(or is\) the "
                                                    "private attribute 'loader'"):
        flow.run()


class Branches(FLSpec):
    """Loops back to start, fans out to a subset, and branches."""

    @aggregator
    def start(self):
        self.visits = getattr(self, "visits", 0) + 1
        self.everyone = self.runtime.collaborators
        self.subset = self.everyone[1:]
        if self.visits < 2:
            self.next(self.start)
        else:
            self.next(self.pick, foreach="subset", include=["visits"])

    @collaborator
    def pick(self):
        assert set(self.__dict__) - {"input", "_fl_step"} == {"visits"}
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.joined = [i.input for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_loop_to_start_subset_foreach_include_and_branch(backend):
    flow = Branches()
    flow.runtime = make_runtime(backend=backend)
    flow.run()
    assert flow.visits == 2
    assert flow.joined == NAMES[1:]


class Raises(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.boom, foreach="collaborators")

    @collaborator
    def boom(self):
        if self.input == NAMES[1]:
            raise ValueError("bad shard")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_step_that_raises_names_step_participant_and_keeps_aggregator_state(backend):
    flow = Raises()
    flow.runtime = make_runtime(backend=backend)
    with pytest.raises(StepFailed) as info:
        flow.run()
    err = info.value
    assert (err.step, err.participant, err.exc_type) == ("boom", NAMES[1], "ValueError")
    assert 'raise ValueError("bad shard")' in err.traceback_text
    assert "fedloom/engine.py" not in err.traceback_text
    if backend == "single_process":  # across processes the original exception stays behind
        assert isinstance(err.__cause__, ValueError)
    assert flow.collaborators == NAMES  # state of the last completed aggregator step


def flow_with(start_body):
    """A one-fan-out flow whose start step runs ``start_body(self)``."""

    class Dynamic(FLSpec):
        @aggregator
        def start(self):
            if start_body(self) is True:  # the body calls next() itself; lint sees this one
                self.next(self.work, foreach="collaborators")

        @collaborator
        def work(self):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    return Dynamic


@pytest.mark.parametrize("body, message", [
    (lambda s: s.next(s.work, foreach="who"), "foreach='who' names no attribute"),
    (lambda s: (setattr(s, "who", ["nobody"]), s.next(s.work, foreach="who")),
     "names ['nobody'], which are not collaborators"),
    (lambda s: (setattr(s, "who", NAMES[:1] * 2), s.next(s.work, foreach="who")),
     "more than once"),
    (lambda s: (setattr(s, "who", []), s.next(s.work, foreach="who")), "is empty"),
    (lambda s: (setattr(s, "who", "abc"), s.next(s.work, foreach="who")),
     "must hold a list of collaborator names"),
    (lambda s: (setattr(s, "who", NAMES), s.next(s.work, foreach="who", include=["model"])),
     "include= names ['model'], which is not in the state"),
    (lambda s: (setattr(s, "who", NAMES), s.next(s.work, foreach="who"), s.next(s.end)),
     "called twice"),
    (lambda s: None, "finished without calling self.next()"),
    (lambda s: s.next(s.work, foreach="x", include=["a"], exclude=["b"]),
     "both include= and exclude="),
    (lambda s: s.next(s.work, foreach=["a"]), "foreach= names an attribute"),
])
def test_runtime_transition_errors_name_step_and_participant(body, message):
    flow = flow_with(body)()
    flow.runtime = make_runtime()
    with pytest.raises(TransitionError) as info:
        flow.run()
    assert message in str(info.value)
    assert info.value.step == "start" and info.value.participant == "aggregator"


class Diverge(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.input == NAMES[0]:
            self.next(self.join_a)
        else:
            self.next(self.join_b)

    @aggregator
    def join_a(self, inputs):
        self.next(self.end)

    @aggregator
    def join_b(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_collaborators_choosing_different_joins_stop_the_run(backend):
    flow = Diverge()
    flow.runtime = make_runtime(backend=backend)
    with pytest.raises(TransitionError, match="chose different aggregator steps") as info:
        flow.run()
    assert f"{NAMES[0]} -> join_a" in str(info.value) and f"{NAMES[1]} -> join_b" in str(
        info.value)


def test_runtime_configuration_errors():
    with pytest.raises(ParticipantError, match="unique"):
        LocalRuntime(collaborators=[Collaborator(name="a"), Collaborator(name="a")])
    with pytest.raises(ParticipantError, match="unknown backend 'threads'"):
        LocalRuntime(backend="threads")
    with pytest.raises(ParticipantError, match="must be a number"):
        Collaborator(name="a", num_gpus=-1)
    with pytest.raises(ParticipantError, match="reserved"):
        Collaborator(name="a").private_attributes = {"input": 1}
    with pytest.raises(ParticipantError, match="takes no options"):
        LocalRuntime(backend="single_process", num_actors=2).execute(Rounds())


def test_private_attributes_callable_errors_are_clear(backend):
    def broken(index):
        raise OSError("disk gone")

    flow = Rounds()
    flow.runtime = LocalRuntime(backend=backend, collaborators=[
        Collaborator(name="a", private_attributes_callable=broken, index=0)])
    with pytest.raises(ParticipantError, match=r"broken\(\*\*\['index'\]\) raised OSError"):
        flow.run()


def test_run_without_runtime_and_next_outside_run():
    flow = Rounds()
    with pytest.raises(Exception, match="has no runtime"):
        flow.run()
    with pytest.raises(AttributeError, match="no runtime yet"):
        _ = flow.runtime
    with pytest.raises(Exception, match="only works inside a step"):
        flow.next(flow.end)


class InputAfterInclude(FLSpec):
    """``a`` sends only ``x`` to ``b``; ``b`` and ``c`` still know whose chain they are in."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.a, foreach="collaborators")

    @collaborator
    def a(self):
        self.x = 1
        self.next(self.b, include=["x"])

    @collaborator
    def b(self):
        self.seen_in_b = self.input
        del self.input  # even a step that drops it does not take it from the next one
        self.next(self.c, exclude=["x"])

    @collaborator
    def c(self):
        self.seen_in_c = self.input
        self.next(self.join, exclude=["input"])

    @aggregator
    def join(self, inputs):
        self.seen = [(i.input, i.seen_in_b, i.seen_in_c) for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_input_survives_include_and_exclude_between_collaborator_steps(backend):
    flow = InputAfterInclude()
    flow.runtime = make_runtime(backend=backend)
    try:
        flow.run()
    finally:
        flow.runtime.shutdown()
    assert flow.seen == [(n, n, n) for n in NAMES]
