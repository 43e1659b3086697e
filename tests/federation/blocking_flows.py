"""A flow whose aggregator waits in its first step until the test's socket closes (a module
file, so it can be packaged as is)."""

from __future__ import annotations

import socket

from fedloom import FLSpec, aggregator, collaborator


class HeldAggregatorFlow(FLSpec):
    def __init__(self, hold_port: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.hold_port = hold_port

    @aggregator
    def start(self):
        socket.create_connection(("127.0.0.1", self.hold_port)).recv(1)  # held here
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
