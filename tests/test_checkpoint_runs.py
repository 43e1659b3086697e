"""checkpoint=True: whole runs, on both backends, read back with the real Metaflow client."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedloom import FLSpec, StepFailed, aggregator, collaborator, fedavg
from fedloom.cli import main
from tests.conftest import NAMES, make_runtime

pytest.importorskip("metaflow")
from metaflow import Flow, Metaflow, Step, Task


class CheckpointedFlow(FLSpec):
    def __init__(self, rounds: int = 2, fail_round: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model = np.zeros(4, dtype=np.float32)
        self.rounds = rounds
        self.fail_round = fail_round

    @aggregator
    def start(self):
        print("starting")
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        print(f"training on {self.input}, round {self.round}")
        if self.round == self.fail_round and self.input == NAMES[1]:
            raise RuntimeError("disk full")
        self.model = self.model + self.shard.mean()
        self.loss = float(self.round)
        self.next(self.join, exclude=["collaborators"])

    @aggregator
    def join(self, inputs):
        self.model = fedavg([i.model for i in inputs])
        self.round += 1
        print(f"joined round {self.round}")
        if self.round < self.rounds:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        print("done")


def shard(index: int, name: str) -> dict[str, object]:
    return {"shard": np.full(10, float(index + 1)), "secret_key": f"key-{name}"}


def run_flow(backend: str, **kwargs) -> CheckpointedFlow:
    flow = CheckpointedFlow(checkpoint=True, **kwargs)
    flow.runtime = make_runtime(backend=backend, collab_private=shard,
                                agg_private={"agg_secret": "token"})
    flow.run()
    return flow


def test_every_task_is_readable_with_the_metaflow_client(metaflow_client, backend):
    flow = run_flow(backend)
    assert "CheckpointedFlow" in [f.id for f in Metaflow()]
    run = Flow("CheckpointedFlow").latest_run
    assert run.id == flow._run_id
    assert run.finished and run.successful
    assert {s.id for s in run} == {"start", "train", "join", "end"}

    train = list(Step(f"CheckpointedFlow/{run.id}/train"))
    assert len(train) == 2 * len(NAMES)  # one task per collaborator per round
    by_round = {(t.data.input, t.data.round): t for t in train}
    assert set(by_round) == {(n, r) for n in NAMES for r in (0, 1)}
    task = by_round[(NAMES[2], 1)]
    np.testing.assert_allclose(task.data.model, np.full(4, 2.0 + 3.0))  # round 0 avg 2, +3
    assert task.stdout == f"training on {NAMES[2]}, round 1\n"  # exactly its own output
    assert task.stderr == ""
    assert task.metadata_dict["participant"] == NAMES[2]

    joins = list(Step(f"CheckpointedFlow/{run.id}/join"))
    assert [j.data.round for j in joins] == [2, 1]  # newest first, as the Metaflow client lists
    assert int(joins[0].id) > int(joins[1].id)
    assert Task(f"CheckpointedFlow/{run.id}/join/{joins[1].id}").stdout == "joined round 1\n"
    np.testing.assert_allclose(run["end"].task.data.model, flow.model)


def test_private_attributes_are_never_written(metaflow_client, backend):
    run_flow(backend)
    run = Flow("CheckpointedFlow").latest_run
    for step in run:
        for task in step:
            names = {a.id for a in task.artifacts}
            assert not names & {"shard", "secret_key", "agg_secret"}, (step.id, names)
    raw = b"".join(p.read_bytes() for p in Path(".metaflow").rglob("*") if p.is_file())
    assert b"key-New York" not in raw and b"token" not in raw


def test_failed_run_is_recorded_as_failed_and_keeps_what_came_before(metaflow_client, backend):
    with pytest.raises(StepFailed):
        run_flow(backend, rounds=3, fail_round=1)
    run = Flow("CheckpointedFlow").latest_run
    assert not run.successful
    train = list(Step(f"CheckpointedFlow/{run.id}/train"))
    failing = [t for t in train if t.metadata_dict["participant"] == NAMES[1] and
               not t.successful]
    assert len(failing) == 1
    assert "RuntimeError: disk full" in failing[0].stderr
    assert failing[0].stdout == f"training on {NAMES[1]}, round 1\n"
    first_round = [t for t in train if t.successful and t.data.round == 0]
    assert len(first_round) == len(NAMES)  # earlier tasks stay readable
    assert len(list(Step(f"CheckpointedFlow/{run.id}/join"))) == 1


class HoldsALock(FLSpec):
    @aggregator
    def start(self):
        self.lock = threading.Lock()  # public, but cannot be pickled
        self.value = 7
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def test_unpicklable_attributes_are_skipped_with_a_warning(metaflow_client, caplog):
    flow = HoldsALock(checkpoint=True)
    flow.runtime = make_runtime()
    with caplog.at_level(logging.WARNING):
        flow.run()
    assert "['lock']" in caplog.text and "cannot be pickled" in caplog.text
    task = Flow("HoldsALock").latest_run["start"].task
    assert task.data.value == 7 and "lock" not in {a.id for a in task.artifacts}


def test_without_checkpoint_nothing_is_written(metaflow_client):
    flow = CheckpointedFlow()
    flow.runtime = make_runtime(collab_private=shard)
    flow.run()
    assert not Path(".metaflow").exists()


def test_run_report_page_and_fx_run_show(metaflow_client):
    flow = run_flow("single_process")
    page = Path(".metaflow") / "CheckpointedFlow" / flow._run_id / "fedloom-run.html"
    html = page.read_text()
    assert "Run successful" in html and "flowchart TD" in html
    assert html.count("<tr><td>") == 1 + 2 * len(NAMES) + 2 + 1  # start, trains, joins, end
    result = CliRunner().invoke(main, ["run", "show", "CheckpointedFlow"])
    assert result.exit_code == 0, result.output
    assert f"CheckpointedFlow/{flow._run_id}" in result.output and "successful" in result.output
    for step in ("start", "train", "join", "end"):
        assert step in result.output
    missing = CliRunner().invoke(main, ["run", "show", "NoSuchFlow"])
    assert missing.exit_code != 0 and "NoSuchFlow" in missing.output
    as_json = CliRunner().invoke(main, ["run", "show", "CheckpointedFlow", "--json"])
    assert as_json.exit_code == 0, as_json.output
    shown = json.loads(as_json.output)
    assert (shown["flow"], shown["run_id"], shown["status"]) == (
        "CheckpointedFlow", flow._run_id, "successful")
    assert len(shown["tasks"]) == 1 + 2 * len(NAMES) + 2 + 1  # start, trains, joins, end
    assert all(t["ok"] and t["finished_at"] >= t["started_at"] for t in shown["tasks"])


def test_fx_run_show_reports_how_long_tasks_ran_and_its_page_has_the_graph(metaflow_client):
    # What the run page shows: each task from its start to its end where it ran, not when it
    # was written into the store (a federated run is written at its end, all in one second).
    from fedloom.checkpoint.report import report_from_metaflow
    from fedloom.spec.render import to_mermaid, to_text

    flow = run_flow("single_process")
    report = report_from_metaflow("CheckpointedFlow", flow._run_id)
    assert len(report.tasks) == 1 + 2 * len(NAMES) + 2 + 1
    for row in report.tasks:
        meta = Task(f"CheckpointedFlow/{flow._run_id}/{row.step}/{row.task_id}").metadata_dict
        assert (row.started_at, row.finished_at) == (float(meta["started-at"]),
                                                     float(meta["finished-at"]))
    graph = CheckpointedFlow.flow_picture().graph
    assert (report.graph_text, report.graph_mermaid) == (to_text(graph), to_mermaid(graph))
    page = metaflow_client / "copy.html"
    shown = CliRunner().invoke(main, ["run", "show", f"CheckpointedFlow/{flow._run_id}",
                                      "--html", str(page)])
    assert shown.exit_code == 0, shown.output
    html = page.read_text()
    assert "<h2>Flow</h2>" in html and "flowchart TD" in html
    assert "s_train -- &quot;exclude collaborators&quot; --&gt; s_join" in html
    # one table row a line however wide (into a pipe nothing is wrapped)
    assert any(line.count("│") == 7 and ", ".join(sorted(NAMES)) in line
               for line in shown.output.splitlines())
