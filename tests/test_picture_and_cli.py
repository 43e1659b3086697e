"""The flow as a picture (text, Mermaid, DOT) and the `fx flow` commands."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fedloom.cli import main
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
