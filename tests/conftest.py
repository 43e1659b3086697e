"""Shared helpers for fedloom's tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fedloom import Aggregator, Collaborator, LocalRuntime

NAMES = ["intel@lab_5", "New York", "newDelhi$+7"]


def make_runtime(names: Sequence[str] = NAMES, *, agg_private: dict[str, Any] | None = None,
                 collab_private: Callable[[int, str], dict[str, Any]] | None = None,
                 backend: str = "single_process", **options: Any) -> LocalRuntime:
    """A LocalRuntime over ``names``; ``collab_private(index, name)`` makes each one's data."""
    agg = Aggregator()
    if agg_private:
        agg.private_attributes = agg_private
    collaborators = []
    for i, name in enumerate(names):
        c = Collaborator(name=name)
        if collab_private:
            c.private_attributes = collab_private(i, name)
        collaborators.append(c)
    return LocalRuntime(aggregator=agg, collaborators=collaborators, backend=backend, **options)


@pytest.fixture
def runtime() -> LocalRuntime:
    return make_runtime()
