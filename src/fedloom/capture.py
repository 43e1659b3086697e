"""Per-task capture of what a step prints, so output can be attributed and recorded."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class TaskOutput:
    """What one task (one step run by one participant) printed."""

    step: str
    participant: str
    stdout: str = ""
    stderr: str = ""


@dataclass
class _Buffers:
    stdout: io.StringIO = field(default_factory=io.StringIO)
    stderr: io.StringIO = field(default_factory=io.StringIO)


class _Tee(io.TextIOBase):
    """Writes to a buffer and, optionally, through to the original stream (live console)."""

    def __init__(self, buffer: io.StringIO, through: TextIO | None) -> None:
        self._buffer = buffer
        self._through = through

    def write(self, text: str) -> int:
        self._buffer.write(text)
        if self._through is not None:
            self._through.write(text)
        return len(text)

    def flush(self) -> None:
        if self._through is not None:
            self._through.flush()

    def isatty(self) -> bool:
        return False


@contextmanager
def capture_output(step: str, participant: str, *, passthrough: bool) -> Iterator[TaskOutput]:
    """Capture ``sys.stdout``/``sys.stderr`` for one task; the result is filled in on exit (also
    when the task raises). With ``passthrough`` the console still shows the output live."""
    result = TaskOutput(step, participant)
    buffers = _Buffers()
    saved = sys.stdout, sys.stderr
    sys.stdout = _Tee(buffers.stdout, saved[0] if passthrough else None)
    sys.stderr = _Tee(buffers.stderr, saved[1] if passthrough else None)
    try:
        yield result
    finally:
        sys.stdout, sys.stderr = saved
        result.stdout = buffers.stdout.getvalue()
        result.stderr = buffers.stderr.getvalue()


def print_attributed(output: TaskOutput, out: TextIO | None = None,
                     err: TextIO | None = None) -> None:
    """Print a task's captured output, each line prefixed with ``[step @ participant]``."""
    prefix = f"[{output.step} @ {output.participant}] "
    for text, stream in ((output.stdout, out or sys.stdout), (output.stderr, err or sys.stderr)):
        if text:
            lines = text.splitlines()
            stream.write("".join(f"{prefix}{line}\n" for line in lines))
            stream.flush()
