"""What crosses a transition: include/exclude filtering, private-attribute rules, and copying.

A flow's public state is a plain ``dict`` of attribute name to value. Private attributes live in
their participant and are attached to a step's ``self`` only while that participant runs it; these
helpers are the one place that enforces the rules between the two.
"""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from fedloom.errors import FedloomError, PrivateAttributeError, TransitionError

State = dict[str, Any]

# Values that can be shared between participants without a copy: nobody can change them.
_IMMUTABLE_TYPES = (int, float, complex, bool, str, bytes, type(None), range)


@dataclass(frozen=True)
class Transition:
    """What a step asked for with ``self.next(...)``."""

    step: str
    foreach: str | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None

    def describe(self) -> str:
        parts = [self.step]
        if self.foreach:
            parts.append(f"foreach={self.foreach!r}")
        if self.include is not None:
            parts.append(f"include={list(self.include)}")
        if self.exclude is not None:
            parts.append(f"exclude={list(self.exclude)}")
        return ", ".join(parts)


def transition_to_json(transition: Transition) -> str:
    return json.dumps({"step": transition.step, "foreach": transition.foreach,
                       "include": transition.include, "exclude": transition.exclude})


def transition_from_json(text: str) -> Transition:
    data = json.loads(text)
    return Transition(str(data["step"]), data.get("foreach"),
                      None if data.get("include") is None else tuple(data["include"]),
                      None if data.get("exclude") is None else tuple(data["exclude"]))


def select(state: Mapping[str, Any], transition: Transition, *, step: str,
           participant: str, private: Collection[str] = ()) -> State:
    """The part of ``state`` that ``transition`` sends (include/exclude applied, no copies)."""
    names = transition.include if transition.include is not None else transition.exclude
    if names is not None:
        missing = [n for n in names if n not in state]
        kind = "include" if transition.include is not None else "exclude"
        secret = [n for n in missing if n in private]
        if secret:
            raise TransitionError(
                f"{kind}= names {secret}, private attribute(s) of '{participant}': private "
                "attributes never leave their owner, so they can be neither sent nor excluded; "
                f"remove them from {kind}=", step=step, participant=participant)
        if missing:
            raise TransitionError(
                f"{kind}= names {missing}, which {'is' if len(missing) == 1 else 'are'} not in "
                f"the state when going to '{transition.step}'. Attributes present: "
                f"{sorted(state)}. Fix the name, or set the attribute before self.next().",
                step=step, participant=participant)
    if transition.include is not None:
        return {n: state[n] for n in transition.include}
    if transition.exclude is not None:
        dropped = set(transition.exclude)
        return {k: v for k, v in state.items() if k not in dropped}
    return dict(state)


class StateCopier:
    """Makes independent copies of one state, many times (once per collaborator of a fan-out).

    How to copy each attribute is decided once, up front: immutable values are shared, numpy
    arrays are memcpy'd, flat containers of immutable values are shallow-copied, and anything else
    goes through ``copy.deepcopy``. A shared memo per copy keeps aliases aliased.
    """

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._plan = [(name, value, _copier_for(value)) for name, value in state.items()]

    def copy(self) -> State:
        memo: dict[int, Any] = {}
        out: State = {}
        for name, value, copier in self._plan:
            if copier is None:
                out[name] = value
                continue
            found = memo.get(id(value))
            if found is None:
                found = memo[id(value)] = copier(value, memo)
            out[name] = found
        return out


def uncopyable(state: Mapping[str, Any], step: str, error: Exception, *, to: str = "",
               copies: Callable[[Any], bool] | None = None) -> TransitionError:
    """The error for a state that can't be copied or serialised, naming the culprit: at a
    fan-out into ``step`` by default; ``to`` says where else it went (a federation's wire, whose
    ``copies`` test differs), and without a ``step`` there is no transition to exclude it at."""
    fits = copies or _copies
    culprit = next((name for name, value in state.items() if not fits(value)), None)
    what = f"public attribute '{culprit}'" if culprit else "the state"
    to = to or f"copied to each collaborator of '{step}'"
    # fedloom's own errors say why in their words; one that wraps another's: that one
    cause = error.__cause__ if isinstance(error, FedloomError) else None
    why = error if cause is None else cause
    reason = str(why) if isinstance(why, FedloomError) else f"{type(why).__name__}: {why}"
    leave_out = f"leave it out with exclude=['{culprit or '...'}']" if step else \
        "leave it out of the flow's state"
    return TransitionError(f"{what} cannot be {to} ({reason}). Make it a private attribute of "
                           f"its owner, or {leave_out}.")


def _copies(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


def copy_state(state: Mapping[str, Any]) -> State:
    """One independent copy of ``state``."""
    return StateCopier(state).copy()


Copier = Callable[[Any, dict[int, Any]], Any]


def _copier_for(value: Any) -> Copier | None:
    if _is_immutable(value):
        return None
    if _is_plain_ndarray(value):
        return _copy_method
    if isinstance(value, list | dict | set) and type(value) in (list, dict, set):
        items = value.values() if isinstance(value, dict) else value
        if all(_is_immutable(v) for v in items):
            return _copy_method  # e.g. the list of collaborator names: no deepcopy per element
    return copy.deepcopy


def _is_immutable(value: Any) -> bool:
    if isinstance(value, tuple | frozenset):  # immutable only if what they hold is
        return all(_is_immutable(v) for v in value)
    return isinstance(value, _IMMUTABLE_TYPES)


def _copy_method(value: Any, memo: dict[int, Any]) -> Any:
    return value.copy()  # ndarray, or a flat list/dict/set of immutable values


def _is_plain_ndarray(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ == "ndarray" and value.dtype.kind != "O"


def check_no_collision(private_names: Collection[str], state: Mapping[str, Any], *,
                       step: str, participant: str) -> None:
    """Private attribute names must not shadow public flow attributes."""
    if not private_names:
        return
    clash = sorted(n for n in private_names if n in state)
    if clash:
        raise PrivateAttributeError(
            f"private attribute(s) {clash} of '{participant}' have the same name as public flow "
            f"attribute(s) {clash}. Rename the private attribute (e.g. '{clash[0]}_private') or "
            "the flow attribute, or exclude it from the transition into this step.",
            step=step, participant=participant)


def check_no_leak(private: Mapping[str, Any], state: Mapping[str, Any], *, step: str,
                  participant: str, public_texts: Collection[str] = ()) -> None:
    """No public attribute may reach a private object — itself, inside a container, as an
    attribute of another object, or as the base of an array view — or private data would leave
    its owner (sent, copied, checkpointed)."""
    if not private:
        return
    public = frozenset(public_texts)  # e.g. participant names: public, whoever holds them
    private_ids = {id(v): k for k, v in private.items()
                   if _trackable(v) and not (isinstance(v, str) and v in public)}
    if not private_ids:
        return
    found = _reaching(state, private_ids)
    if found is not None:
        name, owner = found
        raise PrivateAttributeError(
            f"public attribute '{name}' holds (or is) the private attribute '{owner}'; it would "
            f"leave '{participant}'. Keep private data in '{owner}' and store only results "
            "(e.g. a metric) in public attributes, or, to share it on purpose, a copy: "
            f"self.{name} = fedloom.share(self.{owner}).",
            step=step, participant=participant)


_WALK_BUDGET = 200_000  # objects visited per check: a bound on time, never on correctness


def _reaching(state: Mapping[str, Any], targets: Mapping[int, str]) -> tuple[str, str] | None:
    """(public name, private name) for the first public value that reaches a target object."""
    seen: set[int] = set()
    budget = _WALK_BUDGET
    for name, value in state.items():
        stack = [value]
        while stack and budget > 0:
            obj = stack.pop()
            budget -= 1
            owner = targets.get(id(obj))
            if owner is not None:
                return name, owner
            if id(obj) in seen or _is_leaf(obj):
                continue
            seen.add(id(obj))
            stack.extend(_children(obj))
    return None


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    base = getattr(obj, "base", None) if _is_plain_ndarray(obj) else None
    if base is not None:
        return [base]  # a view of a private array is that array's data
    attributes = getattr(obj, "__dict__", None)
    return list(attributes.values()) if isinstance(attributes, dict) else []


_GLOBAL_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


# A private string this long that is not identifier-like is the participant's own object: Python
# interns only identifier-like strings, so no unrelated value is the same object (a token, a
# path, a key read at run time). Shorter ones and numbers may be shared by coincidence; long
# identifier-like ones (API tokens such as ghp_..., AKIA...) rarely are.
_DISTINCT_TEXT = 8
_DISTINCT_NAME = 16


def share(value: Any) -> Any:
    """A copy of ``value`` that may leave its owner: the leak check refuses a public attribute
    that *is* a private object (or reaches one), so publishing private data takes this explicit
    step. Text and bytes get a new object of the same value; anything else a deep copy."""
    if isinstance(value, str):
        return "".join(list(value))  # str(), copy and slicing all return the same object
    if isinstance(value, bytes):
        return bytes(bytearray(value))
    return copy.deepcopy(value)


def _trackable(value: Any) -> bool:
    """Whether a public value being this very object can only mean the private one leaked."""
    if isinstance(value, str):
        return len(value) >= (_DISTINCT_NAME if value.isidentifier() else _DISTINCT_TEXT)
    if isinstance(value, bytes):
        return len(value) >= _DISTINCT_TEXT
    return not _is_shared_global(value)


def _is_leaf(value: Any) -> bool:
    """Nothing private can be reached through it (tuples and frozensets are walked)."""
    return isinstance(value, (*_IMMUTABLE_TYPES, *_GLOBAL_TYPES)) or \
        type(value).__name__ in ("ufunc", "_ArrayFunctionDispatcher")


def _is_shared_global(value: Any) -> bool:
    """Functions, classes and modules are the same objects everywhere; holding one is no leak."""
    if _is_immutable(value) or isinstance(value, _GLOBAL_TYPES):
        return True
    return type(value).__name__ in ("ufunc", "_ArrayFunctionDispatcher")  # numpy functions


def validate_name_list(value: Any, kind: str) -> tuple[str, ...] | None:
    """Runtime check of an include=/exclude= argument."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or \
            not all(isinstance(n, str) for n in value):
        raise TransitionError(f"{kind}= must be a list of attribute names, got {value!r}; "
                              f"write {kind}=['model', ...]")
    return tuple(value)
