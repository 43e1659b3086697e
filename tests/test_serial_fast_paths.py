"""Issue #12: the serial backend's lean paths (an untimed fan-out skips the simulated clock, the
leak check looks only at what a step could change, a task's metrics target is made only when
it logs) keep every rule: leaks are caught, copies are isolated, busy time carries over."""

from __future__ import annotations

import contextvars
import functools
import threading
import time
import weakref

import numpy as np
import pytest

import fedloom
from fedloom import (
    FLSpec,
    PrivateAttributeError,
    StragglerPolicy,
    aggregator,
    collaborator,
    fedavg,
)
from fedloom.stragglers import SimulatedClock
from tests.conftest import make_runtime

NAMES = ["a", "b", "c"]


def private_data(index: int, name: str) -> dict[str, np.ndarray]:
    return {"data": np.full(4, float(index + 1))}


class Leaky(FLSpec):
    """A collaborator step does ``how`` to its copy of the state; the rest is a plain round."""

    def __init__(self, how: str = "", **kwargs):
        super().__init__(**kwargs)
        self.how = how

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.model = np.zeros(4)
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model[:1] += self.data[:1]
        if self.input == "b":  # a later collaborator: the earlier ones took the lean path
            if self.how == "append":
                self.collaborators.append(self.data)
            elif self.how == "replace":
                self.collaborators[0] = self.data
            elif self.how == "nested":
                self.collaborators[0] = [self.data]
            elif self.how == "view":
                self.model = self.data[:2]
            elif self.how == "is":
                self.model = self.data
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.inputs = [(i.input, i.collaborators, i.model) for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


@pytest.mark.parametrize("how", ["append", "replace", "nested", "view", "is"])
def test_a_leak_into_a_fanned_out_copy_is_caught(how):
    flow = Leaky(how)
    flow.runtime = make_runtime(NAMES, collab_private=private_data)
    with pytest.raises(PrivateAttributeError, match="private attribute 'data'"):
        flow.run()


class Box:
    """Equal to whatever its value is equal to."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return self.value == other

    __hash__ = None  # type: ignore[assignment]


class Pair(tuple):
    """Its own == is identity, but a plain tuple's == accepts it and compares the items."""

    __eq__ = object.__eq__
    __hash__ = tuple.__hash__


class StandIn(FLSpec):
    """Collaborator 'b' puts a private object in place of a value it compares equal to (the
    flows after it change ``prepare`` and ``train``)."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.prepare()
        self.next(self.train, foreach="collaborators")

    def prepare(self) -> None:  # the flat lists given to the collaborators
        self.pairs = [(1, 2), (3, 4)]

    @collaborator
    def train(self):
        if self.input == "b":
            self.pairs[0] = self.pair
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


@pytest.mark.parametrize("first", [Box(1), np.ones(1)])
def test_a_private_object_equal_to_the_value_it_replaces_is_caught(first):
    flow = StandIn()
    flow.runtime = make_runtime(NAMES, collab_private=lambda i, n: {"pair": Pair((first, 2))})
    with pytest.raises(PrivateAttributeError, match="private attribute 'pair'"):
        flow.run()


class Shrinks(StandIn):
    def prepare(self) -> None:
        self.weights = [1, 2]

    @collaborator
    def train(self):
        # Resized in place to one element, it compares equal to the number it replaces.
        self.data.resize(1, refcheck=False)
        self.data[0] = 1.0
        self.weights[0] = self.data
        self.next(self.join)


def test_a_private_array_resized_to_pass_for_a_number_is_caught():
    flow = Shrinks()
    flow.runtime = make_runtime(NAMES, collab_private=lambda i, n: {"data": np.array([5., 6.])})
    with pytest.raises(PrivateAttributeError, match="private attribute 'data'"):
        flow.run()


class Holders(StandIn):
    """A new object that holds a private one takes the place of a value it compares equal to."""

    def __init__(self, how: str = "", **kwargs):
        super().__init__(**kwargs)
        self.how = how

    def prepare(self) -> None:
        self.scores, self.tags = [1.0, 5.0], [frozenset({"lr"}), "x"]

    @collaborator
    def train(self):
        if self.how == "view":
            self.scores[0] = self.w[:1]  # a size-1 view of the private array: == 1.0
        elif self.how == "wrapper":
            self.scores[0] = Box(self.w)  # equal to anything its value is equal to
            self.scores[0].value = 1.0
            self.scores[0].kept = self.w
        else:
            self.tags[0] = self.cfg.keys()  # a dict's keys compare equal to a set
        self.next(self.join)


@pytest.mark.parametrize("how, name", [("view", "w"), ("wrapper", "w"), ("keys", "cfg")])
def test_a_new_holder_of_private_data_in_place_of_an_equal_value_is_caught(how, name):
    flow = Holders(how)
    flow.runtime = make_runtime(NAMES, collab_private=lambda i, n: {
        "w": np.array([1.0, 2.0, 3.0]), "cfg": {"lr": 0.1}})
    with pytest.raises(PrivateAttributeError, match=f"private attribute '{name}'"):
        flow.run()


class LetsGo(FLSpec):
    """A step publishes a private object, then rebinds or deletes the private attribute."""

    def __init__(self, how: str = "", **kwargs):
        super().__init__(**kwargs)
        self.how = how

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        if self.how == "aggregator":
            self.pub = self.secret
            self.secret = None
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        if self.how == "rebind":
            self.pub = self.data
            self.data = np.zeros(4)
        elif self.how == "delete":
            self.collaborators.append(self.data)
            del self.data
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


@pytest.mark.parametrize("how, name", [("rebind", "data"), ("delete", "data"),
                                       ("aggregator", "secret")])
def test_a_private_object_published_then_let_go_of_is_caught(how, name):
    flow = LetsGo(how)
    flow.runtime = make_runtime(NAMES, collab_private=private_data,
                                agg_private={"secret": np.ones(3)})
    with pytest.raises(PrivateAttributeError, match=f"private attribute '{name}'"):
        flow.run()


class Holder:
    def __init__(self) -> None:
        self.values = np.ones(2)

    def get(self) -> np.ndarray:
        return self.values


class Callables(LetsGo):
    """Public callables and iterators that hold a private object without an attribute."""

    @collaborator
    def train(self):
        data = self.data
        self.pub = {
            "bound": data.sum, "method": self.holder.get, "closure": lambda: data,
            "default": lambda x=data: x, "partial": functools.partial(np.add, data),
            "iterator": iter([data]), "zipped": zip([1], [data], strict=True),
        }[self.how]
        self.next(self.join)


@pytest.mark.parametrize("how, name", [
    ("bound", "data"), ("method", "holder"), ("closure", "data"), ("default", "data"),
    ("partial", "data"), ("iterator", "data"), ("zipped", "data")])
def test_a_callable_or_iterator_holding_private_data_is_caught(how, name):
    flow = Callables(how)
    flow.runtime = make_runtime(NAMES, collab_private=lambda i, n: {
        "data": np.ones(3), "holder": Holder()})
    with pytest.raises(PrivateAttributeError, match=f"private attribute '{name}'"):
        flow.run()


class Rebinds(Leaky):
    @collaborator
    def train(self):
        # A flat attribute rebound to a fresh array, and one mutated in place: no leak.
        self.collaborators.append(self.input)
        self.model = np.ones(3) * self.data[0]
        self.next(self.join)


def test_a_fresh_array_or_public_text_is_no_leak_and_each_copy_is_its_own():
    flow = Rebinds()
    flow.runtime = make_runtime(NAMES, collab_private=private_data)
    flow.run()
    assert flow.collaborators == NAMES  # the aggregator's own list is untouched
    lists = [names for _, names, _ in flow.inputs]
    assert [names[-1] for names in lists] == NAMES  # each saw only its own append
    assert all(len(names) == len(NAMES) + 1 for names in lists)
    assert len({id(names) for names in lists}) == len(NAMES)
    np.testing.assert_array_equal([m[0] for _, _, m in flow.inputs], [1.0, 2.0, 3.0])


class Logs(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        fedloom.log_metric("loss", self.data[0] + self.round)
        # Also from a thread that runs in a copy of the step's context.
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run,
                                  args=(fedloom.log_metrics, {"acc": 0.5}))
        thread.start()
        thread.join()
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.round += 1
        if self.round < 2:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_metrics_logged_in_a_step_keep_their_task():
    flow = Logs()
    flow.runtime = make_runtime(NAMES, collab_private=private_data)
    flow.run()
    got = sorted((m.step, m.participant, m.round, m.name, m.value) for m in flow.metrics)
    want = sorted((("train", name, r, "loss", i + 1.0 + r)) for r in range(2)
                  for i, name in enumerate(NAMES)) + \
        sorted(("train", name, r, "acc", 0.5) for r in range(2) for name in NAMES)
    assert got == sorted(want)
    with pytest.raises(fedloom.FedloomError, match="inside a step"):
        fedloom.log_metric("loss", 1.0)  # outside a step, as before


def test_the_clock_knows_when_nobody_is_busy():
    clock = SimulatedClock()
    began = clock.begin_fan_out()
    assert clock.idle_at(began)
    clock.run("b", began, 2.5)
    clock.end_fan_out(began + 1.0)  # the deadline: b is still busy
    assert not clock.idle_at(clock.begin_fan_out())
    assert clock.idle_at(began + 2.5)


class TwoSteps(FLSpec):
    """A fan-out with a deadline (b is late the first time), one without, one with again."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.history = []
        self.next(self.timed, foreach="collaborators", exclude=["history"])

    @collaborator
    def timed(self):
        if self.input == "b" and self.round == 0:
            time.sleep(0.6)
        self.next(self.join)

    @collaborator
    def untimed(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.history.append(sorted(i.input for i in inputs))
        self.round += 1
        if self.round == 1:
            self.next(self.untimed, foreach="collaborators", exclude=["history"])
        elif self.round == 2:
            self.next(self.timed, foreach="collaborators", exclude=["history"])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_fan_out_without_a_deadline_still_waits_for_a_busy_collaborator():
    # b is dropped at 0.25 s but busy until 0.6 s. The untimed fan-out after it waits for b
    # (it starts b's work when b is free), so the third fan-out begins after 0.6 s and b is
    # on time; had the untimed fan-out ignored b's busy time, b would be dropped again.
    flow = TwoSteps()
    flow.runtime = make_runtime(NAMES, straggler_policy={
        "timed": StragglerPolicy(deadline=0.25, min_collaborators=1)})
    flow.run()
    assert flow.history == [["a", "c"], NAMES, NAMES]


class Rounds(FLSpec):
    """Two rounds of FedAvg over a model given to the constructor; the aggregator's private
    ``initial`` (a weak reference to that model) and ``freed`` record, at each join, whether
    anything still keeps the initial model alive."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model = self.model + 1.0
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.freed.append(self.initial() is None)
        self.model = fedavg([i.model for i in inputs])
        if len(self.freed) < 2:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_run_does_not_keep_the_initial_model_alive_once_the_flow_has_replaced_it():
    # A model handed to the flow alone: one copy fewer for the whole run (N+2 at a join, not
    # N+3), once the first join replaced it.
    model = np.zeros(1000)
    freed: list[bool] = []
    runtime = make_runtime(agg_private={"initial": weakref.ref(model), "freed": freed})
    flow = Rounds(model)
    flow.runtime = runtime
    del model
    flow.run()
    assert freed == [False, True]  # the first join still has it as self.model
    np.testing.assert_allclose(flow.model, np.full(1000, 2.0))
