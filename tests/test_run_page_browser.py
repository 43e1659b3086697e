"""The run page (fedloom-run.html) in a real headless Chromium, driven by Playwright.

Debian's ``chromium`` is used (Playwright cannot download browsers here). Without chromium or
the ``playwright`` package the tests skip with the reason — unless FEDLOOM_REQUIRE_BROWSER=1
(CI sets it once it has installed both), where a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedloom import FLSpec, aggregator, collaborator
from fedloom.checkpoint.report import RunReport, TaskRow
from fedloom.spec.render import to_mermaid, to_text
from fedloom.tracking.charts import AGGREGATOR_COLOUR, PALETTE
from fedloom.tracking.records import MetricRecord

# What Chromium needs to run as root in a container, quietly and without reaching out.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
WAIT_MS = 10_000  # Playwright's waits: a page of this size renders in well under a second
SITES = ["Portland", "Seattle", "intel@lab_5"]


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDLOOM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FEDLOOM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module, on a fresh profile removed afterwards."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        _unavailable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    profile = tempfile.mkdtemp(prefix="fedloom-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900}, timeout=30_000)
            context.set_default_timeout(WAIT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class PageFlow(FLSpec):
    @aggregator
    def start(self):
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


def run_report(sites: list[str], rounds: int) -> RunReport:
    """A finished run's report as the recorder makes it: tasks, graph and logged metrics."""
    t0 = time.time() - 60
    tasks, metrics, task_id = [TaskRow("start", "1", "aggregator", True, t0, t0 + 0.2)], [], 1
    for r in range(rounds):
        for i, site in enumerate(sites):
            task_id += 1
            at = t0 + 1 + r * 2 + i * 1e-4
            tasks.append(TaskRow("train", str(task_id), site, True, at, at + 0.8))
            metrics.append(MetricRecord("1", "train", site, r, at, "loss",
                                        2.0 / (r + 1) + 0.05 * (i % 7)))
            metrics.append(MetricRecord("1", "train", site, r, at, "accuracy",
                                        0.5 + 0.05 * r - 0.01 * (i % 5)))
        task_id += 1
        tasks.append(TaskRow("join", str(task_id), "aggregator", True, t0 + 2 + r * 2,
                             t0 + 2.1 + r * 2))
        metrics.append(MetricRecord("1", "join", "aggregator", r, t0 + 2 + r * 2,
                                    "accuracy", 0.55 + 0.05 * r))
    tasks.append(TaskRow("end", str(task_id + 1), "aggregator", True, t0 + 50, t0 + 50.1))
    graph = PageFlow.flow_picture().graph
    return RunReport("PageFlow", "1700000000000042", True, tasks, graph_text=to_text(graph),
                     graph_mermaid=to_mermaid(graph), metrics=metrics)


class OpenedPage:
    """A page loaded from a file, with every console error and every request it made."""

    def __init__(self, context: Any, path: Path) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri(), wait_until="load")


@pytest.fixture
def open_page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    opened: list[OpenedPage] = []

    def open_report(report: RunReport) -> OpenedPage:
        path = tmp_path / "fedloom-run.html"
        path.write_text(report.to_html(), encoding="utf-8")
        opened.append(OpenedPage(browser, path))
        return opened[-1]

    yield open_report
    for page in opened:
        page.page.close()


def picture_stats(context: Any, png: bytes, colours: list[str]) -> dict[str, Any]:
    """Decode a screenshot in the browser (a canvas; no imaging package needed): its size,
    how many distinct colours, the share of non-white pixels, and per colour of ``colours``
    how many pixels are (nearly) that colour."""
    page = context.new_page()
    try:
        return dict(page.evaluate("""async ([data, wanted]) => {
            const img = new Image();
            img.src = "data:image/png;base64," + data;
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.width; canvas.height = img.height;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, img.width, img.height).data;
            const targets = wanted.map(h => [1, 3, 5].map(i => parseInt(h.substr(i, 2), 16)));
            const near = targets.map(() => 0);
            const seen = new Set();
            let nonWhite = 0;
            for (let i = 0; i < px.length; i += 4) {
                const [r, g, b] = [px[i], px[i + 1], px[i + 2]];
                seen.add((r << 16) | (g << 8) | b);
                if (r < 250 || g < 250 || b < 250) nonWhite++;
                for (let k = 0; k < targets.length; k++) {
                    const t = targets[k];
                    if (Math.abs(r - t[0]) + Math.abs(g - t[1]) + Math.abs(b - t[2]) <= 24) {
                        near[k]++;
                    }
                }
            }
            return {width: img.width, height: img.height, colours: seen.size,
                    nonWhite: nonWhite / (px.length / 4), near: near};
        }""", [base64.b64encode(png).decode("ascii"), colours]))
    finally:
        page.close()


def test_run_page_shows_graph_and_one_chart_per_metric(open_page, browser):
    opened = open_page(run_report(SITES, rounds=4))
    page = opened.page
    assert page.title() == "PageFlow/1700000000000042"
    flow = page.locator("h2", has_text="Flow").locator("xpath=following-sibling::pre[1]")
    assert "train" in flow.inner_text() and "(foreach collaborators)" in flow.inner_text()
    assert flow.is_visible()
    charts = page.locator("figure.metric-chart")
    charts.nth(1).wait_for(state="visible")
    assert charts.count() == 2
    assert [charts.nth(i).get_attribute("data-metric") for i in range(2)] == ["loss", "accuracy"]
    loss, accuracy = charts.nth(0), charts.nth(1)
    assert loss.locator("g.series.participant").count() == 3
    assert loss.locator("g.series.aggregator").count() == 0
    assert accuracy.locator("g.series.participant").count() == 3
    assert accuracy.locator("g.series.aggregator").count() == 1
    for chart in (loss, accuracy):
        box = chart.locator("svg").bounding_box()
        assert box is not None and box["width"] > 500 and box["height"] > 250
        for i in range(chart.locator("path.line").count()):  # every line is drawn, not empty
            line = chart.locator("path.line").nth(i).bounding_box()
            assert line is not None and line["width"] > 100
    legend = accuracy.locator("g.legend text").all_text_contents()
    assert legend == [*SITES, "aggregator"]
    assert accuracy.locator("circle title").first.text_content() == \
        "Portland: 0.5 (round 0, train)"
    # Nothing fetched, nothing failed: the page stands alone.
    assert opened.errors == []
    assert [u for u in opened.requests if not u.startswith(("file:", "data:"))] == []

    shot = picture_stats(browser, page.screenshot(full_page=True), [])
    assert shot["colours"] > 20 and 0.02 < shot["nonWhite"] < 0.9
    chart_shot = picture_stats(browser, accuracy.screenshot(),
                               [*PALETTE[:3], AGGREGATOR_COLOUR])
    assert all(n > 20 for n in chart_shot["near"]), chart_shot["near"]  # each line's colour


def test_a_thousand_participants_draw_a_band_and_a_few_lines(open_page, browser):
    sites = [f"site-{i:04d}" for i in range(1000)]
    opened = open_page(run_report(sites, rounds=3))
    charts = opened.page.locator("figure.metric-chart")
    charts.first.wait_for(state="visible")
    assert charts.count() == 2
    for chart in (charts.nth(0), charts.nth(1)):
        assert chart.locator("g.series.participant").count() == 10
        assert chart.locator("g.series.mean").count() == 1
        assert chart.locator("path.band").count() == 1
        assert "1000 participants: 10 drawn one by one" in chart.locator(
            "text.chart-note").first.text_content()
    assert charts.nth(1).locator("g.series.aggregator").count() == 1
    assert opened.errors == []
    shot = picture_stats(browser, charts.nth(0).screenshot(), [])
    assert shot["colours"] > 20 and shot["nonWhite"] > 0.05
