"""Encode/decode speed of the restricted wire format against a plain memory copy.

For arrays of several sizes, times ``wire.dumps`` and ``wire.loads`` (which verifies checksums
and copies each buffer out of the frame so the result owns writable memory) against
``bytes(memoryview(array))``, the cost of one copy of the same bytes. CPU time of this process,
best of ``--repeat`` rounds.

    python benchmarks/wire_frames.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedloom.federation.transport.wire import dumps, loads

SIZES_MB = (1, 16, 200)


def _cpu_seconds(action: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        result = action()
        best = min(best, time.process_time() - start)
        del result
    return best


def _row(megabytes: int, repeat: int) -> list[str]:
    array = np.random.default_rng(0).random(megabytes * 125_000)
    memcpy = _cpu_seconds(lambda: bytes(memoryview(array)), repeat)
    encode = _cpu_seconds(lambda: dumps({"w": array}), repeat)
    frame = dumps({"w": array})
    decode = _cpu_seconds(lambda: loads(frame), repeat)
    return [str(megabytes), f"{memcpy * 1e3:.1f}", f"{encode * 1e3:.1f}", f"{decode * 1e3:.1f}",
            str(len(frame) - array.nbytes), f"{(encode + decode) / memcpy:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"wire frames (CPU time, best of {args.repeat})")
    for column in ("MB", "memcpy ms", "dumps ms", "loads ms", "frame overhead B",
                   "(dumps+loads) / memcpy"):
        table.add_column(column, justify="right")
    for megabytes in SIZES_MB:
        table.add_row(*_row(megabytes, args.repeat))
    Console(width=None if sys.stdout.isatty() else 140).print(table)  # logs: no wrapping


if __name__ == "__main__":
    main()
