"""Flows the federation tests submit (a module file, so it can be packaged as is)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket

import numpy as np

from fedloom import FLSpec, aggregator, collaborator, fedavg


class FedAvgFlow(FLSpec):
    """Rounds of FedAvg over each envoy's private ``data``; the aggregator checks its own
    private ``secret`` and collaborators report what they saw."""

    def __init__(self, model=None, rounds: int = 2, fail_on: str = "", die_on: str = "",
                 hold_on: str = "", hold_port: int = 0, flaky_while: str = "",
                 die_round: int = -1, hold_round: int = -1, crash_on: str = "",
                 shout: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.model = model if model is not None else np.zeros(3)
        self.rounds = rounds
        self.fail_on = fail_on
        self.die_on = die_on
        self.hold_on, self.hold_port = hold_on, hold_port
        self.flaky_while = flaky_while  # New York fails its second round while this file exists
        self.die_round, self.hold_round = die_round, hold_round  # -1: every round
        self.crash_on = crash_on  # this collaborator's own process dies (its envoy lives)
        self.shout = shout  # characters each collaborator prints in its train step

    @aggregator
    def start(self):
        assert self.secret == "aggregator-only"
        print(f"starting with {self.runtime.collaborators}")
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        assert not hasattr(self, "secret")
        if self.input == self.fail_on:
            raise ValueError(f"bad data at {self.input}")
        if self.flaky_while and os.path.exists(self.flaky_while) and self.round == 1 and \
                self.input == "New York":
            raise OSError("disk full")
        if self.input == self.crash_on:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.input == self.die_on and self.die_round in (-1, self.round):
            # the envoy process dies mid-round (the parent that made this process)
            os.kill(multiprocessing.parent_process().pid, signal.SIGKILL)
        if self.input == self.hold_on and self.hold_round in (-1, self.round):
            # stays in this step until the test's socket closes
            socket.create_connection(("127.0.0.1", self.hold_port)).recv(1)
        if self.shout:
            print("x" * self.shout)
        self.model = self.model + self.data
        self.seen = float(self.data.sum())
        print(f"{self.input} trained round {self.round}")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.model = fedavg([i.model for i in inputs])
        self.seen_by = {i.input: i.seen for i in inputs}
        self.dropped = dict(inputs.dropped)  # who a straggler policy left out, and why
        self.round += 1
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        print("done")
