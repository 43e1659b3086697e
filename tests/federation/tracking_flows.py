"""A flow that logs metrics on every participant (a module file, so it can be packaged as is
for the federation; the local tracking tests run it too). Collaborators' private ``data`` is a
vector of one value (as the federation fixture's envoys make it)."""

from __future__ import annotations

import numpy as np

import fedloom
from fedloom import FLSpec, aggregator, collaborator, fedavg


class TrackedFlow(FLSpec):
    """Each collaborator logs ``loss`` = 3·value/(round+1) and ``accuracy`` (a numpy scalar)
    per round; the aggregator logs ``lr`` at start and ``global/mean`` (a 0-d array) per join."""

    def __init__(self, rounds: int = 2, lr: float = 0.5, tag: str = "tracked", **kwargs):
        super().__init__(**kwargs)
        self.rounds = rounds
        self.lr = lr
        self.tag = tag
        self.model = np.zeros(3)

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        fedloom.log_metric("lr", self.lr)
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model = self.model + self.data
        fedloom.log_metrics({"loss": float(self.data.sum()) / (self.round + 1),
                             "accuracy": np.float32(0.5)})
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = fedavg([i.model for i in inputs])
        self.round += 1
        fedloom.log_metric("global/mean", np.array(self.model.mean()))
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        print(f"done after {self.round} rounds")


def expected(values: dict[str, float], rounds: int, aggregator: str = "aggregator"
             ) -> set[tuple[str, str, int, str, float]]:
    """(step, participant, round, name, value) of every value TrackedFlow logs."""
    want = {("start", aggregator, 0, "lr", 0.5)}
    for r in range(rounds):
        for name, value in values.items():
            want.add(("train", name, r, "loss", 3 * value / (r + 1)))
            want.add(("train", name, r, "accuracy", 0.5))
        want.add(("join", aggregator, r, "global/mean", (r + 1) * float(np.mean(
            list(values.values())))))
    return {(step, who, r, name, round(value, 9)) for step, who, r, name, value in want}


def logged(metrics) -> set[tuple[str, str, int, str, float]]:
    return {(m.step, m.participant, m.round, m.name, round(m.value, 9)) for m in metrics}
