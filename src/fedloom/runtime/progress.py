"""What the submitter sees while ``run()`` waits on a federation: at a terminal, a live line —
"waiting for the review by Seattle since 12:04:31", then a bar of rounds with the step running
and the latest line the flow printed — above which the flow's output scrolls; elsewhere (a
file, a pipe, a notebook) one plain line per change, through logging when it is set up (else
on stderr).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from fedloom.federation.transport.proto import fedloom_pb2 as pb

log = logging.getLogger("fedloom.runtime.federated")

LATEST_CHARS = 80  # of the latest line the flow printed, on the live line


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


class RunDisplay:
    """Follows one experiment's events for its submitter; :meth:`close` when the run ends.
    ``rounds``: how many rounds the flow will run, when known (its ``rounds`` attribute)."""

    def __init__(self, experiment: str, rounds: int | None = None,
                 console: Console | None = None) -> None:
        self.experiment = experiment
        self.rounds = rounds
        self.status = "submitted"
        self.status_since = time.time()
        self.step: pb.Progress | None = None
        self.latest = ""
        console = console or Console(highlight=False)
        self._live: Live | None = None
        if console.is_terminal:
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
        self._say(f"experiment {self.experiment}: {text}{since}")

    def on_progress(self, progress: pb.Progress) -> None:
        self.step = progress
        names = list(progress.participants)
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
        self._say(f"experiment {self.experiment}: {self._round()}, step '{progress.step}' on "
                  f"{_envoys(len(names))} ({shown})")

    def on_output(self, output: pb.TaskInfo) -> None:
        lines = (output.stdout or output.stderr).rstrip("\n").splitlines()
        if lines:
            self.latest = f"[{output.step} @ {output.participant}] {lines[-1]}"

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _round(self) -> str:
        assert self.step is not None
        total = f"/{self.rounds}" if self.rounds else ""
        return f"round {self.step.round}{total}"

    def _say(self, line: str) -> None:
        if self._live is not None:
            log.debug("%s", line)
        elif log.hasHandlers():
            log.info("%s", line)
        else:
            print(line, file=sys.stderr, flush=True)

    def __rich__(self) -> RenderableType:
        """The live line (rich calls this at each refresh)."""
        if self.step is None:
            self._spinner.update(text=Text(
                f"experiment {self.experiment}: {self.status} since "
                f"{_clock(self.status_since)}" if " since " not in self.status
                else f"experiment {self.experiment}: {self.status}"))
            return self._spinner
        step = self.step
        done = max(step.round - 1, 0)
        bar = ProgressBar(total=float(self.rounds) if self.rounds else None,
                          completed=float(min(done, self.rounds or done)), width=30)
        line = Table.grid(padding=(0, 1))
        line.add_row(Text(f"experiment {self.experiment}"), bar, Text(
            f"{self._round()} · step '{step.step}' on {_envoys(len(step.participants))} · "
            f"{time.time() - step.at:.0f} s"))
        latest = self.latest if len(self.latest) <= LATEST_CHARS else \
            self.latest[:LATEST_CHARS - 1] + "…"
        return Group(line, Text(latest, style="dim")) if latest else line


def _envoys(count: int) -> str:
    return f"{count} envoy{'s' if count != 1 else ''}"


def rounds_of(flow: Any) -> int | None:
    """The number of rounds a flow says it will run (an int attribute ``rounds``), if any."""
    rounds = getattr(flow, "rounds", None)
    return rounds if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds > 0 \
        else None
