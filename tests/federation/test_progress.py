"""What a submitter sees while run() waits: a live line at a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import logging
import time

import pytest
from rich.console import Console

from fedloom.federation.transport.proto import fedloom_pb2 as pb
from fedloom.runtime.progress import RunDisplay, rounds_of


def shown(display: RunDisplay) -> str:
    """The live line as a terminal 120 columns wide shows it now."""
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(display)
    return out.getvalue()


def test_at_a_terminal_a_live_line_says_what_it_waits_for_then_shows_rounds():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    display = RunDisplay("3-1a2b3c4d", rounds=3, console=terminal)
    try:
        assert display.live
        display.on_status("waiting for the review by Seattle")
        since = time.strftime("%H:%M:%S", time.localtime(display.status_since))
        assert f"experiment 3-1a2b3c4d: waiting for the review by Seattle since {since}" in \
            shown(display)
        display.on_status("waiting for envoys Oslo (offline) since 12:04:31")  # as it says
        assert "Oslo (offline) since 12:04:31\n" in shown(display)
        display.on_progress(pb.Progress(step="train", round=2, participants=["a", "b"],
                                        at=time.time()))
        display.on_output(pb.TaskInfo(step="train", participant="a",
                                      stdout="epoch 1\nloss 0.25\n"))
        line = shown(display)
        assert "round 2/3 · step 'train' on 2 envoys" in line
        assert "[train @ a] loss 0.25" in line
        assert "━" in line  # the bar of rounds
    finally:
        display.close()
    assert not display.live


def test_elsewhere_one_plain_line_per_change(caplog: pytest.LogCaptureFixture,
                                             capsys: pytest.CaptureFixture[str]):
    caplog.set_level(logging.INFO, logger="fedloom.runtime.federated")
    display = RunDisplay("3-1a2b3c4d", console=Console(file=io.StringIO()))
    assert not display.live
    display.on_status("waiting for the review by Seattle")
    display.on_status("waiting for the review by Seattle")  # unchanged: said once
    display.on_progress(pb.Progress(step="train", round=1, participants=["a"], at=1.0))
    display.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("experiment 3-1a2b3c4d: waiting for the review by Seattle "
                               "since ")
    assert lines[1] == "experiment 3-1a2b3c4d: round 1, step 'train' on 1 envoy (a)"
    assert capsys.readouterr().out == ""


def test_without_logging_set_up_the_lines_go_to_stderr(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(logging.Logger, "hasHandlers", lambda self: False)
    display = RunDisplay("3-1a2b3c4d", console=Console(file=io.StringIO()))
    display.on_status("running")
    assert capsys.readouterr().err == "experiment 3-1a2b3c4d: running\n"


def test_rounds_are_a_positive_int_attribute_named_rounds():
    class Flow:
        pass

    flow = Flow()
    assert rounds_of(flow) is None
    for value, expected in ((3, 3), (0, None), (True, None), ("3", None)):
        flow.rounds = value  # type: ignore[attr-defined]
        assert rounds_of(flow) == expected
