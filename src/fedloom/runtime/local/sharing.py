"""One copy of a fan-out's flat lists for all of the serial backend's chains, not one each.

A realistic state carries ``self.collaborators``, N names: at N=1000 a round made 1000 copies of
a 1000-long list, 8 MB of fresh memory and a million reference-count updates, about a quarter of
the round. The serial backend runs its chains one after another, so they can take turns with
one copy as long as none of them can tell. After each chain the shared list must still hold what
it was copied from, and be referenced only from the top level of the chain's result (counted
with ``sys.getrefcount``). A chain that changed it, or kept it anywhere else (a private
attribute, a held-back value, inside another value, a failure's traceback) keeps it as its own:
the earlier chains that used the same copy each get their own, and the later ones a new shared
one. At the join each input makes its own copy of the list when it is first read (see
:func:`fedloom.state.take_shared_list`), so a join that changes one input's list changes no
other's.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

from fedloom.state import SHARED_LISTS_KEY, State, StateCopier

_count = sys.getrefcount


class SharedLists:
    """The shared lists of one fan-out. Around each chain: :meth:`counts` once the chain's copy
    of the state is made, :meth:`settle` once it is done; :meth:`finish` after the last."""

    __slots__ = ("_copier", "_current", "_holders", "_originals")

    def __init__(self, copier: StateCopier, sent: State) -> None:
        self._copier = copier
        self._originals: dict[str, list[Any]] = {name: sent[name]
                                                 for name in copier.lists_to_share()}
        self._current: dict[str, list[Any]] = {}
        self._holders: dict[str, list[State]] = {}  # finished chains' results using the copy
        for name in self._originals:
            self._renew(name)

    def _renew(self, name: str) -> None:
        shared = self._originals[name].copy()
        self._current[name] = shared
        self._holders[name] = []
        self._copier.share_as_is(name, shared)

    def counts(self) -> list[int]:
        """The reference counts of the shared lists (the same expression in :meth:`settle`)."""
        return list(map(_count, self._current.values()))

    def settle(self, result: State | None, before: list[int],
               verified: Collection[int] = ()) -> None:
        """After a chain: ``result`` is its state for the join (``None`` if it failed or was
        dropped), and ``before`` the :meth:`counts` taken when its copy of the state (holding
        each shared list once) was made, which the caller no longer holds. ``verified``: ids of
        lists that the chain's last leak check found equal to their originals (not compared
        again; an id is a shared list's for as long as it lives, and it lives throughout)."""
        now = self.counts()
        taken: list[str] = []
        # Once per chain, so kept lean. The count is as before only if the result holds the
        # list exactly once, where the copy of the state had it, and nothing else holds it.
        for (name, shared), was, count in zip(self._current.items(), before, now, strict=True):
            if result is not None and count == was and result.get(name) is shared and (
                    id(shared) in verified or shared == self._originals[name]):
                self._holders[name].append(result)
            else:  # changed, kept elsewhere, renamed, or the chain failed
                taken.append(name)
        for name in taken:
            self._give_own_copies(name)
            self._renew(name)

    def _give_own_copies(self, name: str) -> None:
        """The earlier results that share the list each get a copy (equal to the original:
        their chains left it so)."""
        for state in self._holders[name]:
            state[name] = self._originals[name].copy()

    def finish(self) -> None:
        """After the fan-out: each result that still shares a list holds it for its join input
        to copy when first read, in a table under SHARED_LISTS_KEY (never changed: an input
        that reads or deletes the list gets a table of its own without it)."""
        tables: dict[int, dict[str, list[Any]]] = {}
        for name, shared in self._current.items():
            for state in self._holders[name]:
                del state[name]
                if len(self._current) == 1:  # the usual case: one table for all
                    state[SHARED_LISTS_KEY] = tables.setdefault(0, {name: shared})
                else:
                    tables.setdefault(id(state), state.setdefault(SHARED_LISTS_KEY, {}))[
                        name] = shared
        self._current.clear()
        self._holders.clear()
