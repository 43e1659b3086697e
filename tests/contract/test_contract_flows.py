"""Running flows on the single-process LocalRuntime: fan-out, joins, loops, branches, state."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import (
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
    fedavg,
)

pytestmark = pytest.mark.timeout(60)

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]


def make_runtime(names=NAMES, agg_name="aggregator"):
    return LocalRuntime(aggregator=Aggregator(name=agg_name),
                        collaborators=[Collaborator(name=n) for n in names],
                        backend="single_process")


def run(flow, names=NAMES):
    flow.runtime = make_runtime(names)
    flow.run()
    return flow


# -- rounds of FedAvg ----------------------------------------------------------------------------


class RoundsFlow(FLSpec):
    def __init__(self, rounds=2, **kwargs):
        super().__init__(**kwargs)
        self.rounds = rounds
        self.w = np.zeros(2)

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.agg_only = "kept by the aggregator"
        self.join_self_w = []
        self.history = []
        self.next(self.train, foreach="collaborators", exclude=["agg_only"])

    @collaborator
    def train(self):
        assert not hasattr(self, "agg_only"), "excluded attribute reached a collaborator"
        idx = self.runtime.collaborators.index(self.input)
        self.w = self.w + (idx + 1)
        self.seen_input = self.input
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.join_self_w.append(self.w.tolist())
        self.history.append([i.seen_input for i in inputs])
        self.w = fedavg([i.w for i in inputs])
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators", exclude=["agg_only"])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        self.finished = True


def test_rounds_final_state_is_on_the_users_flow_object():
    flow = run(RoundsFlow(rounds=2))
    np.testing.assert_allclose(flow.w, [4.0, 4.0])  # +mean(1,2,3) per round
    assert flow.round == 2
    assert flow.finished is True
    assert flow.history == [NAMES, NAMES]


def test_aggregator_keeps_its_own_state_across_fan_out():
    flow = run(RoundsFlow(rounds=2))
    # excluded from what was sent, still on the aggregator afterwards
    assert flow.agg_only == "kept by the aggregator"
    # at the join, self is the aggregator's pre-fan-out state, not a collaborator's
    assert flow.join_self_w == [[0.0, 0.0], [2.0, 2.0]]
    assert not hasattr(flow, "seen_input")
    assert not hasattr(flow, "input")


def test_run_can_be_called_again_with_a_new_run_id():
    flow = RoundsFlow(rounds=1)
    flow.runtime = make_runtime()
    flow.run()
    first_id = flow._run_id
    assert first_id
    np.testing.assert_allclose(flow.w, [2.0, 2.0])
    flow.run()  # starts from the final state of the first run
    assert flow._run_id and flow._run_id != first_id
    np.testing.assert_allclose(flow.w, [4.0, 4.0])
    assert flow.round == 1


# -- foreach subsets, order, inputs --------------------------------------------------------------


class SubsetFlow(FLSpec):
    @aggregator
    def start(self):
        names = self.runtime.collaborators
        self.chosen = [names[2], names[0]]
        self.next(self.work, foreach="chosen")

    @collaborator
    def work(self):
        self.me = self.input
        self.loss = len(self.input)
        self.next(self.join, include=["me"])

    @aggregator
    def join(self, inputs):
        self.order = [i.me for i in inputs]
        self.all_instances = all(isinstance(i, SubsetFlow) for i in inputs)
        self.inputs_have_loss = [hasattr(i, "loss") for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_foreach_over_a_subset_in_list_order():
    flow = run(SubsetFlow())
    assert flow.order == [NAMES[2], NAMES[0]]
    assert flow.all_instances is True


def test_join_inputs_hold_only_what_was_sent():
    flow = run(SubsetFlow())
    assert flow.inputs_have_loss == [False, False]


EXOTIC = ["Zürich/HQ", "a b.c", "x'y\"z", "名字-1", "intel@lab_5"]


def test_collaborator_names_with_any_characters():
    flow = run(SubsetFlow(), EXOTIC)
    assert flow.order == [EXOTIC[2], EXOTIC[0]]


# -- consecutive collaborator steps and the runtime view -----------------------------------------


class ChainFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.views = [self._view()]
        self.next(self.first, foreach="collaborators")

    def _view(self):
        rt = self.runtime
        return (list(rt.collaborators), hasattr(rt, "_collaborators"), hasattr(rt, "_aggregator"))

    @collaborator
    def first(self):
        self.first_by = self.input
        self.collab_view = self._view()
        self.next(self.second)

    @collaborator
    def second(self):
        self.second_by = self.input
        self.same_site = self.first_by == self.input
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.chain = [(i.first_by, i.second_by, i.same_site) for i in inputs]
        self.collab_views = [i.collab_view for i in inputs]
        self.views.append(self._view())
        self.next(self.end)

    @aggregator
    def end(self):
        self.views.append(self._view())


def test_consecutive_collaborator_steps_run_on_the_same_collaborator():
    flow = run(ChainFlow())
    assert flow.chain == [(n, n, True) for n in NAMES]


def test_runtime_view_in_every_step():
    flow = run(ChainFlow())
    expected = (NAMES, False, False)
    assert flow.views == [expected, expected, expected]
    assert flow.collab_views == [expected] * 3


# -- conditional branches ------------------------------------------------------------------------


class BranchFlow(FLSpec):
    def __init__(self, federated=True, **kwargs):
        super().__init__(**kwargs)
        self.federated = federated

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.path = ["start"]
        if self.federated:
            self.next(self.local, foreach="collaborators")
        else:
            self.next(self.central)

    @aggregator
    def central(self):
        self.path.append("central")
        self.next(self.end)

    @collaborator
    def local(self):
        if self.input.startswith("New"):
            self.next(self.local_extra)
        else:
            self.next(self.local_plain)

    @collaborator
    def local_extra(self):
        self.kind = "extra"
        self.next(self.join)

    @collaborator
    def local_plain(self):
        self.kind = "plain"
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.path.append("join")
        self.kinds = [i.kind for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        self.path.append("end")


def test_conditional_branch_on_the_aggregator():
    assert run(BranchFlow(federated=False)).path == ["start", "central", "end"]
    flow = run(BranchFlow(federated=True))
    assert flow.path == ["start", "join", "end"]


def test_collaborators_may_branch_and_meet_at_the_same_join():
    # Reading chosen: "different next steps" is an error only when collaborators reach
    # different aggregator steps; per-site branches that meet at one join are ordinary.
    flow = run(BranchFlow(federated=True))
    assert flow.kinds == ["extra" if n.startswith("New") else "plain" for n in NAMES]


# -- loops ---------------------------------------------------------------------------------------


class LoopToStartFlow(FLSpec):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.starts = 0
        self.visits = []

    @aggregator
    def start(self):
        self.starts += 1
        self.collaborators = self.runtime.collaborators[: self.starts]
        self.next(self.visit, foreach="collaborators")

    @collaborator
    def visit(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.visits.append([i.input for i in inputs])
        if self.starts < 3:
            self.next(self.start)
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_loop_back_to_start():
    flow = run(LoopToStartFlow())
    assert flow.starts == 3
    assert flow.visits == [NAMES[:1], NAMES[:2], NAMES[:3]]


class LoopToMiddleFlow(FLSpec):
    @aggregator
    def start(self):
        self.trace = ["start"]
        self.round = 0
        self.next(self.prepare)

    @aggregator
    def prepare(self):
        self.trace.append("prepare")
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.trace.append("join")
        self.round += 1
        if self.round < 2:
            self.next(self.prepare)
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        self.trace.append("end")


def test_loop_back_to_an_earlier_aggregator_step():
    flow = run(LoopToMiddleFlow())
    assert flow.trace == ["start", "prepare", "join", "prepare", "join", "end"]


class EndIsJoinFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.v = len(self.input)
        self.next(self.end)

    @aggregator
    def end(self, inputs):
        self.total = sum(i.v for i in inputs)


def test_end_can_be_the_join():
    assert EndIsJoinFlow.flow_check() == []
    flow = run(EndIsJoinFlow())
    assert flow.total == sum(len(n) for n in NAMES)


# -- isolation -----------------------------------------------------------------------------------


class Box:
    def __init__(self):
        self.items = []

    def __hash__(self):
        return id(self)


class IsolationFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.arr = np.zeros(3)
        self.nested = {"list": [1, 2], "inner": {"a": np.zeros(2)}}
        self.objs = [Box()]
        self.pair = ([0], [0])
        self.next(self.mutate, foreach="collaborators")

    @collaborator
    def mutate(self):
        i = self.runtime.collaborators.index(self.input)
        self.arr += i + 1
        self.nested["list"].append(i)
        self.nested["inner"]["a"] += i + 1
        self.objs[0].items.append(i)
        self.pair[0].append(i)
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.per = [(float(i.arr[0]), list(i.nested["list"]), float(i.nested["inner"]["a"][0]),
                     list(i.objs[0].items), list(i.pair[0])) for i in inputs]
        shared = []
        for a in range(len(inputs)):
            for b in range(a + 1, len(inputs)):
                x, y = inputs[a], inputs[b]
                for name in ("arr", "nested", "objs", "pair"):
                    if getattr(x, name) is getattr(y, name):
                        shared.append(name)
                if x.objs[0] is y.objs[0] or x.pair[0] is y.pair[0]:
                    shared.append("inner")
        self.shared = shared
        self.agg_view = (self.arr.tolist(), list(self.nested["list"]),
                         self.nested["inner"]["a"].tolist(), list(self.objs[0].items),
                         list(self.pair[0]))
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_each_collaborator_works_on_its_own_copy():
    flow = run(IsolationFlow())
    assert flow.per == [(i + 1.0, [1, 2, i], i + 1.0, [i], [0, i]) for i in range(3)]
    assert flow.shared == []


def test_collaborator_changes_do_not_reach_the_aggregators_own_state():
    flow = run(IsolationFlow())
    assert flow.agg_view == ([0.0, 0.0, 0.0], [1, 2], [0.0, 0.0], [], [0])


class FrozenBoxFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.tags = frozenset([Box()])
        self.next(self.mutate, foreach="collaborators")

    @collaborator
    def mutate(self):
        next(iter(self.tags)).items.append(self.input)
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen = [list(next(iter(i.tags)).items) for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_no_shared_mutable_object_inside_a_frozenset():
    flow = run(FrozenBoxFlow())
    assert flow.seen == [[n] for n in NAMES]


class KeepFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.log = []
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.observed = (getattr(self, "local_memo", None), hasattr(self, "sent_back"))
        self.local_memo = f"{self.input}-r{self.round}"
        self.sent_back = self.round
        self.next(self.join, exclude=["local_memo"])

    @aggregator
    def join(self, inputs):
        self.log.append([i.observed for i in inputs])
        self.memo_reached_aggregator = any(hasattr(i, "local_memo") for i in inputs)
        self.round += 1
        if self.round < 2:
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_collaborator_keeps_what_it_did_not_send_back_across_rounds():
    flow = run(KeepFlow())
    assert flow.log[0] == [(None, False)] * 3
    # round 2: it still has its unsent memo; what it sent back moved to the aggregator
    assert flow.log[1] == [(f"{n}-r0", False) for n in NAMES]
    assert flow.memo_reached_aggregator is False


class AliasFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.round == 0:
            self.mine = np.zeros(2)
            self.out = self.mine  # sends an object it also keeps
            self.next(self.join, include=["out"])
        else:
            self.mine_seen = self.mine.tolist()
            self.next(self.join, include=["mine_seen"])

    @aggregator
    def join(self, inputs):
        if self.round == 0:
            for i in inputs:
                i.out += 100  # the aggregator works on what it received
        else:
            self.seen = [i.mine_seen for i in inputs]
        self.round += 1
        if self.round < 2:
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_aggregator_changes_to_inputs_never_reach_a_collaborators_kept_state():
    flow = run(AliasFlow())
    assert flow.seen == [[0.0, 0.0]] * 3


# -- state after a failed run --------------------------------------------------------------------


class FailLaterFlow(FLSpec):
    def __init__(self, fail_in="work", **kwargs):
        super().__init__(**kwargs)
        self.fail_in = fail_in
        self.w = np.zeros(2)

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.marker = "start done"
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.fail_in == "work" and self.input == "New York":
            raise RuntimeError("collaborator failure")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.w += 5  # in-place change, then the step fails
        self.partial = True
        if self.fail_in == "join":
            raise RuntimeError("join failure")
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_failed_run_leaves_last_completed_aggregator_state_collaborator_failure():
    flow = FailLaterFlow(fail_in="work")
    flow.runtime = make_runtime()
    with pytest.raises(Exception, match="collaborator failure"):
        flow.run()
    assert flow.marker == "start done"
    assert flow.collaborators == NAMES
    np.testing.assert_allclose(flow.w, [0.0, 0.0])
    assert flow._run_id


def test_failed_run_keeps_the_state_as_the_failing_aggregator_step_left_it():
    # Decided semantics: no hidden deep copy per aggregator step; the flow shows where the run
    # stopped (exact per-task states are what checkpoint=True records).
    flow = FailLaterFlow(fail_in="join")
    flow.runtime = make_runtime()
    with pytest.raises(Exception, match="join failure"):
        flow.run()
    assert flow.marker == "start done"
    assert flow.partial is True
    np.testing.assert_allclose(flow.w, [5.0, 5.0])


# -- include on a fan-out, foreach from __init__, deletions, flows built in functions ------------


class IncludeFanOutFlow(FLSpec):
    def __init__(self, sites, **kwargs):
        super().__init__(**kwargs)
        self.sites = sites
        self.temp = "to be deleted"

    @aggregator
    def start(self):
        self.a = np.ones(1)
        self.b = "aggregator only"
        del self.temp
        self.next(self.work, foreach="sites", include=["a", "sites"])

    @collaborator
    def work(self):
        self.visible = sorted(k for k in vars(self) if not k.startswith("_"))
        self.next(self.join, include=["visible"])

    @aggregator
    def join(self, inputs):
        self.visible = [i.visible for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_include_on_a_fan_out_is_a_whitelist_and_foreach_may_come_from_init():
    flow = run(IncludeFanOutFlow(sites=["New York"]))
    assert flow.visible == [["a", "input", "sites"]]
    assert flow.b == "aggregator only"
    assert not hasattr(flow, "temp")  # deleted during the run: gone from the final state


def test_flow_defined_inside_a_function_runs():
    offset = 7

    class Inner(FLSpec):
        @aggregator
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.next(self.work, foreach="collaborators")

        @collaborator
        def work(self):
            self.v = len(self.input) + offset
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.vs = [i.v for i in inputs]
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    flow = run(Inner())
    assert flow.vs == [len(n) + offset for n in NAMES]


# -- more isolation and persistence --------------------------------------------------------------


class NestedAliasFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.round == 0:
            self.mine = np.zeros(2)
            self.report = {"weights": self.mine, "history": [self.mine]}  # nested alias
            self.next(self.join, include=["report"])
        else:
            self.mine_seen = self.mine.tolist()
            self.next(self.join, include=["mine_seen"])

    @aggregator
    def join(self, inputs):
        if self.round == 0:
            for i in inputs:
                i.report["weights"] += 100  # the aggregator works on what it received
        else:
            self.seen = [i.mine_seen for i in inputs]
        self.round += 1
        if self.round < 2:
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_aggregator_changes_never_reach_a_collaborators_kept_state_through_nesting():
    flow = run(NestedAliasFlow())
    assert flow.seen == [[0.0, 0.0]] * 3


class SkippedRoundFlow(FLSpec):
    @aggregator
    def start(self):
        self.round = 0
        self.log = []
        self.plan = [NAMES, NAMES[:1], NAMES]
        self.collaborators = self.plan[0]
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        self.observed = getattr(self, "memo", None)
        self.memo = f"{self.input}@{self.round}"
        self.next(self.join, exclude=["memo"])

    @aggregator
    def join(self, inputs):
        self.log.append({i.input: i.observed for i in inputs})
        self.round += 1
        if self.round < len(self.plan):
            self.collaborators = self.plan[self.round]
            self.next(self.work, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_collaborator_state_survives_a_round_it_sits_out():
    flow = run(SkippedRoundFlow())
    assert flow.log[1] == {NAMES[0]: f"{NAMES[0]}@0"}
    assert flow.log[2] == {NAMES[0]: f"{NAMES[0]}@1", NAMES[1]: f"{NAMES[1]}@0",
                           NAMES[2]: f"{NAMES[2]}@0"}


# -- ordinary step names -------------------------------------------------------------------------


class ValidateStepFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.validate, foreach="collaborators")

    @collaborator
    def validate(self):  # a very common step name in FL flows
        self.score = len(self.input)
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.total = sum(i.score for i in inputs)
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_step_named_validate_runs():
    flow = run(ValidateStepFlow())
    assert flow.total == sum(len(n) for n in NAMES)
