"""One copy of a fan-out's flat lists for all of the serial backend's chains, not one each.

A realistic state carries ``self.collaborators``, N names: at N=1000 a round made 1000 copies of
a 1000-long list, 8 MB of fresh memory and a million reference-count updates, about a quarter of
the round. The serial backend runs its chains one after another, so they can take turns with
one copy as long as none of them can tell. After each chain the shared list must still hold the
very objects it was copied with (not just equal ones: 1 == 1.0 == True), and be referenced only
from the top level of the chain's result (counted with ``sys.getrefcount``). A chain that
changed it, or kept it anywhere else (a private attribute, a held-back value, inside another
value, a failure's traceback), or whose state outlives it (its flow instance kept anywhere),
keeps it as its own: the earlier chains that used the same copy each get their own, and the
later ones a new shared one. At the join each input makes its own copy of the list when it is
first read (see :func:`fedloom.state.take_shared_list`), so a join that changes one input's
list changes no other's.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any

from fedloom.spec.flowspec import FLSpec
from fedloom.state import SHARED_LISTS_KEY, State, StateCopier

_count = sys.getrefcount
# The references to a chain's result that nobody kept: its ChainResult's, settle's parameter and
# getrefcount's argument. More means something outlived the chain that can reach the list
# through the state (the flow instance, in a global, a frame, or garbage whose finalizer has yet
# to run).
_UNKEPT_RESULT = 3
_POINTER = ctypes.sizeof(ctypes.c_void_p)
# CPython's list object ends with its item array's address and the array's capacity.
_ITEMS_FIELD = list.__basicsize__ - 2 * _POINTER


def _items_field(values: list[Any]) -> ctypes.c_void_p:
    """The field of ``values`` that holds its item array's address (moves when it grows)."""
    return ctypes.c_void_p.from_address(id(values) + _ITEMS_FIELD)


def _item_addresses(values: list[Any]) -> bytes:
    """The addresses of the list's items, in order: equal for two lists exactly when they hold
    the same objects (an == that no equal stand-in passes), compared in C."""
    if not values:
        return b""
    return ctypes.string_at(_items_field(values).value or 0, _POINTER * len(values))


def _layout_is_known() -> bool:
    """Whether :func:`_item_addresses` reads what it says here (CPython's list layout); where
    not, nothing is shared and every chain gets its own copy, as before."""
    if sys.implementation.name != "cpython":
        return False
    probe = ["fedloom", 1, None]
    return _item_addresses(probe) == struct.pack(f"{len(probe)}P", *map(id, probe))


SHARING = _layout_is_known()


class _Pristine:
    """A shared list as it was handed out: its own copy (which keeps the items alive, so their
    addresses stay theirs) and, for the shared copy in use, the item addresses to compare."""

    __slots__ = ("items", "length", "values", "view")

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.items = _item_addresses(values)
        self.length = len(values)
        self.view = ctypes.c_char * len(self.items)  # an item array's bytes, read in place

    def holds_as_handed_out(self, shared: list[Any]) -> bool:
        """Call only for a list that nothing else can reach (see SharedLists.settle): no
        finalizer, signal handler or thread may then change it, and free the item array,
        between reading its address and its items."""
        if len(shared) != self.length:  # then the item array has that many to read
            return False
        address = _items_field(shared).value  # None only for an empty list's
        return address is None or self.view.from_address(address).raw == self.items


def _read_through_fallback(flow_cls: type[FLSpec], name: str) -> bool:
    """Whether a join input without ``name`` in its attributes reads it from FLSpec.__getattr__
    (which hands it its shared list): not if the class has an attribute of that name (a
    default, a method, FLSpec.metrics) or looks attributes up its own way."""
    return not hasattr(flow_cls, name) and all(
        getattr(flow_cls, method) is getattr(FLSpec, method)
        for method in ("__getattribute__", "__getattr__", "__delattr__", "__copy__"))


class SharedLists:
    """The shared lists of one fan-out. Around each chain: :meth:`counts` once the chain's copy
    of the state is made, :meth:`settle` once it is done; :meth:`finish` after the last."""

    __slots__ = ("_copier", "_current", "_holders", "_pristine")

    def __init__(self, copier: StateCopier, sent: State, flow_cls: type[FLSpec]) -> None:
        self._copier = copier
        names = [name for name in copier.lists_to_share()
                 if _read_through_fallback(flow_cls, name)] if SHARING else []
        self._pristine = {name: _Pristine(sent[name].copy()) for name in names}
        self._current: dict[str, list[Any]] = {}
        self._holders: dict[str, list[State]] = {}  # finished chains' results using the copy
        for name in self._pristine:
            self._renew(name)

    def _renew(self, name: str) -> None:
        pristine = self._pristine[name]
        shared = pristine.values.copy()  # the same items, so the same addresses
        self._current[name] = shared
        self._holders[name] = []
        self._copier.share_as_is(name, shared)

    def counts(self) -> list[int]:
        """The reference counts of the shared lists (the same expression in :meth:`settle`)."""
        return list(map(_count, self._current.values()))

    def settle(self, result: State | None, before: list[int]) -> None:
        """After a chain: ``result`` is its state for the join (``None`` if it failed or was
        dropped), and ``before`` the :meth:`counts` taken when its copy of the state (holding
        each shared list once) was made, which the caller no longer holds."""
        now = self.counts()
        # Counted before this frame holds it twice. A trace or profile hook (a debugger's, or
        # a step's own) is handed this frame, and so could reach the list: no sharing then.
        # (Code that walks the stack itself, sys._getframe in a gc callback say, is beyond
        # this: it can reach into anything in the process.)
        unkept = result if result is not None and _count(result) <= _UNKEPT_RESULT and \
            sys.gettrace() is None and sys.getprofile() is None else None
        taken: list[str] = []
        # Once per chain, so kept lean. The count is as before only if the result holds the
        # list exactly once, where the copy of the state had it, and nothing else holds it.
        # With nothing else holding the result either, nothing but this can reach the list:
        # only then are its items read.
        for (name, shared), was, count in zip(self._current.items(), before, now, strict=True):
            if unkept is not None and count == was and unkept.get(name) is shared and \
                    self._pristine[name].holds_as_handed_out(shared):
                self._holders[name].append(unkept)
            else:  # changed, kept elsewhere, renamed, reachable, or the chain failed
                taken.append(name)
        for name in taken:
            self._give_own_copies(name)
            self._renew(name)

    def _give_own_copies(self, name: str) -> None:
        """The earlier results that share the list each get a copy of it as handed out (their
        chains left it so)."""
        pristine = self._pristine[name].values
        for state in self._holders[name]:
            state[name] = pristine.copy()

    def finish(self) -> None:
        """After the fan-out: each result that still shares a list holds it for its join input
        to copy when first read, in a table under SHARED_LISTS_KEY (never changed: an input
        that reads or deletes the list gets a table of its own without it)."""
        only_one = len(self._current) == 1  # the usual case: then one table for all
        for name, shared in self._current.items():
            common = {name: shared}
            for state in self._holders[name]:
                del state[name]
                if only_one:
                    state[SHARED_LISTS_KEY] = common
                else:
                    state.setdefault(SHARED_LISTS_KEY, {})[name] = shared
        self._current.clear()
        self._holders.clear()
