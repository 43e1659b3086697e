"""How a list of participants reads in a status line, a log line or an error: the first few
names and how many more (a federation of a thousand envoys must not print a thousand names on
every change)."""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 5  # names in a status or log line
SHOWN_IN_ERRORS = 20  # names in an error message, which someone acts on


def listed(names: Sequence[str], shown: int = SHOWN) -> str:
    """``'a, b, c'``, or ``'a, b, c and 997 more'`` past ``shown`` names."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"
