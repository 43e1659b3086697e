"""What whoever runs a flow sees while ``run()`` works: at a terminal, a live line — for a
federation "waiting for the review by Seattle since 12:04:31" first — then a bar of rounds with
the step running, the latest line the flow printed and the latest value of each metric (per
participant, and their mean), above which the flow's output scrolls; elsewhere (a file, a pipe,
a notebook) one plain line per change, through logging when it is set up (else on stderr).
FederatedRuntime and LocalRuntime both show it; ``progress=False`` or ``FEDLOOM_PROGRESS=0``
turns it off (see :func:`progress_enabled`).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from fedloom.tracking.records import MetricRecord

log = logging.getLogger("fedloom.runtime.federated")

LATEST_CHARS = 80  # of the latest line the flow printed, on the live line
SHOWN_METRICS = 8  # metrics on the live display (the latest ones logged)
SHOWN_PARTICIPANTS = 4  # per metric, before "+N"
PROGRESS_ENV = "FEDLOOM_PROGRESS"
_OFF = frozenset({"0", "false", "no", "off"})


def progress_enabled(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` when given (a runtime's ``progress=``), else
    on unless the environment says ``FEDLOOM_PROGRESS=0`` (or false/no/off)."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_ENV, "").strip().lower() not in _OFF


class Progress(Protocol):
    """A step sent out: ``pb.Progress`` from a director, or :class:`StepProgress` locally."""

    @property
    def step(self) -> str: ...

    @property
    def round(self) -> int: ...

    @property
    def participants(self) -> Sequence[str]: ...

    @property
    def at(self) -> float: ...


class Output(Protocol):
    """A task's output (``pb.TaskInfo``)."""

    @property
    def step(self) -> str: ...

    @property
    def participant(self) -> str: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


@dataclass(frozen=True)
class StepProgress:
    """A local fan-out, as a director's Progress event tells one."""

    step: str
    round: int
    participants: Sequence[str]
    at: float


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


class RunDisplay:
    """Follows one run — an experiment's events for its submitter, or a local run's fan-outs
    and metrics — and :meth:`close` when it ends. ``rounds``: how many rounds the flow will
    run, when known (its ``rounds`` attribute). ``title`` starts every line (default
    "experiment ID"); ``noun``: what participants are called; ``aggregator``: the name whose
    metrics are not part of a metric's mean; ``enabled=False`` shows nothing (lines go to
    the debug log)."""

    def __init__(self, experiment: str, rounds: int | None = None,
                 console: Console | None = None, *, title: str | None = None,
                 noun: str = "envoy", aggregator: str = "aggregator", enabled: bool = True,
                 logger: logging.Logger | None = None) -> None:
        self.experiment = experiment
        self.title = title or f"experiment {experiment}"
        self.rounds = rounds
        self.noun = noun
        self.aggregator = aggregator
        self.enabled = enabled
        self.status = "submitted"
        self.status_since = time.time()
        self.step: Progress | None = None
        self.latest = ""
        # metric name -> participant -> its latest value (names in the order last logged)
        self.values: dict[str, dict[str, float]] = {}
        self._unsaid: list[str] = []  # metrics updated since the last plain line about them
        self._log = logger or log
        # The stdout of now, fixed: a step's captured output (checkpointing) writes through to
        # the live display's proxy, which must not find the capture again as its console's file.
        console = console or Console(highlight=False, file=sys.stdout)
        self._live: Live | None = None
        if enabled and console.is_terminal:
            self._spinner = Spinner("dots", style="cyan")
            self._live = Live(self, console=console, refresh_per_second=4, transient=True,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.start()

    @property
    def live(self) -> bool:
        return self._live is not None

    def on_status(self, text: str) -> None:
        if text == self.status:
            return
        self.status, self.status_since = text, time.time()
        since = "" if " since " in text or text == "running" else \
            f" since {_clock(self.status_since)}"
        self._say(f"{self.title}: {text}{since}")

    def on_progress(self, progress: Progress) -> None:
        self._say_metrics()  # what the previous round logged, before the next one starts
        self.step = progress
        names = list(progress.participants)
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
        self._say(f"{self.title}: {self._round()}, step '{progress.step}' on "
                  f"{self._count(len(names))} ({shown})")

    def on_fan_out(self, step: str, round: int, participants: Sequence[str]) -> None:
        """A local fan-out (the engine's :class:`~fedloom.engine.RunObserver`)."""
        self.on_progress(StepProgress(step, round, list(participants), time.time()))

    def on_output(self, output: Output) -> None:
        lines = (output.stdout or output.stderr).rstrip("\n").splitlines()
        if lines:
            self.latest = f"[{output.step} @ {output.participant}] {lines[-1]}"

    def on_metrics(self, records: Sequence[MetricRecord]) -> None:
        for record in records:
            values = self.values.pop(record.name, {})  # re-inserted: latest logged last
            values[record.participant] = record.value
            self.values[record.name] = values
            if record.name not in self._unsaid:
                self._unsaid.append(record.name)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._unsaid = []  # the live display showed them
        self._say_metrics()

    def metric_line(self, name: str) -> str:
        """``name``'s latest values: the aggregator's, the collaborators' mean and each one's."""
        # A copy (one C call): the live display's refresh thread calls this while the run's
        # thread may be adding values.
        values = dict(self.values.get(name, {}))
        parts = []
        if self.aggregator in values:
            parts.append(f"{self.aggregator} {_number(values[self.aggregator])}")
        others = {p: v for p, v in values.items() if p != self.aggregator}
        if len(others) > 1:
            parts.append(f"mean {_number(statistics.fmean(others.values()))}")
        if others:
            shown = [f"{p} {_number(v)}" for p, v in list(others.items())[:SHOWN_PARTICIPANTS]]
            more = len(others) - SHOWN_PARTICIPANTS
            parts.append(", ".join(shown) + (f" (+{more})" if more > 0 else ""))
        return f"{name}: " + " · ".join(parts)

    def _say_metrics(self) -> None:
        if self._unsaid and self._live is None:
            self._say(f"{self.title}: " + "; ".join(self.metric_line(n) for n in self._unsaid))
        self._unsaid = []

    def _round(self) -> str:
        assert self.step is not None
        total = f"/{self.rounds}" if self.rounds else ""
        return f"round {self.step.round}{total}"

    def _count(self, count: int) -> str:
        return f"{count} {self.noun}{'s' if count != 1 else ''}"

    def _say(self, line: str) -> None:
        if self._live is not None or not self.enabled:
            self._log.debug("%s", line)
        elif self._log.hasHandlers():
            self._log.info("%s", line)
        else:
            print(line, file=sys.stderr, flush=True)

    def __rich__(self) -> RenderableType:
        """The live line (rich calls this at each refresh)."""
        if self.step is None:
            self._spinner.update(text=Text(
                f"{self.title}: {self.status} since "
                f"{_clock(self.status_since)}" if " since " not in self.status
                else f"{self.title}: {self.status}"))
            return self._spinner
        step = self.step
        done = max(step.round - 1, 0)
        bar = ProgressBar(total=float(self.rounds) if self.rounds else None,
                          completed=float(min(done, self.rounds or done)), width=30)
        line = Table.grid(padding=(0, 1))
        line.add_row(Text(self.title), bar, Text(
            f"{self._round()} · step '{step.step}' on {self._count(len(step.participants))} · "
            f"{time.time() - step.at:.0f} s"))
        latest = self.latest if len(self.latest) <= LATEST_CHARS else \
            self.latest[:LATEST_CHARS - 1] + "…"
        rows: list[RenderableType] = [line]
        if latest:
            rows.append(Text(latest, style="dim"))
        rows.extend(Text(self.metric_line(name), style="green")
                    for name in list(self.values)[-SHOWN_METRICS:])
        return Group(*rows)


def _number(value: float) -> str:
    return f"{value:.4g}"


def rounds_of(flow: Any) -> int | None:
    """The number of rounds a flow says it will run (an int attribute ``rounds``), if any."""
    rounds = getattr(flow, "rounds", None)
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds > 0 \
        else None
