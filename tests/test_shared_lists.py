"""Issue #12: the serial backend hands one copy of a fan-out's flat lists (``self.collaborators``)
to all of its chains in turn, instead of one copy each. No flow may tell: whatever a chain or a
join does to its list (change it, keep it somewhere, fail halfway), every other chain and every
other join input sees its own list, equal to what the aggregator sent."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from fedloom import FLSpec, StragglerPolicy, aggregator, collaborator
from tests.conftest import make_runtime

NAMES = ["a", "b", "c", "d"]
KEPT: dict[str, list[Any]] = {}  # where a step keeps a reference, out of the flow's sight


class Rounds(FLSpec):
    """Two rounds; in each, collaborator steps do ``how`` to their list and record what they
    saw; the join records each input's list (and does ``join_how`` to them)."""

    def __init__(self, how: str = "", join_how: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.how, self.join_how = how, join_how
        self.seen: list[tuple[int, str, list[str], int]] = []
        self.joined: list[list[tuple[str, list[str]]]] = []

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        # What it was given (a copy of the list, its id) before changing anything.
        self.saw = (self.round, self.input, list(self.collaborators), id(self.collaborators))
        mine = self.input in ("b", "c")  # chains in the middle: before and after them too
        if self.how == "append" and mine:
            self.collaborators.append(self.input)
        elif self.how == "keep" and mine:
            KEPT[f"{self.round}-{self.input}"] = self.collaborators
        elif self.how == "keep-then-change" and mine:
            if self.round == 0:
                KEPT[self.input] = self.collaborators
            else:
                KEPT[self.input].append("late")  # last round's list, after its join
        elif self.how == "nest" and mine:
            self.box = {"names": self.collaborators}
        elif self.how == "alias":
            self.names = self.collaborators
        elif self.how == "fail" and self.input == "b":
            self.collaborators.append("half-done")
            raise RuntimeError("failed after changing its list")
        elif self.how == "hold back":
            self.next(self.join, exclude=["collaborators"])
            return
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen.extend(i.saw for i in inputs)
        if self.join_how == "append":
            inputs[0].collaborators.append("joined")
        elif self.join_how == "delete":
            del inputs[0].collaborators
            assert not hasattr(inputs[0], "collaborators")
        self.joined.append([(i.input, list(getattr(i, "collaborators", ["<none>"])))
                            for i in inputs])
        if self.how == "alias":
            assert all(i.names is i.collaborators for i in inputs)
        self.round += 1
        if self.round < 2:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


@pytest.fixture(autouse=True, params=["no private data", "private data"])
def private_data(request: pytest.FixtureRequest) -> bool:
    """Each test twice: the leak check looks at the lists only where there is something
    private to look for (and then the backend uses what it found)."""
    PRIVATE[0] = request.param == "private data"
    return PRIVATE[0]


PRIVATE = [False]


def run(how: str = "", join_how: str = "", **options: Any) -> Rounds:
    KEPT.clear()
    flow = Rounds(how, join_how)
    data = (lambda i, n: {"data": np.full(3, float(i))}) if PRIVATE[0] else None
    flow.runtime = make_runtime(NAMES, collab_private=data, **options)
    flow.run()
    return flow


def given_lists(flow: Rounds) -> list[list[str]]:
    return [names for _, _, names, _ in flow.seen]


def test_chains_that_leave_the_list_alone_share_one_copy():
    flow = run()
    assert given_lists(flow) == [NAMES] * 8
    ids = [ident for _, _, _, ident in flow.seen]
    assert len(set(ids[:4])) == 1, "one list for the round's chains (issue #12: no N copies)"
    assert flow.collaborators == NAMES
    assert flow.joined == [[(n, NAMES) for n in NAMES]] * 2


def test_a_chain_that_changes_its_list_changes_no_other():
    flow = run("append")
    assert given_lists(flow) == [NAMES] * 8  # the chains after 'b' and 'c' got the original
    expected = [(n, [*NAMES, n] if n in ("b", "c") else NAMES) for n in NAMES]
    assert flow.joined == [expected] * 2
    assert flow.collaborators == NAMES


@pytest.mark.parametrize("how", ["keep", "nest"])
def test_a_chain_that_keeps_its_list_elsewhere_owns_it(how):
    flow = run(how)
    assert given_lists(flow) == [NAMES] * 8
    if how == "keep":  # each kept list is that chain's alone
        assert len({id(names) for names in KEPT.values()}) == len(KEPT) == 4
        KEPT["0-b"].append("later")
        assert KEPT["0-c"] == NAMES
    assert flow.joined == [[(n, NAMES) for n in NAMES]] * 2


def test_a_list_kept_and_changed_a_round_later_reaches_nobody():
    flow = run("keep-then-change")
    assert given_lists(flow) == [NAMES] * 8
    assert flow.joined == [[(n, NAMES) for n in NAMES]] * 2
    assert KEPT["b"] == [*NAMES, "late"] and KEPT["c"] == [*NAMES, "late"]
    assert KEPT["b"] is not KEPT["c"]


def test_two_names_for_the_list_stay_one_object():
    flow = run("alias")  # the join asserts it
    assert flow.joined == [[(n, NAMES) for n in NAMES]] * 2


def test_a_list_held_back_by_exclude_stays_with_its_collaborator():
    flow = run("hold back")
    assert given_lists(flow) == [NAMES] * 8
    assert flow.joined == [[(n, ["<none>"]) for n in NAMES]] * 2


def test_a_join_that_changes_one_input_s_list_changes_no_other():
    flow = run(join_how="append")
    first = [("a", [*NAMES, "joined"])] + [(n, NAMES) for n in NAMES[1:]]
    assert flow.joined == [first] * 2
    assert given_lists(flow) == [NAMES] * 8
    assert flow.collaborators == NAMES


def test_a_join_can_delete_an_input_s_list():
    flow = run(join_how="delete")
    assert flow.joined == [[("a", ["<none>"])] + [(n, NAMES) for n in NAMES[1:]]] * 2


def test_a_chain_that_fails_halfway_leaves_the_others_the_original():
    flow = run("fail", straggler_policy=StragglerPolicy(min_collaborators=3))
    assert given_lists(flow) == [NAMES] * 6  # 'b' failed in both rounds
    assert flow.joined == [[(n, NAMES) for n in NAMES if n != "b"]] * 2


class Retried(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator(retries=1)
    def train(self):
        self.saw = list(self.collaborators)
        self.collaborators.append("attempt")
        if self.input == "b" and self.flaky.pop():
            raise RuntimeError("first attempt fails")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen = [i.saw for i in inputs]
        self.lists = [i.collaborators for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_a_retried_step_and_the_chains_after_it_see_the_original():
    flow = Retried()
    flow.runtime = make_runtime(NAMES, collab_private=lambda i, n: {"flaky": [False, True]})
    flow.run()
    assert flow.seen == [NAMES] * 4
    assert flow.lists == [[*NAMES, "attempt"]] * 4


def test_only_flat_lists_of_text_and_numbers_are_shared():
    from fedloom.state import StateCopier

    names = ["x", "y"]
    state = {"names": names, "mixed": [1, "a", 2.0, None], "alias": names,
             "pairs": [(1, 2)], "table": {"a": 1}, "model": np.zeros(2), "own": [True, b"raw"]}
    assert StateCopier(state).lists_to_share() == ["mixed", "own"]
    # Anything deep-copied (here a list of lists) may hold one of them: its copy would then
    # hold a copy, no longer the same list as the attribute.
    assert StateCopier({**state, "nested": [["x"]]}).lists_to_share() == []


class OneRound(FLSpec):
    """One fan-out to every collaborator and its join: the flows below change only the steps
    they test (``prepare``: what start adds to the state before the fan-out)."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.prepare()
        self.next(self.train, foreach="collaborators")

    def prepare(self) -> None:
        pass

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen = [(i.saw, list(i.collaborators)) for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class OneList(OneRound):
    """Only ``collaborators`` is shared (the usual case: one table for every join input)."""

    @aggregator
    def join(self, inputs):
        a, b, c, d = inputs
        a.collaborators.append("joined")
        assert "collaborators" in vars(a)  # an attribute like any other once read
        c.collaborators = ["set"]
        del c.collaborators
        del d.collaborators
        self.after = [list(getattr(i, "collaborators", ["<none>"])) for i in inputs]
        self.distinct = len({id(a.collaborators), id(b.collaborators)})
        self.next(self.end)


def test_join_inputs_read_set_and_delete_their_lists_independently():
    flow = OneList()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    assert flow.after == [[*NAMES, "joined"], NAMES, ["<none>"], ["<none>"]]
    assert flow.distinct == 2


class Name(str):
    """A name that compares equal to the plain one it replaces."""


class Stand_ins(OneRound):
    """Chains put equal stand-ins into their lists: 1.0 or False for 0 and 1, a str subclass
    for a name. Equal is not the same: the others must not receive them."""

    def prepare(self) -> None:
        self.weights = [1, 0, 3]

    @collaborator
    def train(self):
        self.saw = (repr(self.weights), [type(n).__name__ for n in self.collaborators])
        if self.input == "a":
            self.collaborators[1] = Name(self.collaborators[1])
        elif self.input == "b":
            self.weights[:] = [float(w) for w in self.weights]  # "normalised" in place
        elif self.input == "c":
            self.weights[1] = False
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen = [i.saw for i in inputs]
        self.sent = [(repr(i.weights), type(i.collaborators[1]).__name__) for i in inputs]
        self.next(self.end)


def test_an_equal_stand_in_put_in_a_list_reaches_no_other_chain():
    flow = Stand_ins()
    data = (lambda i, n: {"data": np.full(3, float(i))}) if PRIVATE[0] else None
    flow.runtime = make_runtime(NAMES, collab_private=data)
    flow.run()
    assert flow.seen == [("[1, 0, 3]", ["str"] * 4)] * 4
    assert flow.sent == [("[1, 0, 3]", "Name"), ("[1.0, 0.0, 3.0]", "str"),
                         ("[1, False, 3]", "str"), ("[1, 0, 3]", "str")]


class Nested(OneRound):
    """The list is also inside a value that is deep-copied: the two must stay one list."""

    def prepare(self) -> None:
        self.meta = {"names": self.collaborators}

    @collaborator
    def train(self):
        self.same = self.meta["names"] is self.collaborators
        self.collaborators.append(self.input)
        self.via_meta = list(self.meta["names"])
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.seen = [(i.same, i.via_meta) for i in inputs]
        self.next(self.end)


def test_a_list_also_held_inside_a_deep_copied_value_stays_one_list():
    flow = Nested()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    assert flow.seen == [(True, [*NAMES, name]) for name in NAMES]


class CopiedInput(OneRound):
    @aggregator
    def join(self, inputs):
        import copy

        twin = copy.copy(inputs[0])
        twin.collaborators.append("via the copy")
        self.same = twin.collaborators is inputs[0].collaborators
        self.first, self.second = list(inputs[0].collaborators), list(inputs[1].collaborators)
        self.next(self.end)


def test_a_shallow_copy_of_a_join_input_holds_the_same_list():
    flow = CopiedInput()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    assert flow.same
    assert flow.first == [*NAMES, "via the copy"]
    assert flow.second == NAMES


class Defaults(OneRound):
    """Lists under names the class also has: a class default, FLSpec's own ``metrics``."""

    scores: list[float] = []

    def prepare(self) -> None:
        self.scores, self.metrics = [0.5, 0.7], ["acc"]

    @aggregator
    def join(self, inputs):
        self.seen = [(i.scores, i.metrics, i.collaborators) for i in inputs]
        self.next(self.end)


class OwnLookup(Defaults):
    def __getattr__(self, name):
        return None


@pytest.mark.parametrize("flow_cls", [Defaults, OwnLookup])
def test_join_inputs_read_lists_whose_names_the_class_also_has(flow_cls):
    flow = flow_cls()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    assert flow.seen == [([0.5, 0.7], ["acc"], NAMES)] * len(NAMES)


class Finalized:
    """Garbage (a cycle) that changes its chain's list when it is collected, later."""

    def __init__(self, flow: FLSpec) -> None:
        self.flow, self.me = flow, self

    def __del__(self) -> None:
        self.flow.collaborators.append(f"late-{self.flow.input}")


class LateChange(OneRound):
    @collaborator
    def train(self):
        import gc

        if self.input == "a":
            Finalized(self)
        else:
            gc.collect()  # as many do before freeing a GPU's cache
        self.saw = list(self.collaborators)
        self.next(self.join)


def test_a_change_made_after_a_chain_ended_stays_in_that_chain():
    flow = LateChange()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    assert flow.seen == [(NAMES, [*NAMES, "late-a"])] + [(NAMES, NAMES)] * 3


HOOKS: list[FLSpec] = []


class Hooks(OneRound):
    """Chains that keep their flow instance in a global, where a later chain changes its list;
    and a chain that changes the aggregator's own list, reached through a global."""

    def prepare(self) -> None:
        KEPT["aggregator"] = self.collaborators

    @collaborator
    def train(self):
        if self.input == "c":
            for earlier in HOOKS:
                earlier.collaborators.append("from c")
        elif self.input == "d":
            KEPT["aggregator"].append("from d")
        HOOKS.append(self)
        self.saw = list(self.collaborators)
        self.next(self.join)


def test_chains_that_reach_each_other_through_globals_see_their_own_lists():
    HOOKS.clear()
    flow = Hooks()
    flow.runtime = make_runtime(NAMES)
    flow.run()
    HOOKS.clear()
    assert flow.seen == [(NAMES, [*NAMES, "from c"])] * 2 + [(NAMES, NAMES)] * 2


def _append_after_the_check(frame, event, arg):
    # Reaches into the runtime's own frame, as a debugger could (the third review's case).
    if event == "return" and frame.f_code.co_name == "holds_as_handed_out" and arg is True:
        sys.settrace(None)
        frame.f_locals["shared"].append("traced")
    return _append_after_the_check


class Traced(LateChange):
    @collaborator
    def train(self):
        if self.input == "a":
            sys.settrace(_append_after_the_check)
        self.saw = list(self.collaborators)
        self.next(self.join)


def test_a_trace_hook_set_by_a_step_turns_sharing_off():
    flow = Traced()
    flow.runtime = make_runtime(NAMES)
    try:
        flow.run()
    finally:
        sys.settrace(None)
    assert [saw for saw, _ in flow.seen] == [NAMES] * 4


def test_a_library_s_gc_callback_leaves_sharing_on():
    import gc

    def timing(phase: str, info: dict[str, int]) -> None:  # as metrics libraries register
        pass

    gc.callbacks.append(timing)
    try:
        flow = run()
    finally:
        gc.callbacks.remove(timing)
    assert len({ident for _, _, _, ident in flow.seen[:4]}) == 1
