"""What crosses a transition: include/exclude filtering, private-attribute rules, and copying.

A flow's public state is a plain ``dict`` of attribute name to value. Private attributes live in
their participant and are attached to a step's ``self`` only while that participant runs it; these
helpers are the one place that enforces the rules between the two.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import json
import sys
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import methodcaller, not_
from typing import Any

import cloudpickle

from fedloom.errors import FedloomError, PrivateAttributeError, TransitionError

State = dict[str, Any]

# Values that can be shared between participants without a copy: nobody can change them.
_IMMUTABLE_TYPES = (int, float, complex, bool, str, bytes, type(None), range)
# As tuples, not ``str | bytes``: that makes a new union object each time it is evaluated.
_TEXT = (str, bytes)
_TUPLES = (tuple, frozenset)
_TEXT_OR_TUPLE = (str, bytes, tuple, frozenset)


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


# A join input's lists that the serial backend's chains shared (see
# fedloom.runtime.local.sharing): attribute -> the shared list, copied when first read.
SHARED_LISTS_KEY = "_fl_shared_lists"


def take_shared_list(attributes: dict[str, Any], name: str) -> list[Any] | None:
    """The input's own copy of shared list ``name``, now in ``attributes`` (its ``__dict__``);
    ``None`` when it has no such list."""
    shared = attributes.get(SHARED_LISTS_KEY)
    if shared is None or name not in shared:
        return None
    own: list[Any] = shared[name].copy()
    attributes[name] = own
    _forget_shared(attributes, shared, name)
    return own


def drop_shared_list(attributes: dict[str, Any], name: str) -> bool:
    """Forget shared list ``name`` of a join input; whether it had one."""
    shared = attributes.get(SHARED_LISTS_KEY)
    if shared is None or name not in shared:
        return False
    _forget_shared(attributes, shared, name)
    return True


def _forget_shared(attributes: dict[str, Any], shared: dict[str, Any], name: str) -> None:
    # The table may be every input's: this input gets one of its own without ``name``.
    rest = {key: value for key, value in shared.items() if key != name}
    if rest:
        attributes[SHARED_LISTS_KEY] = rest
    else:
        del attributes[SHARED_LISTS_KEY]


class StateCopier:
    """Makes independent copies of one state, many times (once per collaborator of a fan-out).

    How to copy each attribute is decided once, up front: immutable values are shared, numpy
    arrays are memcpy'd, flat containers of immutable values are shallow-copied, and anything else
    goes through ``copy.deepcopy``. A shared memo per copy keeps aliases aliased.
    """

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._plan = [(name, value, _copier_for(value)) for name, value in state.items()]
        # Without deep copies, a copy is a dict copy of the shared values (in the state's
        # order) and a C call per copied attribute (a fan-out makes one per collaborator);
        # a second name for an object gets the first name's copy.
        self._quick: tuple[State, tuple[str, ...], tuple[Any, ...],
                           list[tuple[str, str]]] | None = None
        if all(copier is not copy.deepcopy for _, _, copier in self._plan):
            first: dict[int, str] = {}
            template: State = {}
            names: list[str] = []
            values: list[Any] = []  # each copied with its own .copy() (arrays, flat ones)
            aliases: list[tuple[str, str]] = []
            for name, value, copier in self._plan:
                template[name] = value
                alias = first.setdefault(id(value), name)
                if copier is not None and alias == name:
                    names.append(name)
                    values.append(value)
                elif copier is not None:
                    aliases.append((name, alias))
            self._quick = (template, tuple(names), tuple(values), aliases)
        self._given = Given(
            flat={name: value for name, value, copier in self._plan if copier is _copy_flat},
            shared={name: value for name, value, copier in self._plan
                    if copier is None and type(value) not in _ATOM_TYPES})

    def lists_to_share(self) -> list[str]:
        """The attributes that are flat lists of atoms (text and numbers, e.g. the N names),
        each the only name for its list: what :meth:`share_as_is` may take over. None when
        anything is deep-copied: it may hold the list too, and its copy would then hold a
        copy of the list, not the shared one."""
        if self._quick is None:
            return []
        return [name for name, value, copier in self._plan
                if copier is _copy_flat and type(value) is list
                and _ATOM_TYPES.issuperset(map(type, value))
                and sum(other is value for _, other, _ in self._plan) == 1]

    def share_as_is(self, name: str, value: Any) -> None:
        """Put ``value`` under ``name`` in every copy from now on, as is: the caller sees to it
        that no two copies can tell (see ``fedloom.runtime.local.sharing``)."""
        self._plan = [(key, value, None) if key == name else (key, was, copier)
                      for key, was, copier in self._plan]
        if self._quick is not None:
            template, names, values, aliases = self._quick
            template[name] = value
            if name in names:
                keep = [i for i, key in enumerate(names) if key != name]
                self._quick = (template, tuple(names[i] for i in keep),
                               tuple(values[i] for i in keep), aliases)

    @property
    def shares_only_immutables(self) -> bool:
        """Whether copies share nothing but immutable values with the original (no deep copy:
        what ``copy.deepcopy`` keeps is up to each type)."""
        return self._quick is not None

    def given(self) -> Given:
        """What a collaborator's first step may assume about its copy, if the original reaches
        none of its private objects (see :func:`owners_reached`)."""
        return self._given

    def copy(self) -> State:
        if self._quick is not None:
            template, names, values, aliases = self._quick
            out = template.copy()
            out.update(zip(names, map(_COPY, values), strict=True))  # in C, in the same order
            for name, alias in aliases:
                out[name] = out[alias]
            return out
        out = {}
        memo: dict[int, Any] = {}
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
_COPY = methodcaller("copy")


def _copier_for(value: Any) -> Copier | None:
    if _is_immutable(value):
        return None
    if _is_plain_ndarray(value):
        return _copy_array
    if isinstance(value, list | dict | set) and type(value) in (list, dict, set):
        groups = (value.keys(), value.values()) if isinstance(value, dict) else (value,)
        # Keys too: a flat copy shares them, and the leak check counts on them not changing.
        if all(_ATOM_TYPES.issuperset(map(type, group)) or  # in C, e.g. the N names
               all(_is_immutable(v) for v in group) for group in groups):
            return _copy_flat  # no deepcopy per element
    return copy.deepcopy


def _is_immutable(value: Any) -> bool:
    if isinstance(value, _TUPLES):  # immutable only if what they hold is
        return all(_is_immutable(v) for v in value)
    return isinstance(value, _IMMUTABLE_TYPES)


def _copy_array(value: Any, memo: dict[int, Any]) -> Any:
    return value.copy()


def _copy_flat(value: Any, memo: dict[int, Any]) -> Any:
    return value.copy()  # a flat list/dict/set of immutable values


def _is_plain_ndarray(value: Any) -> bool:
    kind = type(value)
    if kind is not _ndarray[0]:
        if kind.__module__ != "numpy" or kind.__name__ != "ndarray":
            return False
        _ndarray[0] = kind  # numpy is imported only by flows that use it
    return bool(value.dtype.kind != "O")


_ndarray: list[type | None] = [None]


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


# -- private objects never become public --------------------------------------------------------
#
# The rule: no public value may reach a private object (be it, hold it, have it as an attribute,
# be a view of it). Walking the whole public state after every task would cost O(state) per
# task, and a fan-out's state holds O(N) things (the N collaborator names): O(N^2) a round. So a
# task whose given state is known to reach no private object (a Given) looks only at what its
# step could have changed: values that are new or rebound, and given ones it may have mutated.
# Skipped: text and numbers, plain arrays (their chain of bases is fixed when they are made),
# immutable values the fan-out shared, and flat containers the fan-out copied that still hold
# exactly what they were copied from (compared in C).


class Given:
    """What a task's leak check may assume about the public state the task is given: that it
    reaches none of the participant's private objects (it comes from a checked task, or from a
    fan-out that found it clean).

    ``flat``: attribute -> the flat container of immutable values its copy was made from;
    ``shared``: attribute -> the immutable value a fan-out shared as is. Both hold for the whole
    chain, whatever the steps rebind: the first is compared by content, the second by identity.
    """

    __slots__ = ("_texts", "flat", "shared")

    def __init__(self, flat: Mapping[str, Any] | None = None,
                 shared: Mapping[str, Any] | None = None) -> None:
        self.flat: Mapping[str, Any] = flat or {}
        self.shared: Mapping[str, Any] = shared or {}
        self._texts: dict[str, frozenset[Any]] = {}

    def texts_in(self, name: str) -> frozenset[Any]:
        """The text and bytes values inside flat attribute ``name``'s original (found once)."""
        found = self._texts.get(name)
        if found is None:
            found = self._texts[name] = frozenset(_texts_within(self.flat[name]))
        return found


class LeakCheck:
    """The private-attribute leak check of one participant's tasks: :meth:`before` each step,
    with what the task is given (``None``: nothing is known, so everything public is walked
    after the step), and :meth:`after` it, once the private attributes are back with their
    owner. What it works out about the private attributes (which objects to look for) is kept
    from one task to the next, and worked out again only when a step rebinds one."""

    __slots__ = ("_before", "_counts", "_given", "_ids", "_participant", "_public", "_targets")

    def __init__(self, participant: str, public_texts: Collection[str] = ()) -> None:
        self._participant = participant
        self._public = public_texts
        self._before: dict[str, Any] = {}  # holds the objects, so that their ids stay theirs
        self._ids: list[int] = []
        self._targets = _Targets()
        self._given: Given | None = None
        self._counts: list[int] | None = None

    def before(self, private: Mapping[str, Any], given: Given | None) -> None:
        self._given = given
        # The same objects (the snapshot holds them, so no other object has their ids) under
        # the same names: a step can only rebind or delete private attributes, never add one.
        if list(map(id, private.values())) != self._ids:
            self._remember(private)
        # A private object the step puts into a given flat container in place of a value equal
        # to it passes the content comparison; the container then holds one more reference to
        # it. Counted here and after the step by the same expression, with no local variable
        # holding one of them, so the counts compare.
        self._counts = list(map(sys.getrefcount, self._targets.objects)) \
            if given is not None and given.flat else None

    def _remember(self, private: Mapping[str, Any]) -> None:
        self._before = dict(private)
        self._ids = list(map(id, self._before.values()))
        self._targets = _targets_of(self._before, self._participant, self._public)

    def after(self, private: Mapping[str, Any], state: Mapping[str, Any], step: str) -> None:
        # First, before this frame holds a private object itself.
        then = self._counts
        counts = list(map(sys.getrefcount, self._targets.objects)) if then is not None else None
        # Any rise counts, whatever the private object is: a new object holding it (a view,
        # a wrapper) may be what passes for the value it replaced.
        new_references = counts is not None and counts != then and any(
            now > before for now, before in zip(counts, then or (), strict=True))
        rebound: Sequence[str] = ()
        if list(map(id, private.values())) == self._ids:
            targets = self._targets
        else:
            targets, rebound = self._rebound(private)  # the step rebound or deleted some
            self._remember(private)  # where the next task starts
        if not targets.ids:
            return
        given = self._given
        found = next(_walk(state.items(), targets), None) if given is None else \
            self._changed(given, private, state, targets, rebound, new_references)
        if found is not None:
            name, owner = found[0], targets.ids[found[1]]
            raise PrivateAttributeError(
                f"public attribute '{name}' holds (or is) the private attribute '{owner}'; it "
                f"would leave '{self._participant}'. Keep private data in '{owner}' and store "
                "only results (e.g. a metric) in public attributes, or, to share it on purpose, "
                f"a copy: self.{name} = fedloom.share(self.{owner}).",
                step=step, participant=self._participant)

    def _rebound(self, private: Mapping[str, Any]) -> tuple[_Targets, list[str]]:
        """The targets after a step that rebound (or deleted) private attributes, and the names
        of those now bound to another tracked object."""
        targets, rebound = _Targets(), []
        for name, value in private.items():
            if value is self._before.get(name, _NOTHING):
                if id(value) in self._targets.ids:
                    targets.add(value, name)
            elif _is_tracked(value, self._participant, self._public):
                targets.add(value, name)
                rebound.append(name)
        # What a rebound or deleted one held until this step is still private here: a step
        # that published it and then let go of it (self.pub = self.data; self.data = ...)
        # must not get it out.
        for name, old in self._before.items():
            if private.get(name, _NOTHING) is not old and id(old) in self._targets.ids and \
                    id(old) not in targets.ids:
                targets.add(old, name)
        return targets, rebound

    def _changed(self, given: Given, private: Mapping[str, Any], state: Mapping[str, Any],
                 targets: _Targets, rebound: Sequence[str],
                 new_references: bool) -> tuple[str, int] | None:
        """The first hit, looking only where the step could have made one."""
        ids, texts = targets.ids, targets.text_values
        flat, atoms, fresh = given.flat, _ATOM_TYPES, _ndarray[0]
        walk: list[tuple[str, Any]] = []
        skipped: list[tuple[str, Any]] = []  # only needed for rebound private attributes
        # Without text targets, atoms (text and numbers) can only be skipped: done in C.
        for name, value in state.items() if texts else _non_atoms(state):  # once per task
            kind = type(value)
            if kind in atoms:
                if texts and id(value) in ids:
                    return name, id(value)
                continue  # nothing inside; as a rebound target it was just looked at
            if id(value) in ids:
                return name, id(value)
            if kind is fresh and value.base is None:
                # Owns its data (e.g. a fan-out's fresh copy): it reaches nothing, whatever
                # its name, unless it holds objects.
                unchanged = value.dtype.kind != "O"
            elif name in flat:
                # Whether the flat copy holds what it was copied from: == compares each
                # element's identity first, in C; an element replaced by another object equal
                # to it is ruled out by the reference counts and the text values.
                original = flat[name]
                unchanged = False
                if not new_references and kind is type(original):
                    try:
                        unchanged = bool(value == original)
                    except Exception:  # e.g. an array put in it: == has no single truth value
                        unchanged = False
                if unchanged and texts:
                    unchanged = not any(text in given.texts_in(name) for text in texts)
            else:
                unchanged = given.shared.get(name, _NOTHING) is value or (
                    kind.__name__ == "ndarray" and _inert_array(value, ids))
            if not unchanged:
                walk.append((name, value))
            elif rebound:
                skipped.append((name, value))
        found = next(_walk(walk, targets), None) if walk else None
        if found is not None or not rebound:
            return found
        # A private attribute the step bound to another object may be one that the skipped
        # values held (their top level and arrays' bases were looked at already): only text,
        # or an object equal to text or a number, can hide among what they hold.
        hiding = _Targets()
        for name in rebound:
            if _may_pass_for_immutable(private[name]):
                hiding.add(private[name], name)
        return next(_walk(skipped, hiding), None) if hiding.ids and skipped else None


def _non_atoms(state: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The items of ``state`` whose value is not an atom (looked at in C)."""
    return compress(state.items(),
                    map(not_, map(_ATOM_TYPES.__contains__, map(type, state.values()))))


def owners_reached(state: Mapping[str, Any], privates: Mapping[str, Mapping[str, Any]],
                   public_texts: Collection[str] = (), *, texts_only: bool = False) -> set[str]:
    """The participants (``privates``: name -> private attributes) some of whose private
    objects ``state`` reaches: one walk for all of them. Made for a fan-out's state before it
    is copied to each collaborator (the copies share immutable values with it): those not
    named get a clean copy. ``texts_only``: only text and bytes can be shared (no deep
    copies), so only those private attributes are looked for."""
    targets = _Targets()
    owners: dict[int, list[str]] = {}
    for owner, private in privates.items():
        for name, value in private.items():
            if (not texts_only or isinstance(value, _TEXT)) and \
                    _is_tracked(value, owner, public_texts):
                targets.add(value, name)
                owners.setdefault(id(value), []).append(owner)
    if not targets.ids:
        return set()
    return {owner for _, key in _walk(state.items(), targets) for owner in owners[key]}


def check_no_leak(private: Mapping[str, Any], state: Mapping[str, Any], *, step: str,
                  participant: str, public_texts: Collection[str] = ()) -> None:
    """No public attribute may reach a private object — itself, inside a container, as an
    attribute of another object, or as the base of an array view — or private data would leave
    its owner (sent, copied, checkpointed). This checks all of ``state``; a task checks what
    its step changed with :class:`LeakCheck`."""
    check = LeakCheck(participant, public_texts)
    check.before(private, None)
    check.after(private, state, step=step)


class _Targets:
    """The private objects a walk looks for, by id (-> their private name); text and bytes
    among them separately, since they can hide among immutable values."""

    __slots__ = ("ids", "objects", "text_values", "texts")

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}
        self.objects: list[Any] = []
        # Made on first use: most private attributes are not text (a task makes a few of these).
        self.texts: set[int] | None = None
        self.text_values: list[Any] | None = None

    def add(self, value: Any, name: str) -> None:
        self.ids[id(value)] = name
        self.objects.append(value)
        if isinstance(value, _TEXT):
            if self.texts is None or self.text_values is None:
                self.texts, self.text_values = set(), []
            self.texts.add(id(value))
            self.text_values.append(value)


def _targets_of(private: Mapping[str, Any], participant: str,
                public_texts: Collection[str]) -> _Targets:
    targets = _Targets()
    for name, value in private.items():
        if _is_tracked(value, participant, public_texts):
            targets.add(value, name)
    return targets


def _is_tracked(value: Any, participant: str, public_texts: Collection[str]) -> bool:
    """Whether a private attribute's object must not become public."""
    by_type = _TRACKED_BY_TYPE.get(type(value))
    if by_type is not None:  # checked for every private attribute of every task: keep it quick
        return by_type
    if not isinstance(value, _TEXT_OR_TUPLE):
        # Otherwise it depends on the type only (see _trackable).
        if len(_TRACKED_BY_TYPE) < 1000:
            _TRACKED_BY_TYPE[type(value)] = _trackable(value)
        return _trackable(value)
    # Participant names are public, whoever holds them.
    return _trackable(value) and not (isinstance(value, str) and (
        value == participant or value in public_texts))


_TRACKED_BY_TYPE: dict[type, bool] = {}


_NOTHING: Any = object()
_WALK_BUDGET = 200_000  # objects visited per check: a bound on time, never on correctness
# Exactly these types (no subclasses): a flat group of them is looked at in C.
_ATOM_TYPES = frozenset({int, float, complex, bool, str, bytes, type(None), range})


def _walk(items: Iterable[tuple[str, Any]], targets: _Targets) -> Iterator[tuple[str, int]]:
    """(public name, id of the private object) for every target that a public value reaches;
    each object is looked into once."""
    ids, texts = targets.ids, targets.texts
    seen: set[int] = set()
    budget = _WALK_BUDGET
    for name, value in items:
        stack = [value]
        while stack and budget > 0:
            obj = stack.pop()
            budget -= 1
            if id(obj) in ids:
                yield name, id(obj)
                continue
            if id(obj) in seen or _is_leaf(obj):
                continue
            seen.add(id(obj))
            for group in _child_groups(obj):
                # A group of only text and numbers (e.g. the N names) can only *be* a target,
                # and only a text one: tested in C instead of one object at a time.
                if not _ATOM_TYPES.issuperset(map(type, group)) or \
                        (texts and not texts.isdisjoint(map(id, group))):
                    stack.extend(group)


def _child_groups(obj: Any) -> tuple[Collection[Any], ...]:
    if isinstance(obj, dict):
        return obj.keys(), obj.values()
    if isinstance(obj, list | tuple | set | frozenset):
        return (obj,)
    if type(obj) in _VIEWS or type(obj) in _ITERATORS:  # their container: no other way to it
        return (gc.get_referents(obj),)
    if isinstance(obj, _BOUND):
        return ([obj.__self__],)
    if isinstance(obj, types.FunctionType):  # what a closure or default values hold
        return (_closure_values(obj), obj.__defaults__ or (),
                (obj.__kwdefaults__ or {}).values())
    if isinstance(obj, functools.partial):
        return ([obj.func], obj.args, obj.keywords.values(), obj.__dict__.values())
    base = getattr(obj, "base", None) if _is_plain_ndarray(obj) else None
    if base is not None:
        return ([base],)  # a view of a private array is that array's data
    attributes = getattr(obj, "__dict__", None)
    return (attributes.values(),) if isinstance(attributes, dict) else ()


def _closure_values(function: types.FunctionType) -> list[Any]:
    values = []
    for cell in function.__closure__ or ():
        with contextlib.suppress(ValueError):  # a variable not yet assigned
            values.append(cell.cell_contents)
    return values


_VIEWS = frozenset({type({}.keys()), type({}.values()), type({}.items()), types.MappingProxyType})


def _inert_array(value: Any, targets: Mapping[int, str]) -> bool:
    """A plain array reaches only its chain of bases, which nothing can change later: it is
    inert unless that chain holds a target or ends in an object with attributes."""
    if not _is_plain_ndarray(value):
        return False
    base = value.base
    while base is not None:
        if id(base) in targets:
            return False
        if not _is_plain_ndarray(base):
            return getattr(base, "__dict__", None) is None and \
                not isinstance(base, dict | list | tuple | set | frozenset)
        base = base.base
    return True


def _texts_within(value: Any) -> Iterator[Any]:
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    for item in items:
        if isinstance(item, _TEXT):
            yield item
        elif isinstance(item, _TUPLES):
            yield from _texts_within(item)


def _may_pass_for_immutable(value: Any) -> bool:
    """Whether ``value`` may compare equal to text, a number or a tuple of them (and so sit in
    a flat container unnoticed by ``==``)."""
    if isinstance(value, _PASSABLE):
        return True  # subclasses too, whatever their own ==: the atom's == accepts them
    if type(value).__eq__ is _IDENTITY_EQ or type(value) in (list, dict):
        return False
    return not (_is_plain_ndarray(value) and value.size != 1)  # else == has no truth value


_IDENTITY_EQ: Any = object.__eq__
_PASSABLE = (str, bytes, int, float, complex, range, tuple, frozenset, set)  # set == frozenset


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
    if isinstance(value, _IMMUTABLE_TYPES):  # the most common, first
        return True
    if isinstance(value, _BOUND):
        return isinstance(value.__self__, types.ModuleType | None)  # a module's function
    if isinstance(value, types.FunctionType):  # unless it holds values of its own
        return not (value.__closure__ or value.__defaults__ or value.__kwdefaults__)
    return isinstance(value, _GLOBAL_TYPES) or \
        type(value).__name__ in ("ufunc", "_ArrayFunctionDispatcher")


# Callables bound to an object (d.sum, obj.method, d.__add__): they reach it.
_BOUND = (types.MethodType, types.BuiltinMethodType, types.MethodWrapperType)
# Iterators over a container reach it; gc.get_referents is the only way there from Python.
_EMPTY: tuple[Iterable[Any], ...] = ([], (), {}, set(), "", b"", range(0))
_ITERATORS = frozenset(type(iter(empty)) for empty in _EMPTY) | {
    type(reversed([])), type(iter({}.values())), type(iter({}.items())),
    map, filter, zip, enumerate}


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
