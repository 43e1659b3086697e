"""Metric charts (inline SVG) and the run page's Metrics section, read as the page's own markup."""

from __future__ import annotations

import math
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from fedloom import (
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
    log_metric,
)
from fedloom.checkpoint.report import RunReport, TaskRow, report_from_metaflow
from fedloom.tracking.charts import MetricCharts, nice_ticks
from fedloom.tracking.records import MetricRecord

SITES = ["Portland", "Seattle", "intel@lab_5"]
SVG = "{http://www.w3.org/2000/svg}"


def record(participant: str, rnd: int, name: str, value: float, step: str = "train",
           at: float | None = None) -> MetricRecord:
    return MetricRecord("1", step, participant, rnd, float(rnd) if at is None else at, name,
                        value)


def federated_records(sites: list[str], rounds: int) -> list[MetricRecord]:
    """Each site logs loss and accuracy per round; the aggregator logs accuracy at its join."""
    out = []
    for r in range(rounds):
        for i, site in enumerate(sites):
            out.append(record(site, r, "loss", 1.0 / (r + 1) + i, at=r + 0.01 * i))
            out.append(record(site, r, "accuracy", 0.5 + 0.01 * r + 0.001 * i,
                              at=r + 0.01 * i + 0.001))
        out.append(record("aggregator", r, "accuracy", 0.6 + 0.01 * r, step="join", at=r + 0.5))
    return out


def svg_of(charts: MetricCharts, name: str) -> ET.Element:
    return ET.fromstring(charts.svg(name))  # also proves the SVG is well-formed XML


def series(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == f"series {kind}"]


def line_of(group: ET.Element) -> ET.Element:
    path = group.find(f"{SVG}path")
    assert path is not None
    return path


def titles(svg: ET.Element) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG}title")]


def test_one_chart_per_metric_with_a_line_per_participant_and_the_aggregator_apart():
    charts = MetricCharts(federated_records(SITES, rounds=4))
    assert charts.names == ["loss", "accuracy"]
    loss, accuracy = svg_of(charts, "loss"), svg_of(charts, "accuracy")
    assert [g.get("data-label") for g in series(loss, "participant")] == SITES
    assert series(loss, "aggregator") == []
    assert [g.get("data-label") for g in series(accuracy, "aggregator")] == ["aggregator"]
    ours = line_of(series(accuracy, "aggregator")[0])
    theirs = [line_of(g) for g in series(accuracy, "participant")]
    assert float(ours.get("stroke-width", 0)) > max(float(p.get("stroke-width", 0)) for p in theirs)
    assert ours.get("stroke") not in {p.get("stroke") for p in theirs}
    # a site has one colour in every chart, and sites differ
    colours = [line_of(g).get("stroke") for g in series(loss, "participant")]
    assert len(set(colours)) == 3
    assert colours == [p.get("stroke") for p in theirs]
    # four rounds: four points a line, from left to right
    xs = [float(v) for v in re.findall(r"[ML]([\d.]+),", line_of(series(loss, "participant")[0])
                                       .get("d", ""))]
    assert len(xs) == 4 and xs == sorted(xs)


def test_hover_titles_give_exact_values_and_the_legend_names_everyone():
    charts = MetricCharts([record("Portland", 2, "loss", 0.123456789),
                           record("aggregator", 2, "loss", 7.5, step="join")])
    svg = svg_of(charts, "loss")
    assert "Portland: 0.123456789 (round 2, train)" in titles(svg)
    assert "aggregator: 7.5 (round 2, join)" in titles(svg)
    legend = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert [t.text for t in legend[0].iter(f"{SVG}text")] == ["Portland", "aggregator"]


def test_a_thousand_participants_are_summarised_and_the_chart_says_so():
    sites = [f"site-{i:04d}" for i in range(1000)]
    records = [record(s, r, "loss", float(i + r)) for r in range(3) for i, s in enumerate(sites)]
    records += [record("aggregator", r, "loss", 10.0 * r, step="join") for r in range(3)]
    charts = MetricCharts(records, max_lines=6)
    chart = charts.chart("loss")
    assert chart.band is not None and chart.band.participants == 1000
    assert [row[1:] for row in chart.band.rows] == [(r, (999 + 2 * r) / 2, 999 + r)
                                                    for r in range(3)]
    svg = svg_of(charts, "loss")
    drawn = [g.get("data-label") for g in series(svg, "participant")]
    assert drawn == ["site-0000", "site-0001", "site-0002", "site-0997", "site-0998", "site-0999"]
    assert len(series(svg, "mean")) == 1 and len(series(svg, "aggregator")) == 1
    assert [p for p in svg.iter(f"{SVG}path") if p.get("class") == "band"]
    notes = " ".join(t.text or "" for t in svg.iter(f"{SVG}text")
                     if t.get("class") == "chart-note")
    assert "1000 participants: 6 drawn one by one" in notes and "min-max of all 1000" in notes
    assert "round 1: mean 500.5, min 1.0, max 1000.0 (1000 participants)" in titles(svg)
    assert len(charts.html()) < 60_000  # not a thousand lines


def test_few_participants_are_never_summarised():
    charts = MetricCharts(federated_records(SITES, rounds=2), max_lines=3)
    assert charts.chart("loss").band is None and charts.chart("loss").notes == []


def test_odd_values_and_shapes_draw_without_nan_coordinates():
    records = [record("Portland", 0, "flat", 2.0), record("Portland", 1, "flat", 2.0),
               record("Seattle", 0, "single", -1e-9),
               record("Portland", 0, "diverged", 1.0), record("Portland", 1, "diverged", math.nan),
               record("Portland", 2, "diverged", math.inf)]
    charts = MetricCharts(records)
    for name in charts.names:
        svg = svg_of(charts, name)
        numbers = [value for element in svg.iter() for key, value in element.attrib.items()
                   if key in {"d", "cx", "cy", "x", "y", "x1", "x2", "y1", "y2"}]
        assert numbers and not [n for n in numbers if re.search("nan|inf", n, re.I)], name
    notes = charts.chart("diverged").notes
    assert notes == ["2 value(s) that are NaN or infinite are not drawn"]


def test_several_values_in_a_round_and_several_steps_make_separate_points_and_lines():
    records = [record("Portland", 0, "loss", v, at=t) for t, v in enumerate([3.0, 2.0, 1.0])]
    records += [record("Portland", 0, "loss", 5.0, step="validate", at=9)]
    chart = MetricCharts(records).chart("loss")
    assert [s.label for s in chart.lines] == ["Portland (train)", "Portland (validate)"]
    assert [p.x for p in chart.lines[0].points] == pytest.approx([0, 1 / 3, 2 / 3])
    assert [p.value for p in chart.lines[0].points] == [3.0, 2.0, 1.0]


def test_names_are_escaped_and_nothing_runs():
    nasty = "<script>alert('x')</script>"
    charts = MetricCharts([record(nasty, 0, "a'b<c>", 1.0), record("x", 0, "a'b<c>", 2.0)])
    page = charts.html()
    assert "<script" not in page and "&lt;script&gt;" in page
    ET.fromstring(charts.svg("a'b<c>"))
    with pytest.raises(KeyError, match=r"no metric named .*missing"):
        charts.svg("missing")
    assert charts._repr_html_() == page
    assert "No metrics" in MetricCharts([]).html()


def test_nice_ticks():
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(-0.5, 19.5, minimum_step=1) == [0, 5, 10, 15]
    assert nice_ticks(-0.5, 0.5, minimum_step=1) == [0]
    assert nice_ticks(0.91, 0.93) == pytest.approx([0.91, 0.915, 0.92, 0.925, 0.93])


# --- the run page ----------------------------------------------------------------------------

def report_with(metrics: list[MetricRecord], aggregator: str = "aggregator") -> RunReport:
    now = time.time()
    tasks = [TaskRow("start", "1", aggregator, True, now, now + 0.1)]
    tasks += [TaskRow("train", str(2 + i), s, True, now + 0.1, now + 0.5)
              for i, s in enumerate(SITES)]
    tasks += [TaskRow("end", "9", aggregator, True, now + 0.5, now + 0.6)]
    return RunReport("FederatedFlow", "17", True, tasks, graph_text="start -> train",
                     graph_mermaid="flowchart TD", metrics=metrics)


def test_run_page_has_a_metrics_section_with_one_chart_per_metric():
    page = report_with(federated_records(SITES, rounds=3)).to_html()
    assert page.index("<h2>Flow</h2>") < page.index("<h2>Metrics</h2>") < page.index(
        "<h2>Timeline</h2>")
    assert re.findall(r"<figure class='metric-chart' data-metric='([^']+)'", page) == [
        "loss", "accuracy"]
    assert page.count("<tr><td>") == 5  # the task tables are untouched
    assert "<script src" not in page and "http://" not in page.replace(
        "xmlns='http://www.w3.org/2000/svg'", "")


def test_run_page_without_metrics_has_no_metrics_section():
    assert "Metrics" not in report_with([]).to_html()


def test_an_aggregator_with_its_own_name_is_still_charted_as_the_aggregator():
    records = [record("central", 0, "accuracy", 0.5, step="join"),
               record("Portland", 0, "accuracy", 0.4)]
    report = report_with(records, aggregator="central")
    svg = ET.fromstring(report.charts().svg("accuracy"))
    assert [g.get("data-label") for g in series(svg, "aggregator")] == ["central"]
    assert [g.get("data-label") for g in series(svg, "participant")] == ["Portland"]


def test_run_table_caption_gives_the_latest_value_per_metric():
    caption = str(report_with(federated_records(SITES, rounds=3)).table().caption)
    assert caption == ("latest: loss 1.333 (mean of 3, round 2); "
                       "accuracy 0.62 (aggregator, round 2)")
    assert report_with([]).table().caption is None


# --- read back through the Metaflow client ----------------------------------------------------

def write_task(store: Any, step: str, participant: str,
               metrics: list[dict[str, Any]] | None = None) -> None:
    from fedloom.checkpoint import serialize_artifacts

    blobs, _ = serialize_artifacts({"x": 1})
    now = time.time()
    store.write_task(step, store.new_task_id(step), blobs, stdout="", stderr="",
                     participant=participant, ok=True, started_at=now, finished_at=now,
                     metrics=metrics)


def test_report_from_metaflow_reads_each_tasks_metrics_artifact(metaflow_client: Path):
    # Tasks as the recorder writes them (a fedloom_metrics artifact, maybe empty), and one
    # as written before tracking existed (no such artifact).
    from fedloom.checkpoint import MetaflowStore

    store = MetaflowStore("FederatedFlow")
    store.start_run("1700000000000001")
    logged = federated_records(SITES, rounds=2)
    write_task(store, "start", "aggregator")  # as written before tracking: no artifact
    for r in range(2):
        for site in SITES:
            mine = [m.to_dict() for m in logged if (m.participant, m.round) == (site, r)]
            write_task(store, "train", site, mine)
        ours = [m.to_dict() for m in logged if (m.participant, m.round) == ("aggregator", r)]
        write_task(store, "join", "aggregator", ours)
    write_task(store, "end", "aggregator", [])
    store.finish_run(True)

    report = report_from_metaflow("FederatedFlow", "1700000000000001")
    assert sorted(report.metrics, key=repr) == sorted(logged, key=repr)
    page = report.to_html()
    assert re.findall(r"<figure class='metric-chart' data-metric='([^']+)'", page) == [
        "loss", "accuracy"]


def test_report_from_metaflow_of_a_run_without_metrics(metaflow_client: Path):
    from fedloom.checkpoint import MetaflowStore

    store = MetaflowStore("FederatedFlow")
    store.start_run("1700000000000002")
    write_task(store, "start", "aggregator")
    write_task(store, "end", "aggregator")
    store.finish_run(True)
    report = report_from_metaflow("FederatedFlow", "1700000000000002")
    assert report.metrics == [] and "Metrics" not in report.to_html()


def test_an_unreadable_metric_is_skipped_with_a_warning(metaflow_client: Path, caplog):
    from fedloom.checkpoint import MetaflowStore

    store = MetaflowStore("FederatedFlow")
    store.start_run("1700000000000003")
    good = record("Portland", 0, "loss", 0.5)
    write_task(store, "train", "Portland", [{"name": "loss"}, good.to_dict()])
    store.finish_run(False)
    report = report_from_metaflow("FederatedFlow", "1700000000000003")
    assert report.metrics == [good]
    assert "a metric of task FederatedFlow/1700000000000003/train/" in caplog.text


def test_who_logged_in_start_or_end_is_the_aggregator_whatever_its_name():
    records = [record("central", 0, "accuracy", 0.5, step="start"),
               record("central", 0, "accuracy", 0.7, step="join"),
               record("Portland", 0, "accuracy", 0.4)]
    svg = svg_of(MetricCharts(records), "accuracy")
    assert [g.get("data-label") for g in series(svg, "aggregator")] == [
        "central (start)", "central (join)"]
    assert [g.get("data-label") for g in series(svg, "participant")] == ["Portland"]


# --- end to end: a flow that logs, recorded, read back -----------------------------------------

def test_a_checkpointed_flow_that_logs_metrics_gets_its_charts(metaflow_client: Path):
    class ChartedFlow(FLSpec):
        @aggregator
        def start(self):
            self.collaborators, self.round = self.runtime.collaborators, 0
            self.next(self.train, foreach="collaborators")

        @collaborator
        def train(self):
            log_metric("loss", 1.0 / (self.round + 1) + len(self.input))
            self.next(self.join)

        @aggregator
        def join(self, inputs):
            self.round += 1
            log_metric("accuracy", 0.5 + 0.1 * self.round)
            if self.round < 3:
                self.next(self.train, foreach="collaborators")
            else:
                self.next(self.end)

        @aggregator
        def end(self):
            pass

    flow = ChartedFlow(checkpoint=True)
    flow.runtime = LocalRuntime(aggregator=Aggregator(name="central"),
                                collaborators=[Collaborator(name=n) for n in SITES])
    flow.run()
    report = report_from_metaflow("ChartedFlow", flow._run_id)
    assert len(report.metrics) == 3 * len(SITES) + 3
    pages = {"read back": report.to_html(),
             "written by the run": (Path(".metaflow") / "ChartedFlow" / flow._run_id
                                    / "fedloom-run.html").read_text(encoding="utf-8")}
    for where, page in pages.items():
        charts = dict(re.findall(r"<figure class='metric-chart' data-metric='([^']+)'.*?>"
                                 r"(<svg.*?</svg>)", page))
        assert list(charts) == ["loss", "accuracy"], where
        loss, accuracy = ET.fromstring(charts["loss"]), ET.fromstring(charts["accuracy"])
        assert [g.get("data-label") for g in series(loss, "participant")] == SITES, where
        assert [g.get("data-label") for g in series(accuracy, "aggregator")] == ["central"]
        assert "central: 0.8 (round 2, join)" in titles(accuracy), where
    assert "accuracy 0.8 (central, round 2)" in str(report.table().caption)
    # In a notebook: the same charts from the flow object.
    inline = flow.metrics.plot()._repr_html_()
    assert re.findall(r"<figure class='metric-chart' data-metric='([^']+)'", inline) == [
        "loss", "accuracy"]
