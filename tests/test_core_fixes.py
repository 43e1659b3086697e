"""Issue #12: the private-attribute leak check costs what a step could change, not the state."""

from __future__ import annotations

import numpy as np
import pytest

import fedloom.state
from fedloom import Aggregator, Collaborator, FLSpec, LocalRuntime, aggregator, collaborator


class ManyNames(FLSpec):
    """A realistic state: the N collaborator names, a model, private data per collaborator."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.model = np.zeros(4)
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model[:1] += self.data[:1]
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = np.mean([i.model for i in inputs], axis=0)
        self.round += 1
        if self.round < 2:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


def private_data(index: int) -> dict[str, np.ndarray]:
    return {"data": np.full(8, float(index))}


@pytest.mark.parametrize("n", [50, 200])
def test_the_leak_check_does_not_walk_the_n_names_once_per_task(n, monkeypatch):
    # Walking the whole state after every task looked at the N names N times a round.
    looked_at = 0
    is_leaf = fedloom.state._is_leaf

    def counting(value):
        nonlocal looked_at
        looked_at += 1
        return is_leaf(value)

    monkeypatch.setattr(fedloom.state, "_is_leaf", counting)
    flow = ManyNames()
    flow.runtime = LocalRuntime(aggregator=Aggregator(), collaborators=[
        Collaborator(name=f"site-{i}", private_attributes_callable=private_data, index=i)
        for i in range(n)])
    flow.run()
    assert flow.model[0] == pytest.approx(2 * np.mean(np.arange(n)))
    assert looked_at < 10 * n  # per run of 2 rounds; O(N^2) was > 2 * n * n
