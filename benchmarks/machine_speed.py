"""How fast this machine runs plain Python right now, printed with every benchmark's figures.

On a shared machine the speed changes from day to day and within a day (on the 2-core machine
the docs' figures come from, this loop takes ~0.36-0.40 s on a normal day and up to about twice
that on a slowed one), so figures from two runs compare only when this line does; a benchmark
that runs for minutes prints it again at its end.
"""

from __future__ import annotations

import time

LOOP_STEPS = 10_000_000


def python_loop_seconds(repeats: int = 2) -> float:
    """The best of ``repeats`` timings of a plain LOOP_STEPS-step Python loop."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        total = 0
        for step in range(LOOP_STEPS):
            total += step
        best = min(best, time.perf_counter() - began)
    return best


def speed_line(when: str = "now") -> str:
    return (f"machine speed {when}: a {LOOP_STEPS // 1_000_000}M-step Python loop takes "
            f"{python_loop_seconds():.2f} s (compare figures only between runs with similar "
            "times)")
