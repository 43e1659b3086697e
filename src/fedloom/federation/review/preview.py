"""What a reviewer sees of an experiment's initial state, read without running its code.

The constructor state is a wire frame that may hold objects of the package's own classes; the
package must not be imported before it is approved. So the frame is decoded with the wire
format's allowlist for well-known types (numpy, torch, builtins) and inert stand-ins for every
other class: a stand-in records the class's name and the state it was given, and runs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.federation.transport import wire

MAX_DEPTH = 6
MAX_VALUE_TEXT = 60


@dataclass(frozen=True)
class StateEntry:
    """One attribute of the initial state: its name, type and a short description."""

    name: str
    type: str
    detail: str
    nbytes: int


class Opaque:
    """A stand-in for an object of a class that is not decoded before approval."""

    fl_global = "?"
    fl_args: tuple[Any, ...] = ()
    fl_state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.fl_args = (args, kwargs)

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.fl_state = state


def _opaque_class(module: str, name: str) -> type[Opaque]:
    return type(name.rpartition(".")[2] or "Opaque", (Opaque,),
                {"fl_global": f"{module}.{name}"})


# The only globals a preview resolves for real: what rebuilds numpy arrays, dtypes and scalars
# (to show shapes and sizes). Everything else — builtins and collections that could be made to
# compute (range, deque, ...), torch, the package's classes — becomes an inert stand-in, so a
# hostile frame cannot make the reviewing node work for long.
_REAL = {("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
         ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
         ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
         ("numpy", "dtype"), ("numpy", "ndarray")}
MAX_VISITS = 100_000  # objects a size estimate looks at, at most


class _PreviewUnpickler(wire._Unpickler):
    def find_class(self, module: str, name: str, /) -> Any:
        if (module, name) in _REAL or (module == "numpy" and name.startswith("dtypes")):
            try:
                return super().find_class(module, name)
            except wire.WireError:
                pass
        return _opaque_class(str(module), str(name))


def preview_state(frame: bytes) -> list[StateEntry]:
    """The top-level attributes of an initial-state frame, described; a frame that cannot be
    read gives one entry saying why (the reviewer should know)."""
    try:
        view = wire._as_view(frame)
        payload, raw_buffers = wire._verify(view)
        unpickler = _PreviewUnpickler(io.BytesIO(payload), (), wire._OwnedBuffers(raw_buffers),
                                      {})
        try:
            state = unpickler.load()
        finally:
            unpickler.restore_globals()
    except Exception as exc:  # the reviewer sees the problem instead of a crash
        return [StateEntry("(unreadable)", type(exc).__name__, str(exc)[:200], len(frame))]
    items = state.items() if isinstance(state, dict) else [("(state)", state)]
    return [_entry(name, value) for name, value in sorted(items, key=lambda i: str(i[0]))]


def _entry(name: object, value: Any) -> StateEntry:
    try:
        return StateEntry(str(name)[:200], _type_name(value), _detail(value),
                          _nbytes(value, 0, _Budget()))
    except Exception as exc:  # e.g. a number too long to print: say so, don't fail the review
        return StateEntry(str(name)[:200], _type_name(value), f"(cannot describe: "
                          f"{type(exc).__name__})", 0)


class _Budget:
    """Counts the objects a size estimate visits, and remembers them (shared parts once)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def visit(self, value: Any) -> bool:
        if id(value) in self.seen or len(self.seen) >= MAX_VISITS:
            return False
        self.seen.add(id(value))
        return True


def _type_name(value: Any) -> str:
    if isinstance(value, Opaque):
        made_by = type(value).fl_global
        return "torch.Tensor" if made_by.endswith("._rebuild_tensor") else made_by
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _detail(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a torch tensor
        return f"{value.dtype} {tuple(value.shape)}"
    if isinstance(value, Opaque):
        if type(value).fl_global.endswith("._rebuild_tensor"):  # fedloom's torch encoding
            array = value.fl_args[0][0] if value.fl_args and value.fl_args[0] else None
            if isinstance(array, np.ndarray):
                return f"torch tensor {tuple(array.shape)}"
        return "not decoded before approval"
    if isinstance(value, dict | list | tuple | set | frozenset):
        return f"{len(value)} items"
    text = repr(value)
    return text if len(text) <= MAX_VALUE_TEXT else text[:MAX_VALUE_TEXT - 3] + "..."


def _nbytes(value: Any, depth: int, budget: _Budget) -> int:
    """Bytes of the arrays and strings reachable from ``value`` (bounded depth and visits;
    an object reached twice counts once)."""
    if depth > MAX_DEPTH or not budget.visit(value):
        return 0
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, dict):
        return sum(_nbytes(v, depth + 1, budget) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(_nbytes(v, depth + 1, budget) for v in value)
    if isinstance(value, Opaque):
        return _nbytes(value.fl_state, depth + 1, budget) + \
            _nbytes(value.fl_args, depth + 1, budget)
    return 0
