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
    retries: int = 0  # collaborator steps: run again this many times when the step raises


def placement_of(func: object) -> Placement | None:
    """The placement recorded on ``func``, or None for an undecorated callable."""
    found = getattr(func, PLACEMENT_ATTR, None)
    return found if isinstance(found, Placement) else None


def _mark(func: F, role: Role, resources: dict[str, Any]) -> F:
    if not callable(func):
        raise TypeError(f"@{role} decorates a step method, got {func!r}")
    options = dict(resources)
    retries = options.pop("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TypeError(f"@{role}(retries={retries!r}) on {func.__name__}: retries is a whole "
                        "number >= 0")
    if retries and role != "collaborator":
        raise TypeError(f"@aggregator(retries=...) on {func.__name__}: only collaborator steps "
                        "retry (an aggregator step that fails stops the run)")
    setattr(func, PLACEMENT_ATTR, Placement(role, options, retries))
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
    """Run this step on each collaborator of the fan-out, e.g. ``@collaborator(num_gpus=1)``.
    ``@collaborator(retries=2)`` runs the step up to twice more, each time on the state it was
    given, when it raises; every attempt is logged and checkpointed as an attempt."""
    return _decorator("collaborator", func, resources)
