"""Public API surface: imports, placement markers, FedAvg helpers and the flow picture."""

from __future__ import annotations

import re

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


# -- imports and markers -------------------------------------------------------------------------


def test_public_names_are_importable():
    for name in ("FLSpec", "aggregator", "collaborator", "Aggregator", "Collaborator",
                 "LocalRuntime", "FlowDefinitionError", "FlowRunError", "StepFailed",
                 "fedavg", "FedAvg"):
        assert hasattr(fedloom, name), name
    from fedloom.errors import Problem

    p = Problem("msg", "the fix", "train", "/x/flow.py", 12)
    assert (p.message, p.fix, p.step, p.file, p.line) == ("msg", "the fix", "train",
                                                           "/x/flow.py", 12)
    assert issubclass(fedloom.StepFailed, fedloom.FlowRunError)


class MarkedFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.gpu_step, foreach="collaborators")

    @collaborator(num_gpus=0.5)
    def gpu_step(self):
        self.ran_on = self.input
        self.next(self.join)

    @aggregator(num_cpus=1)
    def join(self, inputs):
        self.ran = [i.ran_on for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_placement_markers_and_decorator_arguments():
    assert MarkedFlow.start.aggregator_step is True
    assert MarkedFlow.start.collaborator_step is False
    assert MarkedFlow.gpu_step.collaborator_step is True
    assert MarkedFlow.gpu_step.aggregator_step is False
    assert MarkedFlow.join.aggregator_step is True
    flow = MarkedFlow()
    flow.runtime = LocalRuntime(aggregator=Aggregator(),
                                collaborators=[Collaborator(name=n) for n in NAMES],
                                backend="single_process")
    flow.run()
    assert flow.ran == NAMES


def test_participants_accept_resource_arguments():
    agg = Aggregator(name="agg", num_cpus=1, num_gpus=0.2)
    col = Collaborator(name="New York", num_cpus=1, num_gpus=0.2)
    rt = LocalRuntime(aggregator=agg, collaborators=[col], backend="single_process")
    assert rt.collaborators == ["New York"]


# -- FedAvg ---------------------------------------------------------------------------------------


def test_fedavg_numpy_unweighted_and_alias():
    a, b = np.array([1.0, 2.0]), np.array([3.0, 6.0])
    np.testing.assert_allclose(fedloom.fedavg([a, b]), [2.0, 4.0])
    np.testing.assert_allclose(fedloom.FedAvg([a, b]), [2.0, 4.0])
    # inputs untouched
    np.testing.assert_array_equal(a, [1.0, 2.0])
    np.testing.assert_array_equal(b, [3.0, 6.0])


def test_fedavg_weighted_by_sample_counts():
    vals = [np.array([0.0]), np.array([10.0])]
    np.testing.assert_allclose(fedloom.fedavg(vals, weights=[3, 1]), [2.5])
    np.testing.assert_allclose(fedloom.fedavg(vals, weights=np.array([1.0, 4.0])), [8.0])


def test_fedavg_dict_of_arrays_weighted():
    vals = [{"w": np.ones((2, 2)), "b": np.array([0.0])},
            {"w": 3 * np.ones((2, 2)), "b": np.array([4.0])}]
    out = fedloom.fedavg(vals, weights=[1, 3])
    assert set(out) == {"w", "b"}
    np.testing.assert_allclose(out["w"], 2.5 * np.ones((2, 2)))
    np.testing.assert_allclose(out["b"], [3.0])


def test_fedavg_float32_keeps_dtype():
    vals = [np.ones(3, dtype=np.float32), np.zeros(3, dtype=np.float32)]
    out = fedloom.fedavg(vals)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5)


def test_fedavg_rejects_bad_weights():
    vals = [np.array([1.0]), np.array([2.0])]
    with pytest.raises(ValueError):
        fedloom.fedavg(vals, weights=[1.0])  # wrong count
    with pytest.raises(ValueError):
        fedloom.fedavg([])


def test_fedavg_rejects_mismatched_shapes():
    with pytest.raises((ValueError, TypeError)):
        fedloom.fedavg([np.array([1.0, 2.0, 3.0]), np.array([5.0])])


def test_fedavg_dicts_with_same_keys_in_different_order():
    out = fedloom.fedavg([{"a": np.array([1.0]), "b": np.array([2.0])},
                          {"b": np.array([4.0]), "a": np.array([3.0])}])
    np.testing.assert_allclose(out["a"], [2.0])
    np.testing.assert_allclose(out["b"], [3.0])


def test_fedavg_torch_modules_and_state_dicts():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m1, m2 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        m1.weight.fill_(1.0)
        m1.bias.fill_(0.0)
        m2.weight.fill_(5.0)
        m2.bias.fill_(4.0)
    avg = fedloom.fedavg([m1, m2], weights=[3, 1])
    assert isinstance(avg, torch.nn.Linear)
    assert avg is not m1 and avg is not m2
    torch.testing.assert_close(avg.weight.detach(), torch.full((2, 3), 2.0))
    torch.testing.assert_close(avg.bias.detach(), torch.full((2,), 1.0))
    # the inputs are not modified
    torch.testing.assert_close(m1.weight.detach(), torch.full((2, 3), 1.0))
    sd = fedloom.fedavg([m1.state_dict(), m2.state_dict()])
    torch.testing.assert_close(sd["weight"], torch.full((2, 3), 3.0))
    torch.testing.assert_close(sd["bias"], torch.full((2,), 2.0))


# -- picture -------------------------------------------------------------------------------------


class PictureFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.local_train, foreach="collaborators", exclude=["secret"])

    @collaborator
    def local_train(self):
        self.next(self.validate)

    @collaborator
    def validate(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        if len(inputs) > 100:
            self.next(self.local_train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


EDGES = {("start", "local_train"), ("local_train", "validate"), ("validate", "join"),
         ("join", "local_train"), ("join", "end")}
STEPS = ("start", "local_train", "validate", "join", "end")


def test_picture_text():
    text = PictureFlow.flow_picture().text()
    assert isinstance(text, str)
    for step in STEPS:
        assert step in text
    assert "aggregator" in text and "collaborator" in text


def test_picture_mermaid_has_every_step_and_edge():
    mermaid = PictureFlow.flow_picture().mermaid()
    assert mermaid.splitlines()[0].split()[0] in ("flowchart", "graph")
    found = set()
    for line in mermaid.splitlines():
        if "-->" not in line:
            continue
        left, right = line.split("-->", 1)
        src = left.split()[0]
        dst = right.split()[0]
        for a, b in EDGES:
            if re.search(rf"(^|[^a-z]){a}$", src) and re.search(rf"(^|[^a-z]){b}$", dst):
                found.add((a, b))
    assert found == EDGES


def test_picture_dot_has_every_edge():
    dot = PictureFlow.flow_picture().dot()
    assert dot.lstrip().startswith("digraph")
    edges = set(re.findall(r'"?(\w+)"?\s*->\s*"?(\w+)"?', dot))
    assert edges >= EDGES
    assert dot.count("{") == dot.count("}")


def test_picture_markdown_is_a_mermaid_block():
    md = PictureFlow.flow_picture()._repr_markdown_()
    assert "```mermaid" in md
    assert md.rstrip().endswith("```")
    for step in STEPS:
        assert step in md
