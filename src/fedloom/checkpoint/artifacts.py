"""Pickling a task's public state for the checkpoint, where the task ran (no Metaflow needed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cloudpickle

# Protocol 5 pickles large numpy arrays about twice as fast as 4; Metaflow's loader is
# pickle.loads, which reads every protocol.
PROTOCOL = 5


def serialize_artifacts(state: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """Pickle each public attribute now, so later in-place changes don't leak into the record.

    cloudpickle keeps classes defined in ``__main__`` or a notebook loadable by the Metaflow
    client in another process. Returns the blobs and the names that could not be pickled (locks,
    generators, a failing ``__reduce__``): those are skipped with a warning, never fatal."""
    blobs: dict[str, bytes] = {}
    skipped: list[str] = []
    for name, value in state.items():
        try:
            blobs[name] = cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:  # anything pickling raises means "cannot be recorded"
            skipped.append(name)
    return blobs, skipped
