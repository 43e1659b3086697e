"""Malformed flows are refused before anything runs, with step, file, line and a fix."""

from __future__ import annotations

import os
from pathlib import Path

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
from fedloom.errors import Problem

pytestmark = pytest.mark.timeout(30)

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]
RAN: list[str] = []
SOURCE = Path(__file__).read_text().splitlines()


def line_of(marker):
    hits = [i + 1 for i, text in enumerate(SOURCE) if text.rstrip().endswith(f"# {marker}")]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def same_file(path):
    return path is not None and os.path.exists(path) and os.path.samefile(path, __file__)


def problems_for(flow_cls, step):
    problems = flow_cls.flow_check()
    assert problems, f"{flow_cls.__name__} was accepted"
    assert all(isinstance(p, Problem) for p in problems)
    return [p for p in problems if p.step == step]


def assert_located(problem, line=None, lines=None):
    assert problem.message and problem.fix
    assert same_file(problem.file), problem.file
    if line is not None:
        assert problem.line == line, (problem.line, line, problem)
    if lines is not None:
        assert problem.line in lines, (problem.line, lines, problem)


# -- a valid flow --------------------------------------------------------------------------------


class GoodFlow(FLSpec):
    @aggregator
    def start(self):
        RAN.append("start")
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators", include=["collaborators"])

    @collaborator
    def train(self):
        self.next(self.join, exclude=["collaborators"])

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_valid_flow_has_no_problems():
    assert GoodFlow.flow_check() == []


# -- each rule -----------------------------------------------------------------------------------


class NoStartFlow(FLSpec):
    @aggregator
    def begin(self):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_missing_start():
    problems = NoStartFlow.flow_check()
    assert any("start" in p.message for p in problems)
    assert all(p.fix for p in problems)


class NoEndFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.finish)

    @aggregator
    def finish(self):
        self.next(self.start)


def test_missing_end():
    problems = NoEndFlow.flow_check()
    assert any("end" in p.message for p in problems)


class UndecoratedFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    def train(self):  # L:undecorated
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_step_without_placement():
    found = problems_for(UndecoratedFlow, "train")
    assert found
    assert_located(found[0], line=line_of("L:undecorated"))
    assert any("@aggregator" in p.fix or "@collaborator" in p.fix for p in found)


class UndecoratedEndFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.end)

    def end(self):
        pass


def test_undecorated_end_is_reported_as_missing_placement():
    problems = UndecoratedEndFlow.flow_check()
    assert any("end" in (p.message + p.fix) and "@aggregator" in p.fix for p in problems)


class UnknownTargetFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.trian, foreach="collaborators")  # L:unknown

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_next_to_an_unknown_step():
    found = problems_for(UnknownTargetFlow, "start")
    assert found
    assert_located(found[0], line=line_of("L:unknown"))
    assert "trian" in found[0].message


class NonStepTargetFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.helper)  # L:nonstep

    def helper(self):
        return 1

    @aggregator
    def end(self):
        pass


def test_next_to_a_method_that_is_not_a_step():
    found = problems_for(NonStepTargetFlow, "start")
    assert found
    assert_located(found[0], line=line_of("L:nonstep"))
    assert "helper" in found[0].message


class NoNextFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator  # L:nonext-decorator
    def train(self):  # L:nonext
        self.x = 1

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_step_without_next():
    found = problems_for(NoNextFlow, "train")
    assert found
    assert_located(found[0], lines={line_of("L:nonext"), line_of("L:nonext-decorator")})


class NestedForeachFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.inner, foreach="collaborators")  # L:nested

    @collaborator
    def inner(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_foreach_from_a_collaborator_step():
    found = problems_for(NestedForeachFlow, "train")
    assert found
    assert_located(found[0], line=line_of("L:nested"))
    assert "foreach" in found[0].message


class NoForeachFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.train)  # L:noforeach

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_aggregator_to_collaborator_without_foreach():
    found = problems_for(NoForeachFlow, "start")
    assert found
    assert_located(found[0], line=line_of("L:noforeach"))
    assert "foreach" in found[0].message + found[0].fix


class JoinWithoutInputsFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator  # L:noinputs-decorator
    def join(self):  # L:noinputs
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_join_without_inputs():
    found = problems_for(JoinWithoutInputsFlow, "join")
    assert found
    assert_located(found[0], lines={line_of("L:noinputs"), line_of("L:noinputs-decorator")})
    assert "inputs" in found[0].message + found[0].fix


class NonJoinWithInputsFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.middle)

    @aggregator  # L:extra-inputs-decorator
    def middle(self, inputs):  # L:extra-inputs
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_non_join_with_inputs():
    found = problems_for(NonJoinWithInputsFlow, "middle")
    assert found
    assert_located(found[0], lines={line_of("L:extra-inputs"),
                                    line_of("L:extra-inputs-decorator")})


class IncludeExcludeFlow(FLSpec):
    @aggregator
    def start(self):
        self.a = 1
        self.next(self.middle, include=["a"], exclude=["b"])  # L:both

    @aggregator
    def middle(self):
        self.next(self.end, include="a")  # L:notlist

    @aggregator
    def end(self):
        pass


def test_include_and_exclude_together():
    found = problems_for(IncludeExcludeFlow, "start")
    assert found
    assert_located(found[0], line=line_of("L:both"))


def test_include_not_a_list_of_names():
    found = problems_for(IncludeExcludeFlow, "middle")
    assert found
    assert_located(found[0], line=line_of("L:notlist"))


class CollaboratorStartEndFlow(FLSpec):
    @collaborator  # L:cstart-decorator
    def start(self):  # L:cstart
        self.next(self.end)

    @collaborator  # L:cend-decorator
    def end(self):  # L:cend
        pass


def test_start_and_end_must_be_on_the_aggregator():
    starts = problems_for(CollaboratorStartEndFlow, "start")
    ends = problems_for(CollaboratorStartEndFlow, "end")
    assert starts and ends
    assert any("aggregator" in p.message + p.fix for p in starts)
    assert any("aggregator" in p.message + p.fix for p in ends)
    assert_located(starts[0], lines={line_of("L:cstart"), line_of("L:cstart-decorator")})
    assert_located(ends[0], lines={line_of("L:cend"), line_of("L:cend-decorator")})


# -- loops that never end ------------------------------------------------------------------------


class EndlessLoopFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.spin)

    @aggregator
    def spin(self):
        self.next(self.spin)

    @aggregator
    def end(self):
        pass


class EndlessCollaboratorLoopFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.spin, foreach="collaborators")

    @collaborator
    def spin(self):
        self.next(self.spin)

    @aggregator
    def end(self):
        pass


@pytest.mark.parametrize("flow_cls", [EndlessLoopFlow, EndlessCollaboratorLoopFlow])
def test_loop_without_exit_is_refused_not_run(flow_cls):
    assert flow_cls.flow_check()
    RAN.clear()
    flow = flow_cls()
    flow.runtime = LocalRuntime(aggregator=Aggregator(),
                                collaborators=[Collaborator(name=n) for n in NAMES])
    with pytest.raises(fedloom.FlowDefinitionError):
        flow.run()


# -- all at once, before anything runs -----------------------------------------------------------


class ManyProblemsFlow(FLSpec):
    @aggregator
    def start(self):
        RAN.append("start")
        self.collaborators = self.runtime.collaborators
        self.next(self.train)  # L:many-noforeach

    @collaborator
    def train(self):
        self.next(self.valdate)  # L:many-unknown

    @aggregator
    def join(self):
        self.next(self.end, include=["a"], exclude=["b"])  # L:many-both

    @aggregator
    def end(self):
        pass


def test_all_problems_reported_at_once_and_nothing_runs():
    RAN.clear()
    flow = ManyProblemsFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(),
                                collaborators=[Collaborator(name=n) for n in NAMES])
    with pytest.raises(fedloom.FlowDefinitionError) as info:
        flow.run()
    assert RAN == []
    err = info.value
    assert isinstance(err.problems, list)
    assert all(isinstance(p, Problem) for p in err.problems)
    lines = {p.line for p in err.problems}
    assert {line_of("L:many-noforeach"), line_of("L:many-unknown"),
            line_of("L:many-both")} <= lines
    assert {"start", "train", "join"} <= {p.step for p in err.problems}
    assert err.problems == ManyProblemsFlow.flow_check()
    text = str(err)
    for p in err.problems:
        assert str(p.line) in text and p.fix in text
    assert os.path.basename(__file__) in text


def test_every_problem_is_located_in_this_file():
    for flow_cls in (UndecoratedFlow, UnknownTargetFlow, NoNextFlow, NestedForeachFlow,
                     NoForeachFlow, JoinWithoutInputsFlow, NonJoinWithInputsFlow,
                     IncludeExcludeFlow, CollaboratorStartEndFlow, ManyProblemsFlow):
        for p in flow_cls.flow_check():
            assert p.step, (flow_cls.__name__, p)
            assert same_file(p.file), (flow_cls.__name__, p)
            assert isinstance(p.line, int) and p.line > 0
            assert p.fix


def test_flow_defined_in_a_function_is_checked():
    def build():
        class LocalBroken(FLSpec):
            @aggregator
            def start(self):
                self.next(self.nowhere)

            @aggregator
            def end(self):
                pass

        return LocalBroken

    problems = build().flow_check()
    assert any(p.step == "start" and "nowhere" in p.message for p in problems)
    assert all(same_file(p.file) for p in problems if p.file)


class CollaboratorWithInputsFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self, inputs):  # L:collab-inputs
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_collaborator_step_with_inputs_is_a_non_join_with_inputs():
    found = problems_for(CollaboratorWithInputsFlow, "train")
    assert found
    assert_located(found[0], lines={line_of("L:collab-inputs"), line_of("L:collab-inputs") - 1})
    assert "inputs" in found[0].message + found[0].fix
