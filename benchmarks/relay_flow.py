"""The flow the federation benchmark submits: state goes to every envoy and comes back, with no
compute on either side, so what is timed is the federation itself."""

from __future__ import annotations

import time
from typing import Any

from fedloom import FLSpec, aggregator, collaborator


class RelayFlow(FLSpec):
    def __init__(self, model: Any = None, rounds: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.rounds = rounds

    @aggregator
    def start(self) -> None:
        self.names = self.runtime.collaborators
        self.round = 0
        self.stamps = [time.time()]  # when each round began, on the director's clock
        self.next(self.train, foreach="names", exclude=["stamps"])

    @collaborator
    def train(self) -> None:
        self.model[0] += 1  # this collaborator's own (decoded) copy
        self.next(self.join)

    @aggregator
    def join(self, inputs: Any) -> None:
        self.model = inputs[0].model
        self.round += 1
        self.stamps.append(time.time())
        if self.round < self.rounds:
            self.next(self.train, foreach="names", exclude=["stamps"])
        else:
            self.next(self.end)

    @aggregator
    def end(self) -> None:
        pass
