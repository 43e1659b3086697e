"""Experiment tracking on LocalRuntime: log_metric in steps, flow.metrics, the live display,
checkpoints read back with the Metaflow client and fx run metrics, MLflow read back with
MLflow's own client."""

from __future__ import annotations

import io
import json
import logging
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

import fedloom
from fedloom import FedloomError, FLSpec, StepFailed, aggregator, collaborator
from fedloom.cli import main
from fedloom.runtime.progress import RunDisplay, progress_enabled
from fedloom.tracking import METRICS_ARTIFACT, MetricError, MetricRecord, Metrics, metrics_of
from fedloom.tracking.api import as_number, check_name
from tests.conftest import NAMES, make_runtime
from tests.federation.tracking_flows import TrackedFlow, expected, logged

VALUES = {name: float(i + 1) for i, name in enumerate(NAMES)}


def data(index: int, name: str) -> dict[str, object]:
    return {"data": np.full(3, float(index + 1))}


def run_tracked(backend: str = "single_process", **flow_args) -> TrackedFlow:
    flow = TrackedFlow(**flow_args)
    flow.runtime = make_runtime(collab_private=data, backend=backend)
    flow.run()
    return flow


# -- the API and its checks ------------------------------------------------------------------

def test_every_participant_s_metrics_are_on_the_flow_with_their_rounds(backend):
    flow = run_tracked(backend, rounds=3)
    assert logged(flow.metrics) == expected(VALUES, 3)
    assert len(flow.metrics) == len(expected(VALUES, 3))  # nothing twice
    assert {m.run_id for m in flow.metrics} == {flow._run_id}
    assert flow.metrics.participants() == ["aggregator", *NAMES]
    assert flow.metrics.latest()["loss"] == {n: 3 * v / 3 for n, v in VALUES.items()}
    assert flow.metrics.flow == "TrackedFlow"
    assert flow.metrics.params == {"rounds": 3, "lr": 0.5, "tag": "tracked"}
    times = [m.time for m in flow.metrics.where(participant=NAMES[0])]
    assert times == sorted(times)


def test_numbers_of_every_kind_are_accepted_and_anything_else_is_refused_by_name():
    assert as_number("m", 3) == 3.0 and as_number("m", np.float32(0.5)) == 0.5
    assert as_number("m", np.int64(7)) == 7.0 and as_number("m", np.array(2.5)) == 2.5
    assert math.isnan(as_number("m", float("nan"))) and as_number("m", -math.inf) == -math.inf
    for bad, says in (("0.5", "cannot record str '0.5'"), (True, "is a bool"),
                      (np.bool_(False), "is a bool"), (np.ones(3), "of shape (3,)"),
                      (None, "cannot record NoneType"), (10 ** 400, "not representable"),
                      (1j, "cannot record complex")):
        with pytest.raises(MetricError, match=r"metric 'loss'.*") as info:
            as_number("loss", bad)
        assert says in str(info.value), (bad, str(info.value))
    for good in ("loss", "val/accuracy", "a-b.c d_e", "Ünïcode"):
        assert check_name(good) == good
    for bad in ("", "a$b", "loss!", "/abs", "a//b", "a/", "./a", "a/../b", "x" * 251, 3):
        with pytest.raises(MetricError, match=r"metric name|must be a string"):
            check_name(bad)


def test_0_d_tensors_are_numbers_and_larger_ones_are_refused():
    torch = pytest.importorskip("torch")
    assert as_number("loss", torch.tensor(0.25)) == 0.25
    with pytest.raises(MetricError, match=r"metric 'loss': cannot record Tensor .* of shape"):
        as_number("loss", torch.ones(2))
    with pytest.raises(MetricError, match="is a bool"):
        as_number("done", torch.tensor(True))


class BadMetricFlow(FLSpec):
    def __init__(self, value=None, name="loss", **kwargs):
        super().__init__(**kwargs)
        self.value, self.name = value, name

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        fedloom.log_metric(self.name, self.value)
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


@pytest.mark.parametrize(("value", "name", "says"), [
    ("high", "loss", "metric 'loss': cannot record str 'high'"),
    (True, "done", "metric 'done': True is a bool"),
    (1.0, "loss%", "metric name 'loss%' is not allowed"),
])
def test_a_bad_metric_fails_its_step_at_the_call(value, name, says):
    flow = BadMetricFlow(value=value, name=name)
    flow.runtime = make_runtime()
    with pytest.raises(StepFailed) as info:
        flow.run()
    err = info.value
    assert (err.step, err.participant, err.exc_type) == ("train", NAMES[0], "MetricError")
    assert says in err.exc_message
    assert "fedloom.log_metric(self.name, self.value)" in err.traceback_text


def test_outside_a_step_log_metric_says_where_to_call_it():
    with pytest.raises(FedloomError, match="call it inside a step"):
        fedloom.log_metric("loss", 1.0)
    with pytest.raises(MetricError, match="takes a dict"):
        fedloom.log_metrics([("loss", 1.0)])  # type: ignore[arg-type]


class ReservedFlow(TrackedFlow):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fedloom_metrics = [1, 2]


def test_an_attribute_named_like_the_metrics_artifact_is_refused():
    flow = ReservedFlow(rounds=1)
    flow.runtime = make_runtime(collab_private=data)
    with pytest.raises(fedloom.FlowRunError, match=f"'{METRICS_ARTIFACT}' is reserved") as info:
        flow.run()
    assert info.value.step == "start"


class OwnMetricsFlow(TrackedFlow):
    @aggregator
    def end(self):
        self.metrics = {"mine": 1}  # a flow's own attribute of that name keeps working


ATTEMPTS: dict[str, int] = {}


class RetriedFlow(TrackedFlow):
    @collaborator(retries=1)
    def train(self):
        fedloom.log_metric("attempt", ATTEMPTS.get(self.input, 0))
        ATTEMPTS[self.input] = ATTEMPTS.get(self.input, 0) + 1
        if self.input == NAMES[0] and ATTEMPTS[self.input] == 1:
            raise RuntimeError("flaky")
        self.next(self.join)


def test_own_metrics_attribute_wins_and_retried_steps_count_their_last_attempt_only():
    flow = OwnMetricsFlow(rounds=1)
    flow.runtime = make_runtime(collab_private=data)
    flow.run()
    assert flow.metrics == {"mine": 1}
    assert len(metrics_of(flow).where(name="loss")) == len(NAMES)
    ATTEMPTS.clear()
    flow = RetriedFlow(rounds=2)
    flow.runtime = make_runtime(collab_private=data)
    flow.run()
    first = flow.metrics.where(participant=NAMES[0], name="attempt")
    assert [(m.round, m.value) for m in first] == [(0, 1.0), (1, 2.0)]  # attempt 0 failed


def test_to_pandas_or_a_clear_error(monkeypatch):
    metrics = Metrics([MetricRecord("1", "train", "a", 0, 1.0, "loss", 0.5)])
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "pandas", None)
        with pytest.raises(ImportError, match="pip install pandas"):
            metrics.to_pandas()
    pytest.importorskip("pandas")
    frame = metrics.to_pandas()
    assert list(frame.columns) == ["run_id", "step", "participant", "round", "time", "name",
                                   "value"]
    assert frame["value"].tolist() == [0.5]


# -- the live display ---------------------------------------------------------------------------

def test_the_display_shows_each_metric_s_latest_values_and_their_mean():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=160)
    display = RunDisplay("1", rounds=3, console=terminal, title="TrackedFlow run 1",
                         noun="collaborator")
    try:
        display.on_fan_out("train", 2, ["a", "b"])
        display.on_metrics([MetricRecord("1", "train", "a", 1, 1.0, "loss", 0.25),
                            MetricRecord("1", "train", "b", 1, 1.0, "loss", 0.75),
                            MetricRecord("1", "join", "aggregator", 1, 1.0, "loss", 0.5)])
        out = io.StringIO()
        Console(file=out, width=160, color_system=None).print(display)
        shown = out.getvalue()
    finally:
        display.close()
    assert "TrackedFlow run 1" in shown and "round 2/3 · step 'train' on 2 collaborators" in shown
    assert "loss: aggregator 0.5 · mean 0.5 · a 0.25, b 0.75" in shown


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_at_a_terminal_captured_output_passes_through_the_live_display(monkeypatch, caplog):
    """A checkpointing step's output is captured and written through to the display's proxy of
    stdout; the display's console must not write into the capture again (endless recursion)."""
    from fedloom.capture import capture_output

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    display = RunDisplay("1", title="T run 1", noun="collaborator", logger=logging.getLogger(
        "fedloom.runtime.local"))
    try:
        assert display.live
        with capture_output(passthrough=True) as out:
            print("hello from a step")
        display.on_metrics([MetricRecord("1", "train", "a", 0, 1.0, "loss", 0.5)])
    finally:
        display.close()
    assert out.stdout == "hello from a step\n" and "hello from a step" in terminal.getvalue()
    assert not [r for r in caplog.records if "loss:" in r.getMessage()]  # it was on the bar


def test_plain_lines_elsewhere_and_one_switch_turns_them_off(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="fedloom.runtime.local")
    flow = run_tracked(rounds=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "fedloom.runtime.local"]
    title = f"TrackedFlow run {flow._run_id}"
    assert f"{title}: round 2/2, step 'train' on 3 collaborators ({', '.join(NAMES)})" in lines
    said = [line for line in lines if "loss:" in line]
    assert len(said) == 2  # once per round, before the next round starts and at the end
    assert f"{title}: lr: aggregator 0.5" in lines  # start's, before the first round
    assert said[0].startswith(f"{title}: loss: mean 6 · intel@lab_5 3, New York 6, ")
    assert said[1].endswith("global/mean: aggregator 4")
    caplog.clear()
    quiet = TrackedFlow(rounds=1)
    quiet.runtime = make_runtime(collab_private=data, progress=False)
    quiet.run()
    assert len(quiet.metrics) > 0
    assert not [r for r in caplog.records if r.name == "fedloom.runtime.local"
                and r.levelno >= logging.INFO]
    monkeypatch.setenv("FEDLOOM_PROGRESS", "0")
    assert not progress_enabled(None) and progress_enabled(True)
    monkeypatch.setenv("FEDLOOM_PROGRESS", "1")
    assert progress_enabled(None) and not progress_enabled(False)


# -- recorded runs and MLflow ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*noload.*")  # MLflow's SQLite store on SQLAlchemy 2.1
def test_recorded_metrics_are_read_back_by_metaflow_and_fx_run_metrics(metaflow_client,
                                                                      monkeypatch):
    from metaflow import Flow

    flow = run_tracked(rounds=2, checkpoint=True)
    run = Flow("TrackedFlow").latest_run
    assert run.id == flow._run_id
    recorded = []
    for step in run:
        for task in step:
            rows = task.data.fedloom_metrics  # on every task: [] when it logged nothing
            assert {r["step"] for r in rows} <= {step.id}
            assert {r["participant"] for r in rows} <= {task.metadata_dict["participant"]}
            recorded.extend(MetricRecord.from_dict(r) for r in rows)
    assert logged(recorded) == expected(VALUES, 2)
    assert [t.data.fedloom_metrics for t in run["end"]] == [[]]
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{metaflow_client / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["run", "metrics", "TrackedFlow", "--json", "--mlflow",
                                       "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # MLflow's own log lines go to stderr
    assert (document["flow"], document["run_id"]) == ("TrackedFlow", flow._run_id)
    # The start task's numbers and text: the constructor's, and what start set.
    assert document["params"] == {"rounds": 2, "lr": 0.5, "tag": "tracked", "round": 0}
    assert logged(Metrics.from_dicts(document["metrics"])) == expected(VALUES, 2)
    exported = MlflowClient(tracking_uri=uri).get_run(document["mlflow_run_id"])
    assert exported.data.params["tag"] == "tracked"
    assert exported.data.tags["fedloom.run_id"] == flow._run_id
    table = CliRunner().invoke(main, ["run", "metrics",
                                                  f"TrackedFlow/{flow._run_id}"])
    assert table.exit_code == 0 and "global/mean" in table.output and "0-1" in table.output
    missing = CliRunner().invoke(main, ["run", "metrics", "NoSuchFlow", "--json"])
    assert missing.exit_code == 1 and "NoSuchFlow" in missing.output


@pytest.mark.filterwarnings("ignore:.*noload.*")  # MLflow's SQLite store on SQLAlchemy 2.1
def test_a_run_goes_to_mlflow_as_a_run_with_a_child_run_per_participant(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # whatever MLflow makes beside its store stays in tmp_path
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    flow = run_tracked(rounds=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = fedloom.tracking.to_mlflow(flow, tracking_uri=uri, experiment="tracking-test")
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(run_id)
    assert parent.data.params == {"rounds": "2", "lr": "0.5", "tag": "tracked"}
    assert parent.data.tags["fedloom.run_id"] == flow._run_id
    assert client.get_experiment(parent.info.experiment_id).name == "tracking-test"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    by_name = {child.info.run_name: child.info.run_id for child in children}
    assert set(by_name) == {"aggregator", *NAMES}
    for name, value in VALUES.items():
        history = client.get_metric_history(by_name[name], "loss")
        assert sorted((m.step, m.value) for m in history) == [(0, 3 * value), (1, 1.5 * value)]
    joins = client.get_metric_history(by_name["aggregator"], "global/mean")
    assert sorted(m.step for m in joins) == [0, 1]
    with pytest.raises(FedloomError, match="no metrics to export"):
        fedloom.tracking.to_mlflow(Metrics(), tracking_uri=uri)
