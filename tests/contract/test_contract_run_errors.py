"""Run-time errors stop the run and name the step and the participant."""

from __future__ import annotations

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

pytestmark = pytest.mark.timeout(30)

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]
AGG = "central agg#1"


def run_expecting(flow, error=fedloom.FlowRunError):
    assert flow.flow_check() == [], "the flow must be statically valid for this test"
    flow.runtime = LocalRuntime(aggregator=Aggregator(name=AGG),
                                collaborators=[Collaborator(name=n) for n in NAMES],
                                backend="single_process")
    with pytest.raises(error) as info:
        flow.run()
    return info.value


class ConfigurableFlow(FLSpec):
    """One flow whose misbehaviour is chosen by ``mode``."""

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.reached = ["start"]
        if self.mode == "include-missing":
            self.next(self.work, foreach="collaborators", include=["collaborators", "modle"])
        elif self.mode == "exclude-missing":
            self.next(self.work, foreach="collaborators", exclude=["nonexistent"])
        elif self.mode == "foreach-unknown":
            self.targets = ["New York", "Atlantis"]
            self.next(self.work, foreach="targets")
        elif self.mode == "foreach-string":
            self.targets = "New York"
            self.next(self.work, foreach="targets")
        elif self.mode == "foreach-missing":
            self.next(self.work, foreach="nobody")
        elif self.mode == "include-dynamic-string":
            names = "collaborators"
            self.next(self.work, foreach="collaborators", include=names)
        else:
            self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.mode == "collab-raises" and self.input == "New York":
            raise RuntimeError(f"boom from {self.input}")  # the failing line
        if self.mode == "collab-include-missing" and self.input == "newDelhi$+7":
            self.next(self.join, include=["scroe"])
        elif self.mode == "diverge" and self.input == "New York":
            self.next(self.other_join)
        else:
            self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.reached.append("join")
        if self.mode == "join-raises":
            {}["missing key"]
        self.next(self.end)

    @aggregator
    def other_join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_sanity_the_configurable_flow_runs():
    flow = ConfigurableFlow("ok")
    flow.runtime = LocalRuntime(aggregator=Aggregator(name=AGG),
                                collaborators=[Collaborator(name=n) for n in NAMES])
    flow.run()
    assert flow.reached == ["start", "join"]


@pytest.mark.parametrize("mode", ["include-missing", "exclude-missing"])
def test_include_or_exclude_name_missing_on_the_aggregator(mode):
    err = run_expecting(ConfigurableFlow(mode))
    assert err.step == "start"
    assert err.participant == AGG
    assert ("modle" if mode == "include-missing" else "nonexistent") in str(err)


def test_include_name_missing_on_a_collaborator():
    err = run_expecting(ConfigurableFlow("collab-include-missing"))
    assert err.step == "work"
    assert err.participant == "newDelhi$+7"
    assert "scroe" in str(err)


def test_include_given_as_a_string_at_run_time():
    err = run_expecting(ConfigurableFlow("include-dynamic-string"))
    assert err.step == "start"
    assert err.participant == AGG


def test_foreach_name_that_is_not_a_collaborator():
    err = run_expecting(ConfigurableFlow("foreach-unknown"))
    assert err.step == "start"
    assert err.participant == AGG
    assert "Atlantis" in str(err)


@pytest.mark.parametrize("mode", ["foreach-string", "foreach-missing"])
def test_foreach_attribute_that_is_not_a_list_of_names(mode):
    err = run_expecting(ConfigurableFlow(mode))
    assert err.step == "start"
    assert err.participant == AGG


def test_collaborators_choosing_different_joins_stop_the_run():
    flow = ConfigurableFlow("diverge")
    err = run_expecting(flow)
    assert "join" in str(err) and "other_join" in str(err)
    assert err.step in ("start", "work")
    assert flow.reached == ["start"]  # no join ran


def test_collaborators_choosing_different_joins_names_a_participant():
    err = run_expecting(ConfigurableFlow("diverge"))
    assert err.participant in NAMES


def test_collaborator_step_that_raises():
    flow = ConfigurableFlow("collab-raises")
    err = run_expecting(flow, fedloom.StepFailed)
    assert isinstance(err, fedloom.FlowRunError)
    assert err.step == "work"
    assert err.participant == "New York"
    assert "boom from New York" in str(err)
    assert "RuntimeError" in err.traceback_text
    assert "# the failing line" in err.traceback_text  # the user's source line is shown
    assert flow.reached == ["start"]


def test_aggregator_step_that_raises():
    flow = ConfigurableFlow("join-raises")
    err = run_expecting(flow, fedloom.StepFailed)
    assert err.step == "join"
    assert err.participant == AGG
    assert "KeyError" in err.traceback_text
    assert "missing key" in err.traceback_text


def test_run_without_runtime_is_a_clear_error():
    flow = ConfigurableFlow("ok")
    with pytest.raises(fedloom.FedloomError, match="runtime"):
        flow.run()


def test_a_failed_run_can_be_followed_by_a_good_one():
    flow = ConfigurableFlow("join-raises")
    flow.runtime = LocalRuntime(aggregator=Aggregator(name=AGG),
                                collaborators=[Collaborator(name=n) for n in NAMES])
    with pytest.raises(fedloom.StepFailed):
        flow.run()
    flow.mode = "ok"
    flow.run()
    assert flow.reached == ["start", "join"]


class TwiceFlow(FLSpec):
    @aggregator
    def start(self):
        if True:
            self.next(self.middle)
        self.next(self.end)

    @aggregator
    def middle(self):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_next_called_twice_is_an_error_naming_the_step():
    err = run_expecting(TwiceFlow())
    assert err.step == "start"
    assert err.participant == AGG


class EarlyReturnFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.work, foreach="collaborators")

    @collaborator
    def work(self):
        if self.input == "newDelhi$+7":
            return  # forgets self.next() on this path
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_step_that_returns_without_next_stops_the_run():
    err = run_expecting(EarlyReturnFlow())
    assert err.step == "work"
    assert err.participant == "newDelhi$+7"
