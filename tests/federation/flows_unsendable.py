"""A flow that sets a lambda, in the step it is told to (a module file, so it can be packaged)."""

from __future__ import annotations

from fedloom import FLSpec, aggregator, collaborator


class LambdaFlow(FLSpec):
    def __init__(self, set_in: str = "", fn=None, **kwargs):
        super().__init__(**kwargs)
        self.set_in = set_in
        self.fn = fn

    def _maybe_set(self, step: str) -> None:
        if self.set_in == step:
            self.fn = lambda x: x

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self._maybe_set("start")
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self._maybe_set("train")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        self._maybe_set("end")
