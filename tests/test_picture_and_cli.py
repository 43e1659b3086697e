"""The flow as a picture (text, Mermaid, DOT) and the `fx flow` commands."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.logging import RichHandler

from fedloom.cli import _import_file, _log_handler, main
from tests.test_engine import Branches, Rounds

GOOD = '''
from fedloom import FLSpec, aggregator, collaborator

class Tiny(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators", include=["collaborators"])

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass
'''

BROKEN = '''
from fedloom import FLSpec, aggregator

class Broken(FLSpec):
    @aggregator
    def start(self):
        self.next(self.finish)
'''


def test_text_picture_shows_placement_loops_branches_and_filters():
    text = Rounds.flow_picture().text()
    assert "join(inputs)" in text and "[aggregator, join]" in text
    assert "train" in text and "[collaborator]" in text
    assert "foreach collaborators; exclude log" in text
    assert "loop back" in text
    branches = Branches.flow_picture().text()
    assert "branch, line" in branches and "foreach subset; include visits" in branches


def test_mermaid_and_dot_pictures():
    mermaid = Rounds.flow_picture().mermaid()
    assert mermaid.startswith("flowchart TD")
    assert 's_start -- "foreach collaborators; exclude log" --> s_train' in mermaid
    assert "s_join --> s_end" in mermaid
    assert Rounds.flow_picture()._repr_markdown_().startswith("```mermaid\nflowchart TD")
    dot = Rounds.flow_picture().dot()
    assert dot.startswith('digraph "Rounds"') and '"join" -> "end"' in dot


def test_fx_flow_check_and_show(tmp_path: Path):
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN)
    runner = CliRunner()
    ok = runner.invoke(main, ["flow", "check", str(good)])
    assert ok.exit_code == 0 and "ok Tiny: 4 steps" in ok.output
    bad = runner.invoke(main, ["flow", "check", f"{broken}:Broken"])
    assert bad.exit_code == 1
    assert "Broken is not a valid flow" in bad.output and f"{broken}:7" in bad.output
    shown = runner.invoke(main, ["flow", "show", str(good), "--format", "mermaid"])
    assert shown.exit_code == 0 and "flowchart TD" in shown.output
    missing = runner.invoke(main, ["flow", "show", f"{good}:Nope"])
    assert missing.exit_code == 2 and "defines no class 'Nope'" in missing.output


LONG = "train_on_each_collaborators_private_shard_with_a_long_descriptive_step_name"
LONG_FLOW = GOOD.replace("train", LONG).replace(
    'include=["collaborators"]', 'include=["collaborators", "a_long_attribute_name_too"]')


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "text"])
def test_fx_flow_show_into_a_file_or_pipe_is_never_wrapped(tmp_path: Path, fmt: str):
    # A wrapped line splits a name, which is invalid Mermaid and DOT.
    path = tmp_path / "long.py"
    path.write_text(LONG_FLOW)
    shown = CliRunner().invoke(main, ["flow", "show", str(path), "--format", fmt])
    assert shown.exit_code == 0, shown.output
    picture = getattr(_import_file(path).Tiny.flow_picture(), fmt)()
    assert shown.output == picture + "\n"
    assert max(len(line) for line in shown.output.splitlines()) > 100


def test_fx_flow_check_into_a_pipe_is_never_wrapped(tmp_path: Path):
    path = tmp_path / "long.py"
    path.write_text(LONG_FLOW.replace("class Tiny", f"class Tiny{'X' * 90}"))
    ok = CliRunner().invoke(main, ["flow", "check", str(path)])
    assert ok.exit_code == 0 and f"ok Tiny{'X' * 90}: 4 steps\n" in ok.output


def test_logs_into_a_file_are_one_record_a_line_with_iso_times():
    stream = io.StringIO()
    log = logging.getLogger("fedloom.test_cli_logs")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(_log_handler(stream))
    try:
        experiment = f"3-{'a' * 120}"
        log.warning("experiment %s failed: step 'train' failed\nTraceback: ...", experiment)
        log.info("envoy 'New York' registered")
    finally:
        log.handlers.clear()
        log.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
    assert re.fullmatch(rf"{iso} WARNING fedloom\.test_cli_logs: experiment {experiment} "
                        r"failed: step 'train' failed\\nTraceback: \.\.\.", lines[0])
    assert re.fullmatch(rf"{iso} INFO fedloom\.test_cli_logs: envoy 'New York' registered",
                        lines[1])


def test_logs_at_a_terminal_stay_rich():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(_log_handler(Terminal()), RichHandler)
