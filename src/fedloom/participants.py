"""Participants of a federation: the Aggregator and the Collaborators.

A participant holds a name, resource hints, and how to make its private attributes: a dict given
up front, or a callable (with keyword arguments) that is called where the participant lives — in
this process, inside a Ray actor, or on an envoy — so private data never has to travel.
"""

from __future__ import annotations

import keyword
import logging
from collections.abc import Callable
from typing import Any

from fedloom.errors import ParticipantError

log = logging.getLogger(__name__)

# Names a private attribute can't take: the engine and FLSpec use them.
RESERVED_NAMES = frozenset({"input", "runtime", "next", "run"})

PrivateAttributesCallable = Callable[..., dict[str, Any]]


class Participant:
    """Base of :class:`Aggregator` and :class:`Collaborator`."""

    role = "participant"

    def __init__(self, name: str | None = None,
                 private_attributes_callable: PrivateAttributesCallable | None = None,
                 num_cpus: float = 0, num_gpus: float = 0, **kwargs: Any) -> None:
        if name is None:
            name = self.role
        if not isinstance(name, str) or not name:
            raise ParticipantError(f"a {self.role}'s name must be a non-empty string, "
                                   f"got {name!r}")
        if private_attributes_callable is not None and not callable(private_attributes_callable):
            raise ParticipantError(
                f"{self.role} '{name}': private_attributes_callable must be a function returning "
                f"a dict, got {type(private_attributes_callable).__name__}")
        _check_resource(name, "num_cpus", num_cpus)
        _check_resource(name, "num_gpus", num_gpus)
        self.name = name
        self.private_attributes_callable = private_attributes_callable
        self.private_attributes_kwargs = kwargs
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self._private_attributes: dict[str, Any] = {}

    @property
    def private_attributes(self) -> dict[str, Any]:
        """Private attributes given as a dict (the callable, if any, is called at run time)."""
        return self._private_attributes

    @private_attributes.setter
    def private_attributes(self, attributes: dict[str, Any]) -> None:
        self._private_attributes = _checked_attributes(self.name, attributes, "private_attributes")

    def build_private_attributes(self) -> dict[str, Any]:
        """Make this participant's private attributes. Call it where the participant lives."""
        if self.private_attributes_callable is None:
            return dict(self._private_attributes)
        if self._private_attributes:
            log.warning("%s '%s' has both private_attributes and private_attributes_callable; "
                        "using the callable", self.role, self.name)
        try:
            made = self.private_attributes_callable(**self.private_attributes_kwargs)
        except Exception as exc:
            fn = getattr(self.private_attributes_callable, "__name__", "callable")
            raise ParticipantError(
                f"{self.role} '{self.name}': {fn}(**{sorted(self.private_attributes_kwargs)}) "
                f"raised {type(exc).__name__}: {exc}") from exc
        return _checked_attributes(self.name, made, "private_attributes_callable")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Aggregator(Participant):
    """The aggregator: runs ``@aggregator`` steps (``start``, joins, ``end``)."""

    role = "aggregator"


class Collaborator(Participant):
    """A collaborator: runs ``@collaborator`` steps on its own copy of the state."""

    role = "collaborator"


def _check_resource(name: str, what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ParticipantError(f"participant '{name}': {what} must be a number >= 0, "
                               f"got {value!r}")


def _checked_attributes(owner: str, attributes: Any, source: str) -> dict[str, Any]:
    if not isinstance(attributes, dict):
        raise ParticipantError(f"participant '{owner}': {source} must give a dict of "
                               f"name -> value, got {type(attributes).__name__}")
    for key in attributes:
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise ParticipantError(f"participant '{owner}': private attribute name {key!r} is "
                                   "not a valid Python attribute name")
        if key in RESERVED_NAMES or key.startswith("_"):
            raise ParticipantError(
                f"participant '{owner}': private attribute name {key!r} is reserved "
                f"(reserved: {sorted(RESERVED_NAMES)} and names starting with '_'); rename it")
    return dict(attributes)
