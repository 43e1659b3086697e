"""Malformed flows are refused before anything runs, with step, file, line and a fix."""

from __future__ import annotations

import inspect

import pytest

from fedloom import FlowDefinitionError, FLSpec, aggregator, collaborator
from fedloom.errors import Problem
from tests.conftest import make_runtime


def problems_of(flow_cls: type[FLSpec]) -> list[Problem]:
    return flow_cls.flow_check()


def only_problem(flow_cls: type[FLSpec]) -> Problem:
    found = problems_of(flow_cls)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def line_of(func: object, text: str) -> int:
    """The file line in ``func``'s source that contains ``text``."""
    lines, first = inspect.getsourcelines(func)  # type: ignore[arg-type]
    for offset, line in enumerate(lines):
        if text in line:
            return first + offset
    raise AssertionError(f"{text!r} not in source")


class Good(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
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


def test_valid_flow_has_no_problems():
    assert problems_of(Good) == []
    graph = Good.flow_validate()
    assert list(graph.steps) == ["start", "train", "join", "end"]
    assert graph.is_join("join") and not graph.is_join("end")


def test_missing_start_and_end_reported_together():
    class NoEnds(FLSpec):
        @aggregator
        def middle(self):
            self.next(self.middle)

    messages = [p.message for p in problems_of(NoEnds)]
    assert "the flow has no 'start' step" in messages
    assert "the flow has no 'end' step" in messages


def test_start_and_end_must_be_on_aggregator():
    class CollabStart(FLSpec):
        @collaborator
        def start(self):
            self.next(self.end)

        @collaborator
        def end(self):
            pass

    found = problems_of(CollabStart)
    placed = [p for p in found if "is placed on the collaborator" in p.message]
    assert {p.step for p in placed} == {"start", "end"}
    assert all("@aggregator" in p.fix for p in placed)


def test_next_to_unknown_step_names_file_line_and_suggestion():
    class Typo(FLSpec):
        @aggregator
        def start(self):
            self.next(self.ned)

        @aggregator
        def end(self):
            pass

    problem = only_problem(Typo)
    assert problem.step == "start"
    assert "'ned', which does not exist" in problem.message
    assert "Did you mean 'end'?" in problem.message
    assert problem.file == __file__
    assert problem.line == line_of(Typo.start, "self.next(self.ned)")
    assert f"{__file__}:{problem.line}" in str(problem)


def test_next_to_undecorated_method_is_a_step_without_placement():
    class Undecorated(FLSpec):
        @aggregator
        def start(self):
            self.next(self.helper)

        def helper(self):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    found = problems_of(Undecorated)
    assert any(p.step == "helper" and "has no placement decorator" in p.message for p in found)
    assert any(p.step == "start" and "'helper', which is not a step" in p.message for p in found)


def test_next_to_plain_attribute_is_not_a_step():
    class ToAttribute(FLSpec):
        rounds = 3

        @aggregator
        def start(self):
            self.next(self.rounds)

        @aggregator
        def end(self):
            pass

    problem = only_problem(ToAttribute)
    assert "'rounds', which is not a step" in problem.message


def test_next_needs_a_step_method():
    class NotAStep(FLSpec):
        @aggregator
        def start(self):
            self.next("end")

        @aggregator
        def end(self):
            pass

    problem = only_problem(NotAStep)
    assert "self.next() is given ''end''" in problem.message
    assert "self.next(self.train)" in problem.fix


def test_step_without_next():
    class Stuck(FLSpec):
        @aggregator
        def start(self):
            self.x = 1

        @aggregator
        def end(self):
            pass

    problem = only_problem(Stuck)
    assert problem.step == "start"
    assert "never calls self.next()" in problem.message
    assert problem.line == line_of(Stuck.start, "def start")


def test_end_must_not_call_next():
    class EndGoesOn(FLSpec):
        @aggregator
        def start(self):
            self.next(self.end)

        @aggregator
        def end(self):
            self.next(self.start)

    assert any("'end' calls self.next()" in p.message for p in problems_of(EndGoesOn))


def test_nested_fan_out_from_collaborator():
    class Nested(FLSpec):
        @aggregator
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.next(self.a, foreach="collaborators")

        @collaborator
        def a(self):
            self.next(self.b, foreach="collaborators")

        @collaborator
        def b(self):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    problem = only_problem(Nested)
    assert problem.step == "a" and "nested fan-out" in problem.message
    assert problem.line == line_of(Nested.a, "foreach")


def test_aggregator_to_collaborator_without_foreach():
    class NoForeach(FLSpec):
        @aggregator
        def start(self):
            self.next(self.train)

        @collaborator
        def train(self):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    problem = only_problem(NoForeach)
    assert "without foreach=" in problem.message
    assert "foreach='collaborators'" in problem.fix


def test_foreach_into_aggregator_step():
    class ForeachToAgg(FLSpec):
        @aggregator
        def start(self):
            self.collaborators = []
            self.next(self.end, foreach="collaborators")

        @aggregator
        def end(self):
            pass

    assert "runs on the aggregator" in only_problem(ForeachToAgg).message


def test_foreach_must_name_an_attribute():
    class ForeachList(FLSpec):
        @aggregator
        def start(self):
            self.next(self.train, foreach=["a", "b"])

        @collaborator
        def train(self):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    assert "is not the name of an attribute" in only_problem(ForeachList).message


def test_join_without_inputs_and_non_join_with_inputs():
    class BadJoins(FLSpec):
        @aggregator
        def start(self, inputs):
            self.collaborators = self.runtime.collaborators
            self.next(self.train, foreach="collaborators")

        @collaborator
        def train(self):
            self.next(self.join)

        @aggregator
        def join(self):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    found = {p.step: p for p in problems_of(BadJoins)}
    assert "a join) but has no 'inputs'" in found["join"].message
    assert "def join(self, inputs):" in found["join"].fix
    assert "takes 'inputs' but is not a join" in found["start"].message


def test_collaborator_step_with_inputs_and_extra_parameters():
    class BadParams(FLSpec):
        @aggregator
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.next(self.train, foreach="collaborators")

        @collaborator
        def train(self, inputs, lr):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    messages = [p.message for p in problems_of(BadParams)]
    assert any("unexpected parameters ['lr']" in m for m in messages)
    assert any("a collaborator step takes 'inputs'" in m for m in messages)


def test_include_and_exclude_together_and_not_lists():
    class BadFilters(FLSpec):
        @aggregator
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.next(self.train, foreach="collaborators", include=["a"], exclude=["b"])

        @collaborator
        def train(self):
            self.next(self.join, include="model")

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    found = problems_of(BadFilters)
    assert any(p.step == "start" and "both include= and exclude=" in p.message for p in found)
    assert any(p.step == "train" and "include='model' is not a list" in p.message
               for p in found)


def test_unexpected_next_arguments():
    class ExtraArgs(FLSpec):
        @aggregator
        def start(self):
            self.next(self.end, "x", forach="collaborators")

        @aggregator
        def end(self):
            pass

    messages = [p.message for p in problems_of(ExtraArgs)]
    assert any("unexpected argument ''x''" in m for m in messages)
    assert any("unexpected argument 'forach='" in m for m in messages)


def test_step_that_can_never_reach_end_is_refused():
    class Forever(FLSpec):
        @aggregator
        def start(self):
            self.next(self.spin)

        @aggregator
        def spin(self):
            self.next(self.spin)

        @aggregator
        def end(self):
            pass

    problem = only_problem(Forever)
    assert problem.step == "spin" and "would run forever" in problem.message


def test_all_problems_reported_at_once_before_anything_runs():
    ran = []

    class ManyProblems(FLSpec):
        @aggregator
        def start(self):
            ran.append("start")
            self.next(self.trian)

        @collaborator
        def train(self):
            ran.append("train")

        def helper(self):
            self.next(self.end)

    flow = ManyProblems()
    flow.runtime = make_runtime()
    with pytest.raises(FlowDefinitionError) as info:
        flow.run()
    err = info.value
    assert len(err.problems) >= 4
    text = str(err)
    assert text.startswith(f"ManyProblems is not a valid flow ({len(err.problems)} problems)")
    for expected in ("no 'end' step", "'trian', which does not exist", "never calls self.next",
                     "has no placement decorator"):
        assert expected in text
    assert ran == []


def test_inherited_steps_are_part_of_the_graph():
    class Base(FLSpec):
        @aggregator
        def start(self):
            self.next(self.end)

    class Child(Base):
        @aggregator
        def end(self):
            self.done = True

    assert problems_of(Child) == []
    flow = Child()
    flow.runtime = make_runtime()
    flow.run()
    assert flow.done is True


def test_decorators_with_arguments_and_markers():
    class WithResources(FLSpec):
        @aggregator(num_cpus=1)
        def start(self):
            self.collaborators = self.runtime.collaborators
            self.next(self.train, foreach="collaborators")

        @collaborator(num_gpus=0.5)
        def train(self):
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    assert problems_of(WithResources) == []
    assert WithResources.train.collaborator_step and not WithResources.train.aggregator_step
    assert WithResources.start.aggregator_step and not WithResources.start.collaborator_step
    placement = WithResources.flow_graph().steps["train"].placement
    assert placement is not None and placement.resources == {"num_gpus": 0.5}


def test_step_names_that_flspec_uses_are_refused():
    class Reserved(FLSpec):
        @aggregator
        def start(self):
            self.next(self.run)

        @aggregator
        def run(self):
            self.next(self.end)

        @aggregator
        def end(self):
            pass

    problem = problems_of(Reserved)[0]
    assert problem.step == "run" and "FLSpec uses that name" in problem.message
