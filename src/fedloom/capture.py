"""Per-task capture of what a step prints, so output can be attributed and recorded."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO


@dataclass
class Captured:
    """Text a task printed; filled in when the capture ends."""

    stdout: str = ""
    stderr: str = ""


class _Tee(io.TextIOBase):
    """Writes to a buffer and, optionally, through to the original stream (live console)."""

    def __init__(self, through: TextIO | None) -> None:
        self.buffer_text = io.StringIO()
        self._through = through

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._through, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._through, "errors", None)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._through is None:
            raise io.UnsupportedOperation("captured output has no file descriptor")
        return self._through.fileno()

    def write(self, text: str) -> int:
        self.buffer_text.write(text)
        if self._through is not None:
            self._through.write(text)
        return len(text)

    def flush(self) -> None:
        if self._through is not None:
            self._through.flush()


@contextmanager
def capture_output(*, passthrough: bool) -> Iterator[Captured]:
    """Capture ``sys.stdout``/``sys.stderr``; the result is filled in on exit (also when the
    body raises). With ``passthrough`` the console still shows the output live."""
    result = Captured()
    saved = sys.stdout, sys.stderr
    out, err = _Tee(saved[0] if passthrough else None), _Tee(saved[1] if passthrough else None)
    sys.stdout, sys.stderr = out, err
    try:
        yield result
    finally:
        sys.stdout, sys.stderr = saved
        result.stdout = out.buffer_text.getvalue()
        result.stderr = err.buffer_text.getvalue()


def print_attributed(step: str, participant: str, stdout: str, stderr: str) -> None:
    """Print a task's captured output, each line prefixed with ``[step @ participant]``."""
    prefix = f"[{step} @ {participant}] "
    for text, stream in ((stdout, sys.stdout), (stderr, sys.stderr)):
        if text:
            stream.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))
            stream.flush()
