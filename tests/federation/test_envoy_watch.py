"""The envoy tells a collaborator process that is slow to start (busy: its CPU time grows) from
one that hangs (stopped: it does not)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import pytest

from fedloom.federation.nodes.envoy import _cpu_seconds


def _spin() -> None:
    while True:
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_uses_cpu_and_a_stopped_one_does_not():
    process = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    process.start()
    try:
        first = _cpu_seconds(process)
        deadline = time.monotonic() + 30
        while _cpu_seconds(process) <= first + 0.05:  # busy: its CPU time grows
            assert time.monotonic() < deadline, "a spinning process used no CPU in 30 s"
            time.sleep(0.05)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        stopped = _cpu_seconds(process)
        time.sleep(0.3)  # a stopped process's CPU time must not move meanwhile
        assert _cpu_seconds(process) - stopped < 0.02
    finally:
        process.kill()
        process.join(10)
    assert _cpu_seconds(process) == -1.0  # gone
    assert _cpu_seconds(None) == -1.0
