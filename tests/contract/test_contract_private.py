"""Private attributes: dict or callable, owner-only, never copied, persistent, no collisions."""

from __future__ import annotations

import logging
import pickle
import warnings

import numpy as np
import pytest

import fedloom
from fedloom import (
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
)

pytestmark = pytest.mark.timeout(60)

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]


class Unshippable:
    """A resource that can be neither pickled nor deep-copied (like an open handle)."""

    def __init__(self, owner):
        self.owner = owner
        self.uses = 0

    def __reduce__(self):
        raise TypeError("Unshippable cannot be pickled")

    def __deepcopy__(self, memo):
        raise TypeError("Unshippable cannot be deep-copied")

    def __copy__(self):
        raise TypeError("Unshippable cannot be copied")


def test_unshippable_really_is_unshippable():
    import copy

    with pytest.raises(TypeError):
        pickle.dumps(Unshippable("x"))
    with pytest.raises(TypeError):
        copy.deepcopy(Unshippable("x"))


# -- visibility ----------------------------------------------------------------------------------


class VisibilityFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.agg_saw = [self._seen()]
        self.next(self.work, foreach="collaborators")

    def _seen(self):
        names = ["agg_secret", "shard", "secret_0", "secret_1", "secret_2"]
        return sorted(n for n in names if hasattr(self, n))

    @collaborator
    def work(self):
        self.collab_saw = self._seen()
        self.shard_value = fedloom.share(self.shard)  # published on purpose: a copy
        self.next(self.more)

    @collaborator
    def more(self):
        self.collab_saw_later = self._seen()
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.agg_saw.append(self._seen())
        self.agg_secret_value = self.agg_secret
        self.collab_saw = [i.collab_saw for i in inputs]
        self.collab_saw_later = [i.collab_saw_later for i in inputs]
        self.shards = [i.shard_value for i in inputs]
        self.inputs_carry_private = [sorted(k for k in ("shard", "secret_0", "secret_1",
                                                        "secret_2") if hasattr(i, k))
                                     for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        self.agg_saw.append(self._seen())


def visibility_runtime():
    agg = Aggregator()
    agg.private_attributes = {"agg_secret": "A"}
    collabs = []
    for i, name in enumerate(NAMES):
        c = Collaborator(name=name)
        c.private_attributes = {"shard": f"shard-of-{name}", f"secret_{i}": i}
        collabs.append(c)
    return LocalRuntime(aggregator=agg, collaborators=collabs, backend="single_process")


@pytest.fixture(scope="module")
def visibility_flow():
    flow = VisibilityFlow()
    flow.runtime = visibility_runtime()
    flow.run()
    return flow


def test_collaborator_private_attributes_visible_only_to_their_owner(visibility_flow):
    flow = visibility_flow
    assert flow.collab_saw == [sorted(["shard", f"secret_{i}"]) for i in range(3)]
    assert flow.collab_saw_later == flow.collab_saw
    assert flow.shards == [f"shard-of-{n}" for n in NAMES]


def test_aggregator_private_attributes_visible_only_on_the_aggregator(visibility_flow):
    flow = visibility_flow
    assert flow.agg_saw == [["agg_secret"]] * 3
    assert flow.agg_secret_value == "A"


def test_private_attributes_never_reach_the_join_inputs_or_the_users_flow(visibility_flow):
    flow = visibility_flow
    assert flow.inputs_carry_private == [[], [], []]
    for name in ("agg_secret", "shard", "secret_0", "secret_1", "secret_2"):
        assert not hasattr(flow, name)
        assert name not in vars(flow)


# -- callable, both, warning ---------------------------------------------------------------------


def make_private(index, scale, tag):
    return {"shard": np.arange(3) * scale + index, "tag": tag}


class CallableFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.got = (self.shard.tolist(), self.tag, hasattr(self, "from_dict"))
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.got = [i.got for i in inputs]
        self.agg_has = (getattr(self, "agg_from_callable", None), hasattr(self, "agg_dict"))
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_attributes_by_callable_with_keyword_arguments():
    collabs = [Collaborator(name=n, private_attributes_callable=make_private, index=i, scale=10,
                            tag=f"t{i}") for i, n in enumerate(NAMES)]
    flow = CallableFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs,
                                backend="single_process")
    flow.run()
    assert flow.got == [([i, 10 + i, 20 + i], f"t{i}", False) for i in range(3)]


def test_callable_wins_over_dict_with_a_warning(caplog):
    collabs = []
    for i, n in enumerate(NAMES):
        c = Collaborator(name=n, private_attributes_callable=make_private, index=i, scale=1,
                         tag="callable")
        c.private_attributes = {"from_dict": 1, "tag": "dict"}
        collabs.append(c)
    agg = Aggregator(private_attributes_callable=lambda answer: {"agg_from_callable": answer},
                     answer="yes")
    agg.private_attributes = {"agg_dict": "no"}
    flow = CallableFlow()
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=collabs, backend="single_process")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        flow.run()
    assert flow.got == [([i, 1 + i, 2 + i], "callable", False) for i in range(3)]
    assert flow.agg_has == ("yes", False)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records
                                                    if r.levelno >= logging.WARNING]
    assert any("callable" in m for m in messages), messages


# -- no copies, no pickling, persistence ---------------------------------------------------------

RESOURCES: dict[str, Unshippable] = {}


def unshippable_for(name):
    return {"handle": RESOURCES.setdefault(name, Unshippable(name))}


class ResourceFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.agg_identity = []
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.handle.uses += 1
        self.same_object = self.handle is RESOURCES[self.input]
        self.uses_seen = self.handle.uses
        self.counter = self.counter + 1  # rebinding a private attribute
        self.counter_seen = self.counter
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.agg_handle.uses += 1
        self.agg_identity.append(self.agg_handle is RESOURCES["__agg__"])
        self.seen = [*getattr(self, "seen", []),
                     [(i.same_object, i.uses_seen, i.counter_seen) for i in inputs]]
        self.round += 1
        if self.round < 3:
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        self.agg_uses = self.agg_handle.uses


def resource_runtime(by_callable):
    RESOURCES.clear()
    agg = Aggregator()
    agg.private_attributes = {"agg_handle": RESOURCES.setdefault("__agg__",
                                                                 Unshippable("__agg__"))}
    collabs = []
    for name in NAMES:
        if by_callable:
            c = Collaborator(name=name, private_attributes_callable=_resource_callable,
                             who=name)
        else:
            c = Collaborator(name=name)
            c.private_attributes = {**unshippable_for(name), "counter": 0}
        collabs.append(c)
    return LocalRuntime(aggregator=agg, collaborators=collabs, backend="single_process")


def _resource_callable(who):
    return {**unshippable_for(who), "counter": 0}


@pytest.mark.parametrize("by_callable", [False, True], ids=["dict", "callable"])
def test_unpicklable_private_objects_are_never_copied_and_persist(by_callable):
    flow = ResourceFlow()
    flow.runtime = resource_runtime(by_callable)
    flow.run()
    assert flow.seen == [[(True, r, r)] * 3 for r in (1, 2, 3)]
    assert flow.agg_identity == [True, True, True]
    assert flow.agg_uses == 3
    assert all(RESOURCES[n].uses == 3 for n in NAMES)


# -- collisions ----------------------------------------------------------------------------------


class CollisionFlow(FLSpec):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = np.zeros(2)

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
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


def test_aggregator_private_name_colliding_with_public_attribute_is_an_error():
    agg = Aggregator(name="the-agg")
    agg.private_attributes = {"w": np.ones(2)}
    flow = CollisionFlow()
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=[Collaborator(name=n)
                                                               for n in NAMES])
    with pytest.raises(fedloom.FedloomError) as info:
        flow.run()
    assert "'w'" in str(info.value) or '"w"' in str(info.value)
    assert "the-agg" in str(info.value)


def test_collaborator_private_name_colliding_with_public_attribute_is_an_error():
    collabs = [Collaborator(name=n) for n in NAMES]
    collabs[1].private_attributes = {"w": np.ones(2)}
    flow = CollisionFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs)
    with pytest.raises(fedloom.FedloomError) as info:
        flow.run()
    err = info.value
    assert "'w'" in str(err) or '"w"' in str(err)
    assert "New York" in str(err)
    if isinstance(err, fedloom.FlowRunError):
        assert err.participant == "New York"
        assert err.step == "work"


CALLS: list[str] = []


def _counted_callable(who):
    CALLS.append(who)
    return {"counter": 0}


class CounterFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.counter += 1
        self.count = self.counter
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.counts = [i.count for i in inputs]
        self.round += 1
        if self.round < 3:
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_callable_is_called_once_per_participant_and_state_persists():
    CALLS.clear()
    collabs = [Collaborator(name=n, private_attributes_callable=_counted_callable, who=n)
               for n in NAMES]
    flow = CounterFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs)
    flow.run()
    assert flow.counts == [3, 3, 3]
    assert sorted(CALLS) == sorted(NAMES)


class SharedGlobalFlow(FLSpec):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reducer = np.mean  # a public reference to a global function

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.value = float(self.metric([1.0, 3.0]))
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.values = [i.value for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_attribute_may_be_the_same_global_object_as_a_public_one():
    collabs = [Collaborator(name=n) for n in NAMES]
    for c in collabs:
        c.private_attributes = {"metric": np.mean}
    flow = SharedGlobalFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs)
    flow.run()
    assert flow.values == [2.0, 2.0, 2.0]


class FailingJoinFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.agg_secret.append("touched")
        if self.agg_secret:
            raise RuntimeError("join failed")
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_attributes_stay_off_the_flow_after_a_failed_step():
    agg = Aggregator()
    secret = []
    agg.private_attributes = {"agg_secret": secret}
    runtime = LocalRuntime(aggregator=agg, collaborators=[Collaborator(name=n) for n in NAMES])
    flow = FailingJoinFlow()
    flow.runtime = runtime
    with pytest.raises(fedloom.StepFailed):
        flow.run()
    assert not hasattr(flow, "agg_secret")
    assert "agg_secret" not in vars(flow)
    assert secret == ["touched"]  # the private object itself, not a copy
    assert flow.runtime is runtime
