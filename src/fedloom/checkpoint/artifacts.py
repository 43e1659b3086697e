"""Pickling a task's public state for the checkpoint, where the task ran (no Metaflow needed)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import cloudpickle

# Protocol 4 is what Metaflow's own artifacts use; its client unpickles with pickle.loads.
PROTOCOL = 4


def serialize_artifacts(state: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """Pickle each public attribute now, so later in-place changes don't leak into the record.

    cloudpickle keeps classes defined in a notebook or script (``__main__``) loadable by the
    Metaflow client in another process. Returns the blobs and the names that could not be
    pickled (the caller warns about those; they are skipped, not fatal)."""
    blobs: dict[str, bytes] = {}
    skipped: list[str] = []
    for name, value in state.items():
        try:
            blobs[name] = cloudpickle.dumps(value, protocol=PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
            skipped.append(name)
    return blobs, skipped
