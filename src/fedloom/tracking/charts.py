"""Metric charts as inline SVG: per metric, its value against the round, a line per participant.

Drawn in Python as plain SVG, so whatever holds them needs no script and no network: the run page
(``fedloom-run.html``) embeds them, and Jupyter shows them inline (``MetricCharts._repr_html_``).
With many participants a chart stays readable: a few lines are drawn individually, and everyone
is summarised by a min-max band and a mean line (the chart says so).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fedloom.tracking.records import MetricRecord

AGGREGATOR = "aggregator"  # the participant name of the aggregator's own records by default
AGGREGATOR_STEPS = ("start", "end")  # every flow runs these on the aggregator
DEFAULT_MAX_LINES = 10  # collaborator lines drawn individually before a chart summarises

# Distinct, colour-blind-friendly-ish hues for collaborators; the aggregator is near-black.
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea",
           "#0891b2", "#ca8a04", "#db2777", "#4f46e5", "#65a30d")
AGGREGATOR_COLOUR = "#111827"
MEAN_COLOUR = "#4b5563"
BAND_COLOUR = "#9ca3af"  # drawn at 30% opacity
BAND_SWATCH = "#e1e3e7"  # how that looks on white, for the legend
AGGREGATOR_DASHES = ("", "7 3", "2 3", "7 3 2 3")  # a second aggregator step, a third, ...

WIDTH = 640
PLOT_HEIGHT = 220
MARGIN_LEFT, MARGIN_RIGHT = 64, 16
LEGEND_COLUMN = 144  # px per legend entry: four columns
LEGEND_ROW = 16
MAX_MARKERS = 60  # points per line with a hover marker; longer lines get only the line's title


@dataclass(frozen=True)
class Point:
    """One value on a chart: ``x`` is the round, spread when a round has several values."""

    x: float
    round: int
    value: float
    step: str


@dataclass
class Series:
    """One line: a participant's values of one metric from one step."""

    label: str
    participant: str
    aggregator: bool
    points: list[Point] = field(default_factory=list)
    colour: str = AGGREGATOR_COLOUR
    dashes: str = ""


@dataclass(frozen=True)
class Band:
    """The collaborators summarised: per x, the lowest value, the mean and the highest."""

    participants: int
    rows: list[tuple[float, float, float, float]]  # (x, low, mean, high)


@dataclass
class Chart:
    """What one metric's chart draws, before any coordinates."""

    name: str
    lines: list[Series]  # drawn one by one (the aggregator's last, on top)
    band: Band | None = None
    notes: list[str] = field(default_factory=list)


class MetricCharts:
    """One chart per metric name. ``aggregators``: the participant names whose records are the
    aggregator's own (drawn thick and dark) — besides ``"aggregator"`` and whoever logged in
    ``start`` or ``end``, which run on the aggregator; ``max_lines``: collaborator lines drawn
    one by one in a chart before it shows a min-max band and a mean line for all of them."""

    def __init__(self, records: Iterable[MetricRecord], aggregators: Iterable[str] = (),
                 max_lines: int = DEFAULT_MAX_LINES) -> None:
        self.records = list(records)
        self.aggregators = frozenset(aggregators).union(
            {AGGREGATOR}, (r.participant for r in self.records if r.step in AGGREGATOR_STEPS))
        self.max_lines = max(0, max_lines)
        self._by_name: dict[str, list[MetricRecord]] = defaultdict(list)
        for record in self.records:
            self._by_name[record.name].append(record)
        # One colour per collaborator across every chart, while the palette has enough.
        collaborators = dict.fromkeys(r.participant for r in self.records
                                      if r.participant not in self.aggregators)
        self._colours = list(collaborators) if len(collaborators) <= len(PALETTE) else []

    @property
    def names(self) -> list[str]:
        """Metric names, in the order they were first logged."""
        return list(self._by_name)

    def chart(self, name: str) -> Chart:
        """What the chart of metric ``name`` shows (lines, band, notes)."""
        if name not in self._by_name:
            raise KeyError(f"no metric named {name!r} was logged; logged: {self.names}")
        return build_chart(name, self._by_name[name], self.aggregators, self.max_lines,
                           self._colours)

    def svg(self, name: str) -> str:
        """The chart of metric ``name`` as a standalone SVG document (legend included)."""
        return render_svg(self.chart(name))

    def html(self) -> str:
        """Every chart, side by side where there is room: an HTML fragment, no script."""
        if not self.records:
            return "<p class='fedloom-metrics-empty'>No metrics were logged.</p>"
        figures = "".join(f"<figure class='metric-chart' data-metric='{_e(n)}' "
                          f"style='margin:0 0 12px 0'>{self.svg(n)}</figure>"
                          for n in self.names)
        return ("<div class='fedloom-metrics' style='display:flex;flex-wrap:wrap;"
                f"gap:16px;align-items:flex-start'>{figures}</div>")

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return f"MetricCharts({len(self.records)} records: {', '.join(self.names) or 'none'})"


def build_chart(name: str, records: Sequence[MetricRecord], aggregators: frozenset[str],
                max_lines: int, colour_order: Sequence[str] = ()) -> Chart:
    """Group ``records`` (all of metric ``name``) into lines, and summarise when there are many."""
    finite = [r for r in records if math.isfinite(r.value)]
    series = _series(finite, aggregators)
    ours = [s for s in series if s.aggregator]
    theirs = [s for s in series if not s.aggregator]
    chart = Chart(name, [])
    participants = {s.participant for s in theirs}
    if len(theirs) > max_lines:
        chart.band = _band(theirs, len(participants))
        theirs = _extremes(theirs, max_lines)
        chart.notes += _summary_notes(len(theirs), len(participants))
    _colour(theirs, colour_order)
    for i, line in enumerate(ours):
        line.dashes = AGGREGATOR_DASHES[i % len(AGGREGATOR_DASHES)]
    chart.lines = theirs + ours
    skipped = len(records) - len(finite)
    if skipped:
        chart.notes.append(f"{skipped} value(s) that are NaN or infinite are not drawn")
    return chart


def _series(records: Sequence[MetricRecord], aggregators: frozenset[str]) -> list[Series]:
    """A line per (participant, step); the step is named only where a participant logged the
    metric from more than one step. Several values in one round are spread across it."""
    grouped: dict[tuple[str, str], list[MetricRecord]] = defaultdict(list)
    for record in records:
        grouped[(record.participant, record.step)].append(record)
    steps_of: dict[str, int] = defaultdict(int)
    for participant, _ in grouped:
        steps_of[participant] += 1
    lines = []
    for (participant, step), rows in grouped.items():
        label = participant if steps_of[participant] == 1 else f"{participant} ({step})"
        lines.append(Series(label, participant, participant in aggregators, _points(rows)))
    return lines


def _points(rows: list[MetricRecord]) -> list[Point]:
    per_round: dict[int, list[MetricRecord]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r.round, r.time)):
        per_round[row.round].append(row)
    return [Point(rnd + i / len(group), rnd, r.value, r.step)
            for rnd, group in per_round.items() for i, r in enumerate(group)]


def _band(lines: Sequence[Series], participants: int) -> Band:
    values: dict[float, list[float]] = defaultdict(list)
    for line in lines:
        for p in line.points:
            values[p.x].append(p.value)
    rows = [(x, min(v), math.fsum(v) / len(v), max(v)) for x, v in sorted(values.items())]
    return Band(participants, rows)


def _extremes(lines: Sequence[Series], count: int) -> list[Series]:
    """The ``count`` lines worth seeing one by one: the highest and lowest last values."""
    ranked = sorted(lines, key=lambda s: (s.points[-1].value, s.label))
    low, high = ranked[:count // 2], ranked[len(ranked) - (count - count // 2):]
    return low + high


def _summary_notes(shown: int, participants: int) -> list[str]:
    low = shown // 2
    return [f"{participants} participants: {shown} drawn one by one ({shown - low} highest and "
            f"{low} lowest at their last round),",
            f"grey band: min-max of all {participants}, dashed line: their mean"]


def _colour(lines: Sequence[Series], order: Sequence[str]) -> None:
    index = {name: i for i, name in enumerate(order)}
    for position, line in enumerate(lines):
        line.colour = PALETTE[index.get(line.participant, position) % len(PALETTE)]


# --- drawing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    """Where the plot area sits and what it spans: data to pixel coordinates."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo) * self.width

    def py(self, y: float) -> float:
        lo, hi = self.y_range
        return self.top + self.height - (y - lo) / (hi - lo) * self.height


def render_svg(chart: Chart) -> str:
    """The chart as an SVG document: title, notes, axes, band, lines with hover titles, legend."""
    top = 30 + 14 * len(chart.notes)
    frame = _frame(chart, top)
    legend_top = frame.top + frame.height + 48  # under the tick labels and "round"
    legend, legend_height = _legend(chart, legend_top)
    height = int(legend_top + legend_height)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' class='fedloom-chart' "
             f"data-metric='{_e(chart.name)}' width='{WIDTH}' height='{height}' "
             f"viewBox='0 0 {WIDTH} {height}' role='img' aria-label='{_e(chart.name)} by round' "
             "font-family='system-ui, sans-serif' font-size='11' fill='#1f2937'>",
             f"<rect width='{WIDTH}' height='{height}' fill='#ffffff'/>",
             f"<text x='{MARGIN_LEFT}' y='18' font-size='14' font-weight='600' "
             f"class='chart-title'>{_e(chart.name)}</text>"]
    parts += [f"<text x='{MARGIN_LEFT}' y='{32 + 14 * i}' class='chart-note' fill='#4b5563'>"
              f"{_e(note)}</text>" for i, note in enumerate(chart.notes)]
    parts.append(_axes(frame))
    if chart.band is not None:
        parts.append(_band_svg(chart.band, frame))
    parts += [_line_svg(line, frame) for line in chart.lines]
    parts.append(legend)
    parts.append("</svg>")
    return "".join(parts)


def _frame(chart: Chart, top: float) -> Frame:
    xs = [p.x for line in chart.lines for p in line.points]
    ys = [p.value for line in chart.lines for p in line.points]
    if chart.band is not None:
        xs += [row[0] for row in chart.band.rows]
        ys += [v for row in chart.band.rows for v in (row[1], row[3])]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi - x_lo < 1:  # one round: room on both sides
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    y_lo, y_hi = _nice_range(min(ys, default=0.0), max(ys, default=1.0))
    return Frame(MARGIN_LEFT, top + 8, WIDTH - MARGIN_LEFT - MARGIN_RIGHT, PLOT_HEIGHT,
                 (x_lo, x_hi), (y_lo, y_hi))


def nice_ticks(lo: float, hi: float, count: int = 5, minimum_step: float = 0.0) -> list[float]:
    """Round numbers (1, 2, 2.5 or 5 times a power of ten) from ``lo`` to ``hi``."""
    step = _nice_step(hi - lo, count, minimum_step)
    first = math.ceil(lo / step - 1e-9)
    return [(first + i) * step for i in range(math.floor(hi / step + 1e-9) - first + 1)]


def _nice_step(span: float, count: int, minimum_step: float) -> float:
    raw = max(span / max(count, 1), minimum_step, 1e-300)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo <= abs(hi) * 1e-12:  # a flat line: give it some room
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, 5, 0.0)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def _axes(frame: Frame) -> str:
    bottom, right = frame.top + frame.height, frame.left + frame.width
    parts = ["<g class='axes'>"]
    for y in nice_ticks(*frame.y_range):
        py = frame.py(y)
        parts.append(f"<line x1='{frame.left}' x2='{right}' y1='{py:.1f}' y2='{py:.1f}' "
                     f"stroke='#e5e7eb'/><text x='{frame.left - 6}' y='{py + 4:.1f}' "
                     f"text-anchor='end'>{_tick(y)}</text>")
    for x in nice_ticks(*frame.x_range, minimum_step=1.0):
        px = frame.px(x)
        parts.append(f"<line x1='{px:.1f}' x2='{px:.1f}' y1='{frame.top}' y2='{bottom}' "
                     f"stroke='#f3f4f6'/><text x='{px:.1f}' y='{bottom + 14}' "
                     f"text-anchor='middle'>{_tick(x)}</text>")
    parts.append(f"<rect x='{frame.left}' y='{frame.top}' width='{frame.width}' "
                 f"height='{frame.height}' fill='none' stroke='#9ca3af'/>"
                 f"<text x='{frame.left + frame.width / 2}' y='{bottom + 28}' "
                 "text-anchor='middle' fill='#4b5563'>round</text></g>")
    return "".join(parts)


def _band_svg(band: Band, frame: Frame) -> str:
    upper = [(frame.px(x), frame.py(high)) for x, _, _, high in band.rows]
    lower = [(frame.px(x), frame.py(low)) for x, low, _, _ in reversed(band.rows)]
    outline = upper + lower
    if len(band.rows) == 1:  # one round: a bar from the lowest to the highest value
        (x, low, _, high), = band.rows
        outline = [(frame.px(x) - 3, frame.py(high)), (frame.px(x) + 3, frame.py(high)),
                   (frame.px(x) + 3, frame.py(low)), (frame.px(x) - 3, frame.py(low))]
    who = f"{band.participants} participants"
    mean = Series(f"mean of {who}", "", False,
                  [Point(x, int(x), m, "") for x, _, m, _ in band.rows], MEAN_COLOUR, "5 3")
    titles = [f"round {int(x)}: mean {m!r}, min {low!r}, max {high!r} ({who})"
              for x, low, m, high in band.rows]
    return (f"<path class='band' d='{_path(outline)}Z' fill='{BAND_COLOUR}' fill-opacity='0.3' "
            f"stroke='none'><title>min-max of {_e(who)}</title></path>"
            + _line_svg(mean, frame, "mean", titles))


def _line_svg(line: Series, frame: Frame, kind: str = "",
              titles: Sequence[str] | None = None) -> str:
    """A line with its name on hover, and a marker per point with its exact value."""
    kind = kind or ("aggregator" if line.aggregator else "participant")
    width = {"aggregator": 3, "mean": 2}.get(kind, 1.5)
    coords = [(frame.px(p.x), frame.py(p.value)) for p in line.points]
    dashes = f" stroke-dasharray='{line.dashes}'" if line.dashes else ""
    parts = [f"<g class='series {kind}' data-label='{_e(line.label)}'>"
             f"<path class='line' d='{_path(coords)}' fill='none' stroke='{line.colour}' "
             f"stroke-width='{width}' stroke-linejoin='round'{dashes}>"
             f"<title>{_e(line.label)}</title></path>"]
    if len(line.points) <= MAX_MARKERS:
        titles = titles or [_point_title(line.label, p) for p in line.points]
        parts += [f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='{width + 1}' fill='{line.colour}'>"
                  f"<title>{_e(title)}</title></circle>"
                  for title, (cx, cy) in zip(titles, coords, strict=True)]
    parts.append("</g>")
    return "".join(parts)


def _point_title(label: str, point: Point) -> str:
    where = f"round {point.round}" + (f", {point.step}" if point.step else "")
    return f"{label}: {point.value!r} ({where})"  # repr: the exact value, shortest form


def _legend(chart: Chart, top: float) -> tuple[str, int]:
    """Entries in columns under the plot; long names cut short (the full name on hover)."""
    entries = [(s.label, s.colour, s.dashes, 3 if s.aggregator else 1.5) for s in chart.lines]
    if chart.band is not None:
        entries.append((f"mean of {chart.band.participants}", MEAN_COLOUR, "5 3", 2))
        entries.append((f"min-max of {chart.band.participants}", BAND_SWATCH, "", 8))
    columns = max(1, (WIDTH - MARGIN_LEFT) // LEGEND_COLUMN)
    parts = ["<g class='legend'>"]
    for i, (label, colour, dashes, width) in enumerate(entries):
        x = MARGIN_LEFT + (i % columns) * LEGEND_COLUMN
        y = top + (i // columns) * LEGEND_ROW
        dash = f" stroke-dasharray='{dashes}'" if dashes else ""
        shown = label if len(label) <= 19 else label[:18] + "…"
        parts.append(f"<g class='legend-entry'><title>{_e(label)}</title>"
                     f"<line x1='{x}' x2='{x + 18}' y1='{y - 4}' y2='{y - 4}' stroke='{colour}' "
                     f"stroke-width='{width}'{dash}/><text x='{x + 24}' y='{y}'>{_e(shown)}"
                     "</text></g>")
    parts.append("</g>")
    rows = -(-len(entries) // columns)
    return "".join(parts), rows * LEGEND_ROW + 4


def _path(coords: Sequence[tuple[float, float]]) -> str:
    return "".join(f"{'L' if i else 'M'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(coords))


def _tick(value: float) -> str:
    return f"{value:.4g}"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
