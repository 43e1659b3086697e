"""What crosses the network: framed, checksummed, restricted pickles of flow state, in chunks.

A frame is::

    prefix  (32 bytes)  magic b"\\x89FLW", version u8, flags u8, reserved u16, buffer count u32,
                        pickle length u64, frame length u64, crc32 of those 28 bytes
    table               crc32 of the pickle, then per out-of-band buffer (length u64, crc32),
                        then crc32 of the table
    zero padding        to a multiple of 64 bytes
    pickle              protocol 5
    buffers             each out-of-band buffer, each starting at a multiple of 64 (zero padding)

Every byte of a frame is covered by a checksum or must be zero padding, so a corrupt or
truncated frame is a :class:`WireError`, found before anything is unpickled.  The checksums
are there for corruption: integrity against an attacker is TLS's job, and safety against a
hostile peer is the restricted unpickler's.

numpy arrays travel as out-of-band buffers (no copy when pickling; one copy into the frame).
torch tensors are reduced to ``(_rebuild_tensor, (numpy array, dtype name, requires_grad,
kind))``, so decoding never goes through ``torch.load`` or ``torch.storage``.

:func:`loads` decodes only:

* a vetted set of builtins (numbers, strings, bytes, containers, slice, range, Ellipsis,
  NotImplemented, ``object``, the builtin exception classes), ``collections`` (OrderedDict,
  defaultdict, deque, Counter) and ``datetime`` values;
* numpy arrays (also masked and record arrays), dtypes, scalars and random generators;
* torch tensors and Parameters and torch's dtype/layout/memory-format constants (through
  this module's rebuild functions), ``torch.Size``, ``torch.device``, subclasses of
  ``torch.nn.Module`` defined under ``torch.nn.`` and the public functions of
  ``torch.nn.functional`` (modules keep activations such as ``F.relu`` as attributes);
* anything defined in the approved experiment package (``allowed_modules``), found by name
  without ``getattr`` and only if it is really defined there (not merely imported there).

Everything else is refused with a :class:`WireError` naming it, before it is called.  A
frame that sets attributes on a well-known Python class or function (pickle's BUILD on a
global) is refused too, and the change undone.  :func:`dumps` does not check that the receiver
will accept what it encodes: ``loads(dumps(x), allowed_modules=...)`` does.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import functools
import importlib
import io
import pickle
import struct
import sys
import types
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Final

import numpy as np

from fedloom.errors import FedloomError

__all__ = ["DEFAULT_CHUNK_BYTES", "DEFAULT_MAX_BYTES", "Reassembler", "WireError", "chunk",
           "dumps", "loads"]

MAGIC: Final = b"\x89FLW"
VERSION: Final = 1
DEFAULT_CHUNK_BYTES: Final = 1 << 20
# Smaller buffers are copied out of an adopted frame: a kept metric must not pin a whole model.
ADOPT_MIN_BYTES: Final = 1 << 20
DEFAULT_MAX_BYTES: Final = 8 << 30

_PREFIX: Final = struct.Struct("<4sBBHIQQ")  # magic, version, flags, reserved, nbuf, plen, total
_CRC: Final = struct.Struct("<I")
_ENTRY: Final = struct.Struct("<QI")  # buffer length, crc32
PREFIX_BYTES: Final = _PREFIX.size + _CRC.size  # 32
_ALIGN: Final = 64
_ZEROS: Final = bytes(_ALIGN)


class WireError(FedloomError):
    """A frame could not be encoded or decoded: corrupt, truncated, or refused.

    ``refused`` is the ``module.name`` of the global that was refused, when that was the cause.
    """

    def __init__(self, message: str, *, refused: str | None = None) -> None:
        super().__init__(message)
        self.refused = refused


# --------------------------------------------------------------------------------- encoding


class FrameParts:
    """A frame as the pieces it is made of: views of the encoded object's own buffers (its
    arrays), so no copy of them is made. Write the pieces out at once, before the object
    changes; their concatenation is the frame :func:`dumps` returns."""

    def __init__(self, parts: list[bytes | bytearray | memoryview]) -> None:
        self.parts = parts
        self.size = sum(memoryview(part).nbytes for part in parts)

    def __len__(self) -> int:
        return self.size

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


def dumps(obj: Any) -> bytes:
    """``obj`` as one frame (see the module docstring); raises :class:`WireError` if it cannot
    be pickled."""
    return dumps_parts(obj).tobytes()


def dumps_parts(obj: Any) -> FrameParts:
    """:func:`dumps` without joining the pieces (see :class:`FrameParts`)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
        raws = [buffer.raw() for buffer in buffers]
    except WireError:
        raise
    except Exception as error:
        raise WireError(f"cannot encode {type(obj).__name__} for the wire: "
                        f"{type(error).__name__}: {error}") from error
    return FrameParts(_frame_parts(stream.getvalue(), raws))


def _frame(payload: memoryview | bytes, buffers: Sequence[memoryview | bytes]) -> bytes:
    """A frame around a pickle and its out-of-band buffers (tests use it to wrap hand-made
    pickles in valid frames)."""
    return b"".join(_frame_parts(payload, buffers))


def _frame_parts(payload: memoryview | bytes, buffers: Sequence[memoryview | bytes]
                 ) -> list[bytes | bytearray | memoryview]:
    table = bytearray(_CRC.pack(zlib.crc32(payload)))
    for buffer in buffers:
        table += _ENTRY.pack(len(buffer), zlib.crc32(buffer))
    table += _CRC.pack(zlib.crc32(table))
    layout = _layout(len(payload), [len(b) for b in buffers])
    head = _PREFIX.pack(MAGIC, VERSION, 0, 0, len(buffers), len(payload), layout.total)
    parts: list[bytes | bytearray | memoryview] = [head, _CRC.pack(zlib.crc32(head)), table]
    end = PREFIX_BYTES + len(table)
    for (start, stop), part in zip(layout.regions, [payload, *buffers], strict=True):
        parts.append(_ZEROS[:start - end])
        parts.append(part)
        end = stop
    return parts


class _Pickler(pickle.Pickler):
    """Reduces torch tensors to numpy arrays, so they can be rebuilt without torch.load."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType) and "<" in obj.__qualname__:
            raise WireError(_nameless(obj))  # pickle would only say that a lookup failed
        torch = sys.modules.get("torch")
        if torch is not None:
            if isinstance(obj, torch.Tensor):
                return _reduce_tensor(obj, torch)
            if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return _torch_constant, (str(obj).removeprefix("torch."),)
        return NotImplemented


def _nameless(function: types.FunctionType) -> str:
    kind = "a lambda" if function.__name__ == "<lambda>" else \
        f"{function.__qualname__} (a function defined in a function)"
    return (f"cannot encode {kind} for the wire: functions cross between processes by name, "
            "and it has none; define it with def at the top level of the flow's module")


def encodable(value: Any) -> bool:
    """Whether :func:`dumps` encodes ``value`` (for errors that name what it does not)."""
    try:
        dumps_parts(value)
    except WireError:
        return False
    return True


_SAME_SIZE_INT: Final = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def _reduce_tensor(tensor: Any, torch: Any) -> tuple[Any, ...]:
    kind_type = type(tensor)
    if kind_type is torch.Tensor:
        kind = "tensor"
    elif kind_type is torch.nn.Parameter:
        kind = "parameter"
    else:
        raise WireError(f"cannot send a {kind_type.__module__}.{kind_type.__qualname__}: only "
                        f"plain torch.Tensor and torch.nn.Parameter cross the wire; convert it "
                        f"with .as_subclass(torch.Tensor)")
    if tensor.layout != torch.strided:
        raise WireError(f"cannot send a tensor with layout {tensor.layout}; convert it with "
                        f".to_dense() first")
    if tensor.is_quantized:
        raise WireError("cannot send a quantized tensor; .dequantize() it first")
    if tensor.device.type == "meta":
        raise WireError("cannot send a tensor on the meta device: it has no data")
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.resolve_conj().resolve_neg().contiguous()
    dtype_name = str(data.dtype).removeprefix("torch.")
    try:
        array = data.numpy()
    except TypeError:  # bfloat16, float8, complex32 ...: numpy has no such dtype
        size = data.element_size()
        if size not in _SAME_SIZE_INT:
            raise WireError(f"cannot send a tensor of dtype {data.dtype}") from None
        array = data.view(getattr(torch, _SAME_SIZE_INT[size])).numpy()
    return _rebuild_tensor, (array, dtype_name, bool(tensor.requires_grad), kind)


def _rebuild_tensor(array: Any, dtype_name: Any, requires_grad: Any, kind: Any) -> Any:
    """The tensor (or Parameter) :func:`_reduce_tensor` took apart; checks every argument."""
    torch = _import_torch("a torch tensor")
    dtype = _torch_constants().get(dtype_name) if isinstance(dtype_name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise WireError(f"corrupt tensor in wire frame: unknown dtype {dtype_name!r}")
    if not isinstance(array, np.ndarray) or array.dtype.hasobject or \
            array.dtype.itemsize != dtype.itemsize:
        raise WireError(f"corrupt tensor in wire frame: bad data for a {dtype} tensor")
    if type(requires_grad) is not bool or kind not in ("tensor", "parameter"):
        raise WireError("corrupt tensor in wire frame: bad flags")
    if type(array) is not np.ndarray or not (array.flags.c_contiguous and array.flags.writeable
                                            and array.flags.aligned):
        array = np.array(array, order="C", copy=True, subok=False)
    try:
        result = torch.from_numpy(array)
    except TypeError:  # a numpy dtype torch cannot wrap: go through a same-size integer
        result = torch.from_numpy(array.view(_SAME_SIZE_INT[array.dtype.itemsize]))
    if result.dtype != dtype:
        result = result.view(dtype)
    if kind == "parameter":
        return torch.nn.Parameter(result, requires_grad=requires_grad)
    return result.requires_grad_(True) if requires_grad else result


def _torch_constant(name: Any) -> Any:
    """A torch dtype, layout or memory format by name (``float32``, ``strided`` ...)."""
    value = _torch_constants().get(name) if isinstance(name, str) else None
    if value is None:
        raise WireError(f"corrupt wire frame: unknown torch constant {name!r}")
    return value


# --------------------------------------------------------------------------------- decoding


def loads(data: bytes | bytearray | memoryview, *,
          allowed_modules: Collection[str] = (),
          module_aliases: Mapping[str, str] | None = None, allow_main: bool = False,
          adopt: bool = False) -> Any:
    """The object in a frame made by :func:`dumps`.

    The frame is verified (magic, version, lengths, checksums) before anything is unpickled,
    and unpickling resolves only the globals listed in the module docstring plus those of
    ``allowed_modules`` (the experiment package; submodules included).  Every failure is a
    :class:`WireError`.  Arrays come back writable and own their memory (they are copied out
    of ``data``). ``module_aliases`` reads globals of one module as another's, e.g. a class a
    notebook defined in ``__main__`` as the package's module that holds the notebook's code;
    each target must be one of ``allowed_modules``. ``allow_main`` lets ``allowed_modules``
    name ``__main__``: only for a user decoding results of their own notebook or script, never
    on a node that runs other people's experiments. ``adopt``: the caller hands ``data`` over
    (a writable buffer nobody else uses, e.g. a private copy-on-write mapping): arrays are
    built on it instead of copied out of it (a read-only ``data`` is still copied).
    """
    allowed = _approved(allowed_modules, allow_main)
    aliases = dict(module_aliases or {})
    for source, target in aliases.items():
        if not _within(target, allowed):
            raise ValueError(f"module alias {source} -> {target}: the target is not an "
                             f"allowed module")
    view = _as_view(data)
    payload, raw_buffers = _verify(view)
    buffers = _OwnedBuffers(raw_buffers, adopt=adopt and not view.readonly)
    stream = io.BytesIO(payload)
    unpickler = _Unpickler(stream, allowed, buffers, aliases)
    try:
        obj = unpickler.load()
    except WireError:
        raise
    except Exception as error:
        raise WireError(f"cannot decode wire frame: {type(error).__name__}: {error}") from error
    finally:
        tampered = unpickler.restore_globals()
    if tampered:
        raise WireError(f"refused wire frame: it changed {', '.join(tampered)} (undone); a "
                        f"frame may build objects of these, not modify them",
                        refused=tampered[0])
    if stream.tell() != len(payload):
        raise WireError(f"corrupt wire frame: {len(payload) - stream.tell()} bytes after the "
                        f"end of the pickle")
    if buffers.used != len(raw_buffers):
        raise WireError(f"corrupt wire frame: it carries {len(raw_buffers)} buffers but the "
                        f"pickle uses {buffers.used}")
    return obj


def _as_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim == 1 and view.itemsize == 1 and view.format in ("B", "b", "c"):
        return view if view.format == "B" else view.cast("B")
    if not view.c_contiguous:
        raise WireError("a wire frame must be a contiguous buffer")
    return view.cast("B")


class _Layout:
    __slots__ = ("regions", "total")

    def __init__(self, regions: list[tuple[int, int]], total: int) -> None:
        self.regions = regions  # (start, stop) of the pickle, then of each buffer
        self.total = total


def _layout(pickle_len: int, buffer_lens: Sequence[int]) -> _Layout:
    offset = PREFIX_BYTES + _CRC.size + _ENTRY.size * len(buffer_lens) + _CRC.size
    regions = []
    for length in (pickle_len, *buffer_lens):
        offset += -offset % _ALIGN
        regions.append((offset, offset + length))
        offset += length
    return _Layout(regions, offset)


def _read_prefix(view: memoryview) -> tuple[int, int, int]:
    """(buffer count, pickle length, frame length) from a frame's first 32 bytes."""
    if len(view) < PREFIX_BYTES:
        if not len(view):
            raise WireError("empty wire frame")
        raise WireError(f"truncated wire frame: {len(view)} bytes, shorter than the "
                        f"{PREFIX_BYTES}-byte header")
    magic, version, flags, reserved, count, pickle_len, total = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError(f"not a fedloom wire frame: the header starts with {bytes(magic)!r}, "
                        f"not {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire frame header: version {version} (this fedloom reads "
                        f"version {VERSION}); the frame is corrupt or from another fedloom")
    (crc,) = _CRC.unpack_from(view, _PREFIX.size)
    if crc != zlib.crc32(view[:_PREFIX.size]):
        raise WireError("corrupt wire frame: header checksum mismatch")
    if flags or reserved:
        raise WireError(f"unsupported wire frame header: flags {flags:#x}/{reserved:#x}")
    return count, pickle_len, total


def _verify(view: memoryview) -> tuple[memoryview, list[memoryview]]:
    """The pickle and the buffers of a frame whose every byte checked out."""
    count, pickle_len, total = _read_prefix(view)
    if len(view) < total:
        raise WireError(f"truncated wire frame: the header announces {total} bytes, got "
                        f"{len(view)}")
    if len(view) > total:
        raise WireError(f"corrupt wire frame: {len(view)} bytes, but the header announces "
                        f"{total}")
    table_end = PREFIX_BYTES + _CRC.size + _ENTRY.size * count + _CRC.size
    if table_end > total:
        raise WireError(f"corrupt wire frame header: {count} buffers cannot fit in {total} "
                        f"bytes")
    table = view[PREFIX_BYTES:table_end]
    (table_crc,) = _CRC.unpack_from(table, len(table) - _CRC.size)
    if table_crc != zlib.crc32(table[:-_CRC.size]):
        raise WireError("corrupt wire frame: header checksum mismatch (buffer table)")
    (pickle_crc,) = _CRC.unpack_from(table)
    entries = [_ENTRY.unpack_from(table, _CRC.size + i * _ENTRY.size) for i in range(count)]
    layout = _layout(pickle_len, [length for length, _ in entries])
    if layout.total != total:
        raise WireError(f"corrupt wire frame header: its lengths add up to {layout.total} "
                        f"bytes, not the {total} it announces")
    end = table_end
    for start, stop in layout.regions:
        if any(view[end:start]):
            raise WireError("corrupt wire frame: padding is not zero (header or data damaged)")
        end = stop
    payload = view[slice(*layout.regions[0])]
    if zlib.crc32(payload) != pickle_crc:
        raise WireError("corrupt wire frame: checksum mismatch in the pickle")
    buffers = []
    for i, ((_, crc), region) in enumerate(zip(entries, layout.regions[1:], strict=True)):
        buffer = view[slice(*region)]
        if zlib.crc32(buffer) != crc:
            raise WireError(f"corrupt wire frame: checksum mismatch in buffer {i + 1} of "
                            f"{count}")
        buffers.append(buffer)
    return payload, buffers


class _OwnedBuffers:
    """Hands the unpickler a writable copy of each buffer, in order, and counts them."""

    def __init__(self, views: list[memoryview], adopt: bool = False) -> None:
        self._views = views
        self._adopt = adopt  # the frame is the caller's to give: no copy
        self.used = 0

    def __iter__(self) -> Iterator[bytearray | memoryview]:
        return self

    def __next__(self) -> bytearray | memoryview:
        if self.used >= len(self._views):
            raise StopIteration
        view = self._views[self.used]
        self.used += 1
        if self._adopt and view.nbytes >= ADOPT_MIN_BYTES:
            return view
        # bytearray rather than numpy.empty: numpy asks for huge pages, and the kernel's
        # compaction for them can stall a first large allocation for a long time.
        return bytearray(view)


class _Unpickler(pickle.Unpickler):
    """Resolves globals through the allowlist, and notes the mutable well-known ones (Python
    classes and functions) so that a frame's BUILD on them (setting class attributes) can be
    found and undone."""

    def __init__(self, stream: io.BytesIO, allowed: tuple[str, ...],
                 buffers: _OwnedBuffers, aliases: Mapping[str, str]) -> None:
        super().__init__(stream, buffers=buffers)
        self._allowed = allowed
        self._aliases = aliases
        self._guarded: dict[int, tuple[Any, str, dict[str, Any]]] = {}

    def find_class(self, module: str, name: str, /) -> Any:
        module = self._aliases.get(module, module)
        obj = _resolve(module, name, self._allowed)
        if id(obj) not in self._guarded and _is_mutable_global(obj) and \
                not _within(getattr(obj, "__module__", None) or "", self._allowed):
            self._guarded[id(obj)] = (obj, f"{module}.{name}", _attributes(obj))
        return obj

    def restore_globals(self) -> list[str]:
        """Undo changes to the guarded globals; the names of those that had changed."""
        changed = []
        for obj, name, before in self._guarded.values():
            if not _same(_attributes(obj), before):
                _restore(obj, before)
                changed.append(name)
        return changed

    def persistent_load(self, pid: Any, /) -> Any:
        raise WireError("refused to decode a persistent id: wire frames have none")


_IMMUTABLE_TYPE: Final = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: builtin and C extension types


def _is_mutable_global(obj: Any) -> bool:
    if isinstance(obj, type):
        return not obj.__flags__ & _IMMUTABLE_TYPE
    return isinstance(obj, types.FunctionType)


def _attributes(obj: Any) -> dict[str, Any]:
    """What a BUILD could change on a class or function, by name."""
    found = dict(vars(obj))
    if isinstance(obj, types.FunctionType):
        found.update({" defaults": obj.__defaults__, " kwdefaults": obj.__kwdefaults__,
                      " code": obj.__code__})
    return found


def _same(now: dict[str, Any], before: dict[str, Any]) -> bool:
    return now.keys() == before.keys() and all(now[key] is before[key] for key in now)


def _restore(obj: Any, before: dict[str, Any]) -> None:
    if isinstance(obj, types.FunctionType):
        obj.__defaults__ = before.pop(" defaults")
        obj.__kwdefaults__ = before.pop(" kwdefaults")
        obj.__code__ = before.pop(" code")
        obj.__dict__.clear()
        obj.__dict__.update(before)
        return
    for key in set(vars(obj)) - set(before):
        delattr(obj, key)
    for key, value in before.items():
        if vars(obj).get(key, _MISSING) is not value:
            setattr(obj, key, value)


# ------------------------------------------------------------------------------- allowlist

_MISSING: Final = object()

_BUILTIN_NAMES: Final = frozenset({
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict",
    "set", "frozenset", "slice", "range", "object", "Ellipsis", "NotImplemented",
}) | frozenset(name for name, value in vars(builtins).items()
               if isinstance(value, type) and issubclass(value, BaseException))
_COLLECTIONS_NAMES: Final = frozenset({"OrderedDict", "defaultdict", "deque", "Counter"})
_DATETIME_NAMES: Final = frozenset({"date", "time", "datetime", "timedelta", "timezone"})

# (module, name) -> module to import it from, for fixed numpy names (both spellings of
# numpy's core: numpy 1 wrote numpy.core, numpy 2 writes numpy._core).
_NUMPY_FIXED: Final = {
    **{(f"numpy.{core}.multiarray", name): "multiarray"
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): "numeric" for core in ("core", "_core")},
}
_NUMPY_OTHER: Final = {
    ("numpy.ma", "MaskedArray"): "numpy.ma.core",
    ("numpy.ma.core", "MaskedArray"): "numpy.ma.core",
    ("numpy.ma.core", "_mareconstruct"): "numpy.ma.core",
    ("numpy.rec", "recarray"): "numpy.rec",
    ("numpy.rec", "record"): "numpy.rec",
    ("numpy.random._pickle", "__bit_generator_ctor"): "numpy.random._pickle",
    ("numpy.random._pickle", "__generator_ctor"): "numpy.random._pickle",
    ("numpy.random._pickle", "__randomstate_ctor"): "numpy.random._pickle",
    ("numpy.random._mt19937", "MT19937"): "numpy.random._mt19937",
    ("numpy.random._pcg64", "PCG64"): "numpy.random._pcg64",
    ("numpy.random._pcg64", "PCG64DXSM"): "numpy.random._pcg64",
    ("numpy.random._philox", "Philox"): "numpy.random._philox",
    ("numpy.random._sfc64", "SFC64"): "numpy.random._sfc64",
    ("numpy.random.bit_generator", "SeedSequence"): "numpy.random.bit_generator",
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"):
        "numpy.random.bit_generator",
    ("numpy.random._generator", "Generator"): "numpy.random._generator",
    ("numpy.random.mtrand", "RandomState"): "numpy.random.mtrand",
}
_OWN: Final = {"_rebuild_tensor": _rebuild_tensor, "_torch_constant": _torch_constant}
# Public names of torch.nn.functional that are plumbing, not tensor functions.
_F_EXCLUDED: Final = frozenset({
    "boolean_dispatch", "handle_torch_function", "has_torch_function",
    "has_torch_function_unary", "has_torch_function_variadic"})

_FORBIDDEN_ROOTS: Final = frozenset(sys.stdlib_module_names) | {
    "__main__", "fedloom", "numpy", "torch", "pip", "setuptools", "pkg_resources", "_pytest",
    "pytest", "cloudpickle", "dill"}

_REFUSAL_TAIL: Final = ("the wire only decodes well-known data types (builtins, collections, "
                        "datetime, numpy, torch tensors and torch.nn modules) and the approved "
                        "experiment package")


def _refuse(module: str, name: str, allowed: tuple[str, ...], why: str = "") -> WireError:
    approved = (f"({', '.join(allowed)})" if allowed else
                "(none approved: pass the experiment package as allowed_modules)")
    return WireError(f"refused to decode {module}.{name}: {why}{_REFUSAL_TAIL} {approved}",
                     refused=f"{module}.{name}")


def _resolve(module: Any, name: Any, allowed: tuple[str, ...]) -> Any:
    if not isinstance(module, str) or not isinstance(name, str):
        raise WireError(f"refused to decode a global named {module!r}, {name!r}")
    if (module, name) == ("copyreg", "_reconstructor"):
        return functools.partial(_checked_reconstructor, allowed)
    obj = _well_known(module, name)
    if obj is _MISSING and _within(module, allowed):
        obj = _from_experiment(module, name, allowed)
    if obj is _MISSING:
        raise _refuse(module, name, allowed)
    return obj


def _within(module: str, allowed: Collection[str]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in allowed)


def _is_dunder(part: str) -> bool:
    return part.startswith("__") and part.endswith("__")


@functools.lru_cache(maxsize=512)
def _well_known(module: str, name: str) -> Any:
    """The well-known global ``module.name``, or ``_MISSING``. Never uses getattr on names."""
    if module == "builtins":
        return vars(builtins)[name] if name in _BUILTIN_NAMES else _MISSING
    if module == "collections":
        return vars(collections)[name] if name in _COLLECTIONS_NAMES else _MISSING
    if module == "datetime":
        return vars(datetime)[name] if name in _DATETIME_NAMES else _MISSING
    if module == __name__:
        return _OWN.get(name, _MISSING)
    if module == "numpy" or module.startswith("numpy."):
        return _numpy_global(module, name)
    if module == "torch" or module.startswith("torch."):
        return _torch_global(module, name)
    return _MISSING


def _numpy_global(module: str, name: str) -> Any:
    if (module, name) in _NUMPY_FIXED:
        sub = _NUMPY_FIXED[module, name]
        try:
            core = importlib.import_module(f"numpy._core.{sub}")
        except ImportError:  # numpy 1.x
            core = importlib.import_module(f"numpy.core.{sub}")
        return vars(core)[name]
    if (module, name) in _NUMPY_OTHER:
        return vars(importlib.import_module(_NUMPY_OTHER[module, name]))[name]
    if module == "numpy":
        obj = vars(np).get(name)
        if isinstance(obj, type) and (issubclass(obj, (np.generic, np.dtype))
                                      or obj in (np.ndarray, np.matrix)):
            return obj
    if module == "numpy.dtypes":
        obj = vars(importlib.import_module("numpy.dtypes")).get(name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            return obj
    return _MISSING


def _import_torch(what: str) -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as error:
        raise WireError(f"cannot decode {what}: torch is not installed here") from error


@functools.lru_cache(maxsize=1)
def _torch_constants() -> dict[str, Any]:
    """torch's dtypes, layouts and memory formats by name (``float32``, ``strided`` ...)."""
    torch = _import_torch("a torch constant")
    kinds = (torch.dtype, torch.layout, torch.memory_format)
    return {name: value for name, value in vars(torch).items()
            if isinstance(value, kinds) and not name.startswith("_")}


def _torch_global(module: str, name: str) -> Any:
    if not name.isidentifier() or _is_dunder(name):
        return _MISSING
    parts = module.split(".")
    if not all(part.isidentifier() and not _is_dunder(part) for part in parts):
        return _MISSING
    torch = _import_torch(f"{module}.{name}")
    functional = vars(torch.nn.functional)
    if module == "torch":
        if name in ("Size", "device"):
            return vars(torch)[name]
        if name in _torch_constants():
            return _torch_constants()[name]
        obj = vars(torch).get(name)  # e.g. torch.conv1d, which is also F.conv1d
        return obj if obj is not None and _is_functional(name, obj, functional) else _MISSING
    if module in ("torch.nn.functional", "torch._C._nn"):
        obj = vars(sys.modules[module]).get(name) if module in sys.modules else None
        return obj if obj is not None and _is_functional(name, obj, functional) else _MISSING
    if module.startswith("torch.nn."):
        try:
            source = importlib.import_module(module)
        except ImportError:
            return _MISSING
        obj = vars(source).get(name)
        if (isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                and obj.__module__.startswith("torch.nn.")):
            return obj
    return _MISSING


def _is_functional(name: str, obj: Any, functional: dict[str, Any]) -> bool:
    """Is ``obj`` a public function of torch.nn.functional (F.relu, F.gelu, ...)?"""
    return (not name.startswith("_") and name not in _F_EXCLUDED
            and functional.get(name) is obj
            and isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)))


def _from_experiment(module: str, name: str, allowed: tuple[str, ...]) -> Any:
    """A global defined in the approved experiment package, found without getattr."""
    parts = name.split(".")
    module_parts = () if module == "__main__" else module.split(".")  # allowed: see loads
    if not all(part.isidentifier() and not _is_dunder(part) for part in (*module_parts, *parts)):
        raise _refuse(module, name, allowed, "not a plain name; ")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as error:
        raise WireError(f"cannot decode {module}.{name}: importing the experiment module "
                        f"{module} failed: {type(error).__name__}: {error}") from error
    for i, part in enumerate(parts):
        if i and not isinstance(obj, type):  # only nested classes are looked into
            raise _refuse(module, name, allowed, "not a nested class; ")
        obj = vars(obj).get(part, _MISSING)
        if obj is _MISSING:
            raise WireError(f"cannot decode {module}.{name}: the experiment package has no "
                            f"such name (is the same package version installed here?)",
                            refused=f"{module}.{name}")
    if isinstance(obj, types.ModuleType):
        raise _refuse(module, name, allowed, "it is a module; ")
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str) or not _within(owner, allowed):
        where = getattr(obj, "__qualname__", type(obj).__qualname__)
        raise _refuse(module, name, allowed,
                      f"it is {owner}.{where}, only imported into the experiment package; ")
    return obj


def _checked_reconstructor(allowed: tuple[str, ...], cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for allowed classes only (old pickle protocols use it)."""
    for kind in (cls, base):
        if not isinstance(kind, type) or not _is_allowed_class(kind, allowed):
            shown = (f"{kind.__module__}.{kind.__qualname__}" if isinstance(kind, type)
                     else repr(type(kind)))
            raise WireError(f"refused to decode copyreg._reconstructor of {shown}: "
                            f"{_REFUSAL_TAIL}", refused=shown)
    if not issubclass(cls, base):
        raise WireError("corrupt wire frame: copyreg._reconstructor of unrelated classes")
    if base is object:
        return object.__new__(cls)
    obj = base.__new__(cls, state)
    if base.__init__ != object.__init__:
        base.__init__(obj, state)
    return obj


def _is_allowed_class(cls: type, allowed: tuple[str, ...]) -> bool:
    try:
        return _resolve(cls.__module__, cls.__qualname__, allowed) is cls
    except WireError:
        return False


def _approved(allowed_modules: Collection[str], allow_main: bool = False) -> tuple[str, ...]:
    names = (allowed_modules,) if isinstance(allowed_modules, str) else tuple(allowed_modules)
    for name in names:
        if not isinstance(name, str) or not name or not all(
                part.isidentifier() for part in name.split(".")):
            raise WireError(f"allowed_modules must be module names, got {name!r}")
        if name.split(".")[0] in _FORBIDDEN_ROOTS and not (allow_main and name == "__main__"):
            raise WireError(f"allowed_modules must name the experiment package, not {name!r} "
                            f"(the standard library, fedloom, numpy and torch are decoded "
                            f"through the built-in allowlist only)")
    return names


# --------------------------------------------------------------------------------- chunking


def chunk(data: bytes | bytearray | memoryview,
          size: int = DEFAULT_CHUNK_BYTES) -> Iterator[memoryview]:
    """``data`` in consecutive views of at most ``size`` bytes (no copies)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    view = _as_view(data)
    return (view[start:start + size] for start in range(0, len(view), size))


class Reassembler:
    """Collects the chunks of one frame, in order.

    The frame header (in the first 32 bytes) announces the frame's length: a frame larger than
    ``max_bytes`` is refused as soon as its header arrives, bytes past the announced length are
    refused when they arrive, and :meth:`finish` refuses a frame that is short.  Chunk order is
    checked by the frame's checksums when the frame is decoded with :func:`loads`.  After a
    :class:`WireError`, or once finished, a Reassembler refuses everything.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._received = 0
        self._expected: int | None = None
        self._closed: str | None = None  # why nothing more is accepted

    @property
    def received(self) -> int:
        return self._received

    @property
    def expected(self) -> int | None:
        """The frame's length, once its header arrived."""
        return self._expected

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Append the next chunk (copied unless it is ``bytes``)."""
        self._check_open()
        try:
            self._add(data if type(data) is bytes else bytes(data))
        except WireError as error:
            self._close(f"the frame was refused: {error}")
            raise

    def _add(self, part: bytes) -> None:
        if self._expected is not None and self._received + len(part) > self._expected:
            raise WireError(f"extra data: the frame announced {self._expected} bytes and "
                            f"{self._received + len(part)} arrived")
        self._parts.append(part)
        self._received += len(part)
        if self._expected is None and self._received >= PREFIX_BYTES:
            head = part if len(self._parts) == 1 else b"".join(self._parts)
            _, _, total = _read_prefix(memoryview(head)[:PREFIX_BYTES])
            if total > self._max:
                raise WireError(f"refused a wire frame of {total} bytes: more than the "
                                f"{self._max} allowed")
            self._expected = total
            if self._received > total:
                raise WireError(f"extra data: the frame announced {total} bytes and "
                                f"{self._received} arrived")

    def finish(self) -> bytes:
        """The whole frame; a :class:`WireError` if it is incomplete."""
        self._check_open()
        if self._expected is None:
            if not self._received:
                raise WireError("empty wire frame: no chunks arrived")
            raise WireError(f"truncated wire frame: {self._received} bytes arrived, shorter "
                            f"than the {PREFIX_BYTES}-byte header")
        if self._received < self._expected:
            raise WireError(f"truncated wire frame: the header announces {self._expected} "
                            f"bytes, {self._received} arrived")
        parts = self._parts
        self._close("the frame was already finished")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise WireError(f"this Reassembler takes no more: {self._closed}")

    def _close(self, why: str) -> None:
        self._closed = why
        self._parts = []
