"""Placement decorators: ``@aggregator`` and ``@collaborator`` mark where a step runs.

They only record (on the function itself); the flow graph reads the marks. Both work bare
(``@collaborator``) or with resource hints (``@collaborator(num_gpus=1)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

Role = Literal["aggregator", "collaborator"]
F = TypeVar("F", bound=Callable[..., Any])

PLACEMENT_ATTR = "__fedloom_placement__"


@dataclass(frozen=True)
class Placement:
    """Where a step runs, plus optional per-step resource hints (used by the Ray backend)."""

    role: Role
    resources: dict[str, Any] = field(default_factory=dict)


def placement_of(func: object) -> Placement | None:
    """The placement recorded on ``func``, or None for an undecorated callable."""
    found = getattr(func, PLACEMENT_ATTR, None)
    return found if isinstance(found, Placement) else None


def _mark(func: F, role: Role, resources: dict[str, Any]) -> F:
    if not callable(func):
        raise TypeError(f"@{role} decorates a step method, got {func!r}")
    setattr(func, PLACEMENT_ATTR, Placement(role, dict(resources)))
    # Readable markers kept for flows ported from OpenFL.
    func.aggregator_step = role == "aggregator"  # type: ignore[attr-defined]
    func.collaborator_step = role == "collaborator"  # type: ignore[attr-defined]
    return func


def _decorator(role: Role, func: Any, resources: dict[str, Any]) -> Any:
    if func is not None:
        return _mark(func, role, resources)

    def wrap(f: F) -> F:
        return _mark(f, role, resources)

    return wrap


@overload
def aggregator(func: F) -> F: ...
@overload
def aggregator(func: None = None, **resources: Any) -> Callable[[F], F]: ...
def aggregator(func: Any = None, **resources: Any) -> Any:
    """Run this step on the aggregator."""
    return _decorator("aggregator", func, resources)


@overload
def collaborator(func: F) -> F: ...
@overload
def collaborator(func: None = None, **resources: Any) -> Callable[[F], F]: ...
def collaborator(func: Any = None, **resources: Any) -> Any:
    """Run this step on each collaborator of the fan-out, e.g. ``@collaborator(num_gpus=1)``."""
    return _decorator("collaborator", func, resources)
