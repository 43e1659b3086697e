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


# -- mutated containers: the leak check looks where the step could have changed something -------

PUBLIC_TOKENS = ["".join(["tok/", str(i), "-", "x" * 12]) for i in range(3)]  # made at run time
SHARED_TOKEN = "".join(["tok/shared-", "y" * 12])
LABEL_TOKEN = "".join(["tok/label-", "z" * 12])


class Holder:
    def __init__(self):
        self.things = []


def _append_to_names(self):
    self.collaborators.append(self.data)


def _into_given_dict(self):
    self.config["data"] = self.data


def _replace_a_name(self):
    self.collaborators[0] = self.data


def _replace_a_name_with_an_equal_private_object(self):
    self.collaborators[0] = self.same_name  # == says equal: it is another object all the same


def _replace_a_token_with_an_equal_private_one(self):
    self.tokens[0] = self.token_copy


def _deep_in_a_given_structure(self):
    self.nested["inner"].append(self.data)


def _as_an_attribute_of_a_given_object(self):
    self.holder.things.append(self.data)


def _private_rebound_to_a_given_array(self):
    self.data = self.model


def _private_text_rebound_to_a_given_token(self):
    self.token_copy = self.tokens[1]


def _a_view_of_private_data(self):
    self.view = self.data[1:]


def _rebind_and_replace_with_an_equal_object(self):
    self.same_name = np.array([self.collaborators[0]])  # a new private object...
    self.collaborators[0] = self.same_name  # ...that == takes for the name it replaces


def _private_text_rebound_into_a_shared_tuple(self):
    self.token_copy = self.labels[1]  # the tuple is shared as is by every copy


MUTATIONS = {  # how -> (what the step does, the public attribute named, the private one)
    "append": (_append_to_names, "collaborators", "data"),
    "dict": (_into_given_dict, "config", "data"),
    "replace": (_replace_a_name, "collaborators", "data"),
    "replace_equal": (_replace_a_name_with_an_equal_private_object, "collaborators",
                      "same_name"),
    "token_equal": (_replace_a_token_with_an_equal_private_one, "tokens", "token_copy"),
    "deep": (_deep_in_a_given_structure, "nested", "data"),
    "attribute": (_as_an_attribute_of_a_given_object, "holder", "data"),
    "rebound": (_private_rebound_to_a_given_array, "model", "data"),
    "rebound_text": (_private_text_rebound_to_a_given_token, "tokens", "token_copy"),
    "view": (_a_view_of_private_data, "view", "data"),
    "rebound_equal": (_rebind_and_replace_with_an_equal_object, "collaborators", "same_name"),
    "rebound_tuple": (_private_text_rebound_into_a_shared_tuple, "labels", "token_copy"),
}


def _innocent(self):
    self.collaborators.append("someone")  # public changes to given containers are fine
    self.collaborators = list(self.collaborators)
    self.tokens[0] = fedloom.share(self.token_copy)
    self.config["seen"] = float(self.data.sum())
    self.nested["inner"].append(len(self.same_name))
    self.holder.things.append(fedloom.share(self.data))


class MutationFlow(FLSpec):
    """The fan-out gives each collaborator flat and nested containers; in round ``when`` its
    ``touch`` step (or the step after it) does what its private ``how`` says."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.tokens = list(PUBLIC_TOKENS)
        self.config = {"lr": 0.1, "name": "run"}
        self.nested = {"inner": [1, 2]}
        self.holder = Holder()
        self.labels = ("label", LABEL_TOKEN)
        self.model = np.zeros(3)
        self.round = 0
        self.next(self.touch, foreach="collaborators")

    @collaborator
    def touch(self):
        if self.round == self.when and self.where == "first":
            self._mutate()
        self.next(self.then)

    @collaborator
    def then(self):
        if self.round == self.when and self.where == "second":
            self._mutate()
        self.next(self.join)

    def _mutate(self):
        if self.how == "innocent":
            _innocent(self)
        else:
            MUTATIONS[self.how][0](self)

    @aggregator
    def join(self, inputs):
        self.round += 1
        if self.round < 2:
            self.next(self.touch, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def mutation_private(index, how, when=0, where="first"):
    return {"data": np.arange(4.0) + index, "same_name": np.array([NAMES[0]]),
            "token_copy": "".join(["tok/0-", "x" * 12]), "how": how, "when": when,
            "where": where}


def run_mutation(how, backend="single_process", **where):
    collabs = [Collaborator(name=n, private_attributes_callable=mutation_private, index=i,
                            how=how, **where) for i, n in enumerate(NAMES)]
    flow = MutationFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs,
                                backend=backend)
    try:
        flow.run()
    finally:
        flow.runtime.shutdown()
    return flow


@pytest.mark.parametrize("how", sorted(MUTATIONS))
@pytest.mark.parametrize("when", [0, 1], ids=["round 1", "round 2"])
@pytest.mark.parametrize("where", ["first", "second"], ids=["first step", "second step"])
def test_private_object_put_into_what_the_step_was_given_is_refused(how, when, where):
    _, public, private = MUTATIONS[how]
    with pytest.raises(fedloom.PrivateAttributeError,
                       match=rf"'{public}' holds \(or is\) the private attribute '{private}'"):
        run_mutation(how, when=when, where=where)


@pytest.mark.parametrize("how", ["append", "dict", "replace_equal", "rebound_text"])
def test_private_object_put_into_what_the_step_was_given_is_refused_on_ray(how, ray_cluster):
    _, public, private = MUTATIONS[how]
    with pytest.raises(fedloom.PrivateAttributeError,
                       match=rf"'{public}' holds \(or is\) the private attribute '{private}'"):
        run_mutation(how, backend="ray", when=1, where="second")


def test_public_changes_to_given_containers_are_not_mistaken_for_leaks(backend):
    flow = run_mutation("innocent", backend=backend, when=0)
    assert flow.round == 2


class KeepsAList(FLSpec):
    """Each collaborator keeps ``mine`` across rounds (never sent back); in round 2 it puts its
    private data there, and in round 3 it would send it."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        if not hasattr(self, "mine"):
            self.mine = []
        if self.round == 1:
            self.mine.append(self.data)
        self.next(self.join, exclude=["mine"])

    @aggregator
    def join(self, inputs):
        self.round += 1
        if self.round < 3:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_private_object_put_into_what_a_collaborator_kept_is_refused():
    flow = KeepsAList()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=[
        Collaborator(name=n, private_attributes_callable=lambda: {"data": np.ones(3)})
        for n in NAMES])
    with pytest.raises(fedloom.PrivateAttributeError, match="'mine' holds") as info:
        flow.run()
    assert info.value.step == "train"


class AggregatorAppends(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.round += 1
        if self.round == 2:
            self.collaborators.append(self.agg_data)  # its own list, given to every task
        if self.round < 3:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


class AggregatorRebindsToABase(AggregatorAppends):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.view = np.arange(6.0)[2:]  # its base is nowhere else in the state
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @aggregator
    def join(self, inputs):
        self.round += 1
        if self.round == 2:
            self.agg_data = self.view.base  # the private attribute is now the view's data
        if self.round < 3:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)


def test_aggregator_private_object_put_into_its_own_list_is_refused():
    agg = Aggregator()
    agg.private_attributes = {"agg_data": np.ones(3)}
    flow = AggregatorAppends()
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=[Collaborator(name=n)
                                                               for n in NAMES])
    with pytest.raises(fedloom.PrivateAttributeError,
                       match=r"'collaborators' holds .* 'agg_data'") as info:
        flow.run()
    assert info.value.step == "join"


def test_aggregator_private_attribute_rebound_to_the_base_of_a_public_view_is_refused():
    agg = Aggregator()
    agg.private_attributes = {"agg_data": np.ones(3)}
    flow = AggregatorRebindsToABase()
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=[Collaborator(name=n)
                                                               for n in NAMES])
    with pytest.raises(fedloom.PrivateAttributeError, match=r"'view' holds .* 'agg_data'"):
        flow.run()


class SharesAToken(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.settings = ("label", SHARED_TOKEN)  # the very object a collaborator holds privately
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_fan_out_that_gives_a_collaborator_its_own_private_object_is_refused():
    # In one process the fan-out shares immutable values with every copy: the collaborator's
    # copy is its private token, though the step did nothing.
    collabs = [Collaborator(name=n) for n in NAMES]
    collabs[1].private_attributes = {"key": SHARED_TOKEN}
    flow = SharesAToken()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=collabs)
    with pytest.raises(fedloom.PrivateAttributeError,
                       match=r"'settings' holds .* 'key'") as info:
        flow.run()
    assert info.value.participant == NAMES[1]


class RetriedRebinding(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.tokens = list(PUBLIC_TOKENS)
        self.next(self.train, foreach="collaborators")

    @collaborator(retries=1)
    def train(self):
        if not self.failed:
            self.failed = [True]
            self.token_copy = self.tokens[2]  # rebinds a private attribute, then fails
            raise RuntimeError("first attempt fails")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_failed_attempt_that_rebound_a_private_attribute_is_checked_on_retry():
    # The retry gets a copy of what the first attempt was given, sharing its tokens: one of
    # them is now the private 'token_copy'.
    flow = RetriedRebinding()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=[
        Collaborator(name=n, private_attributes_callable=lambda: {"failed": [],
                                                                  "token_copy": "unused-x"})
        for n in NAMES])
    with pytest.raises(fedloom.PrivateAttributeError, match=r"'tokens' holds .* 'token_copy'"):
        flow.run()


class StartsWithIt(FLSpec):
    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators  # the step does nothing to 'model'
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_run_whose_initial_state_holds_a_private_object_is_refused_at_its_first_step():
    secret = np.ones(3)
    agg = Aggregator()
    agg.private_attributes = {"weights": secret}
    flow = StartsWithIt(secret)
    flow.runtime = LocalRuntime(aggregator=agg, collaborators=[Collaborator(name=n)
                                                               for n in NAMES])
    with pytest.raises(fedloom.PrivateAttributeError, match=r"'model' holds .* 'weights'") as info:
        flow.run()
    assert info.value.step == "start"
