"""The wire format: round trips, the decoding allowlist, hostile payloads, corruption, chunks."""

from __future__ import annotations

import builtins
import collections
import contextlib
import datetime
import functools
import importlib
import math
import os
import pickle
import random
import subprocess
import sys
import types
import zlib
from collections.abc import Iterator
from os import system as imported_system  # noqa: F401 - a foreign name in the package
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.errors import FedloomError
from fedloom.federation.transport import wire
from fedloom.federation.transport.wire import Reassembler, WireError, chunk, dumps, loads

try:
    import torch
    from torch import nn

    HAVE_TORCH = True
except ImportError:  # pragma: no cover - torch is optional
    HAVE_TORCH = False

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
HERE = __name__  # the "experiment package" of these tests

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is optional
    HAVE_HYPOTHESIS = False


# ------------------------------------------------------------------ experiment-package classes


class Point:
    """A plain class of the experiment package."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    class Inner:
        def __init__(self, value: int) -> None:
            self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


class Reduces:
    """Pickles as ``func(*args)``: how hostile payloads are made from Python objects."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


if HAVE_TORCH:
    class UserNet(nn.Module):
        """A user's model, as an experiment package defines it."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.head = nn.Linear(8, 2)
            self.scale = 0.5
            self.register_buffer("steps", torch.tensor(3, dtype=torch.int64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.features(x)) * self.scale
            return out


# ------------------------------------------------------------------------------------ helpers


def round_trip(obj: Any, **kwargs: Any) -> Any:
    return loads(dumps(obj), **kwargs)


def assert_same_array(got: Any, want: np.ndarray[Any, Any]) -> None:
    assert type(got) is type(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable


def text(value: str) -> bytes:
    data = value.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def stack_global(module: str, name: str) -> bytes:
    return text(module) + text(name) + pickle.STACK_GLOBAL


def call(module: str, name: str, *args: str) -> bytes:
    """A protocol-5 pickle of ``module.name(*args)`` (REDUCE)."""
    return (pickle.PROTO + b"\x05" + stack_global(module, name) + pickle.MARK
            + b"".join(text(a) for a in args) + pickle.TUPLE + pickle.REDUCE + pickle.STOP)


def framed(payload: bytes, *buffers: bytes) -> bytes:
    """A frame with valid checksums around a hand-made pickle."""
    return wire._frame(payload, [memoryview(b) for b in buffers])


def regions(frame: bytes) -> dict[str, tuple[int, int]]:
    count, pickle_len, _ = wire._read_prefix(memoryview(frame))
    table_end = wire.PREFIX_BYTES + 4 + 12 * count + 4
    lengths = [int.from_bytes(frame[wire.PREFIX_BYTES + 4 + 12 * i:][:8], "little")
               for i in range(count)]
    layout = wire._layout(pickle_len, lengths)
    found = {"prefix": (0, wire.PREFIX_BYTES), "table": (wire.PREFIX_BYTES, table_end),
             "pickle": layout.regions[0]}
    for i, region in enumerate(layout.regions[1:]):
        found[f"buffer{i}"] = region
    return found


def flipped(frame: bytes, index: int) -> bytes:
    data = bytearray(frame)
    data[index] ^= 0x41
    return bytes(data)


# -------------------------------------------------------------------------------- round trips


def test_numpy_arrays_round_trip_writable_and_unshared() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "zero_d": np.array(3.5),
        "zero_d_int": np.array(7, dtype=np.int8),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "strided": base[:, ::2],  # not contiguous: travels in-band
        "fortran": base.T,  # F-contiguous: out-of-band
        "negative_stride": base[::-1],
        "big_endian": np.arange(5, dtype=">i4"),
        "structured": np.array([(1, 2.0, b"ab"), (3, 4.0, b"cd")],
                               dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S2")]),
        "unicode": np.array(["héllo", "wörld"]),
        "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "timedelta": np.array([1, 2], dtype="timedelta64[ms]"),
        "bool": np.array([True, False, True]),
        "complex": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
        "float16": np.linspace(0, 1, 7, dtype=np.float16),
        **{dt: np.arange(-3, 4).astype(dt) for dt in
           ["int8", "int16", "int32", "int64", "float32", "complex128"]},
        **{dt: np.arange(0, 7).astype(dt) for dt in ["uint8", "uint16", "uint32", "uint64"]},
    }
    frame = dumps(arrays)
    got = loads(frame)
    assert got.keys() == arrays.keys()
    for name, want in arrays.items():
        assert_same_array(got[name], want)
    assert got["fortran"].flags.f_contiguous
    got["fortran"][0, 0] = -1.0  # owns its memory: the frame and the sender are untouched
    assert base[0, 0] == 0.0
    assert loads(frame)["fortran"][0, 0] == 0.0
    # Any buffer type is a frame; the result never aliases it.
    writable = bytearray(frame)
    again = loads(memoryview(writable), allowed_modules=())
    again["fortran"][0, 0] = 9.0
    assert bytes(writable) == frame


def test_numpy_scalars_dtypes_random_generators_and_masked_arrays() -> None:
    generator = np.random.default_rng(7)
    legacy = np.random.RandomState(7)
    state = {
        "scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.complex128(1j),
                    np.datetime64("2024-02-29"), np.str_("x")],
        "dtypes": [np.dtype("f4"), np.dtype([("a", "i2"), ("b", "O")]), np.dtype(">u8"),
                   np.float64, np.ndarray],
        "generator": generator,
        "legacy": legacy,
        "masked": np.ma.masked_array([1, 2, 3], mask=[False, True, False]),
        "record": np.rec.array([(1, 2.0)], dtype=[("x", "i4"), ("y", "f8")]),
        "objects": np.array([1, "two", None, {"k": 3}], dtype=object),
    }
    got = loads(dumps(state))
    for value, want in zip(got["scalars"], state["scalars"], strict=True):
        assert type(value) is type(want) and value == want
    assert got["dtypes"] == state["dtypes"]
    np.testing.assert_array_equal(got["generator"].random(5), generator.random(5))
    np.testing.assert_array_equal(got["legacy"].rand(5), legacy.rand(5))
    assert isinstance(got["masked"], np.ma.MaskedArray)
    assert got["masked"].mask.tolist() == [False, True, False]
    assert isinstance(got["record"], np.recarray) and got["record"].y[0] == 2.0
    assert got["objects"].tolist() == [1, "two", None, {"k": 3}]


def test_nested_builtin_containers_round_trip() -> None:
    factory: collections.defaultdict[str, list[int]] = collections.defaultdict(list)
    factory["a"].append(1)
    state = {
        "numbers": [0, -1, 2**100, 1.5, -0.0, math.inf, 1 + 2j, True, None],
        "text": ["", "ünïcode ✓", b"\x00bytes", bytearray(b"mutable")],
        "shapes": (slice(1, 9, 2), range(3, 30, 3), ..., NotImplemented),
        "sets": [{1, 2}, frozenset({"x"}), set()],
        "collections": [collections.OrderedDict(b=1, a=2), factory,
                        collections.deque([1, 2], maxlen=5), collections.Counter("abca")],
        "time": [datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                 datetime.date(2020, 2, 29), datetime.timedelta(seconds=90)],
        "error": ValueError("kept"),
        "deep": {"a": [{"b": ({"c": [np.arange(3)]},)}]},
    }
    state["self"] = state["numbers"]  # shared references stay shared
    got = round_trip(state)
    assert got["numbers"] is got["self"]
    assert got["numbers"][:5] == state["numbers"][:5] and math.copysign(1, got["numbers"][4]) < 0
    assert got["numbers"][5:] == state["numbers"][5:]
    assert got["text"] == state["text"] and type(got["text"][3]) is bytearray
    assert got["shapes"] == state["shapes"]
    assert got["sets"] == state["sets"]
    assert got["collections"] == state["collections"]
    assert got["collections"][1]["new"] == [] and got["collections"][2].maxlen == 5
    assert got["time"] == state["time"]
    assert type(got["error"]) is ValueError and got["error"].args == ("kept",)
    np.testing.assert_array_equal(got["deep"]["a"][0]["b"][0]["c"][0], np.arange(3))
    assert math.isnan(round_trip(float("nan")))


def test_experiment_package_classes_need_approval() -> None:
    state = {"point": Point(1.0, 2.0), "inner": Point.Inner(4), "cls": Point}
    frame = dumps(state)
    got = loads(frame, allowed_modules={HERE})
    assert got["point"] == Point(1.0, 2.0) and got["inner"].value == 4 and got["cls"] is Point
    package = HERE.rpartition(".")[0]
    if package:  # the parent package approves its submodules
        assert loads(frame, allowed_modules=[package])["point"] == Point(1.0, 2.0)
        with pytest.raises(WireError):  # a prefix of a name is not its package
            loads(frame, allowed_modules=[package + "x"])
    assert loads(frame, allowed_modules=HERE)["inner"].value == 4  # one name as a str
    with pytest.raises(WireError, match=r"refused to decode .*Point") as refused:
        loads(frame)
    assert refused.value.refused in {f"{HERE}.Point", f"{HERE}.Point.Inner"}
    assert "approved experiment package" in str(refused.value)
    assert isinstance(refused.value, FedloomError)


@pytest.mark.parametrize("bad", ["os", "builtins", "torch", "numpy.random", "fedloom.x",
                                 "__main__", "not a module", "", "pickle"])
def test_allowed_modules_must_be_an_experiment_package(bad: str) -> None:
    with pytest.raises(WireError, match="allowed_modules"):
        loads(dumps(1), allowed_modules=[bad])


def test_module_aliases_read_one_module_as_an_allowed_other_and_only_that(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Encoded where the class lived in another module (as a notebook's __main__) ...
    elsewhere = types.ModuleType("nb_alias_module")
    elsewhere.Point = type("Point", (), {"__module__": "nb_alias_module"})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nb_alias_module", elsewhere)
    encoded = elsewhere.Point()  # type: ignore[attr-defined]
    encoded.x, encoded.y = 1, 2
    frame = dumps({"p": encoded})
    # ... and decoded where the same code is this module.
    got = loads(frame, allowed_modules=[HERE], module_aliases={"nb_alias_module": HERE})
    assert type(got["p"]) is Point and (got["p"].x, got["p"].y) == (1, 2)
    with pytest.raises(ValueError, match="not an allowed module"):
        loads(frame, allowed_modules=[HERE], module_aliases={"nb_alias_module": "elsewhere"})
    with pytest.raises(WireError, match=r"refused to decode nb_alias_module\.Point"):
        loads(frame, allowed_modules=[HERE])


def test_main_is_decoded_only_when_the_caller_says_it_is_its_own_code() -> None:
    import __main__

    class_name = "WireTestMainClass"
    main_class = type(class_name, (), {"__module__": "__main__"})
    setattr(__main__, class_name, main_class)
    try:
        frame = dumps([main_class()])
        with pytest.raises(WireError, match="allowed_modules"):
            loads(frame, allowed_modules=["__main__"])
        with pytest.raises(WireError, match=rf"refused to decode __main__.{class_name}"):
            loads(frame)
        assert type(loads(frame, allowed_modules=["__main__"], allow_main=True)[0]) is \
            main_class
    finally:
        delattr(__main__, class_name)


@needs_torch
def test_torch_tensors_round_trip_with_dtype_shape_and_grad() -> None:
    torch.manual_seed(0)
    leaf = torch.randn(3, 4, requires_grad=True)
    tensors = {
        "leaf": leaf,
        "non_leaf": leaf * 2,  # arrives as a leaf that requires grad
        "transposed": torch.arange(12.0).reshape(3, 4).T,
        "zero_d": torch.tensor(5, dtype=torch.int32),
        "empty": torch.empty(0, 2),
        "conj": torch.tensor([1 + 2j]).conj(),
        "neg": torch.tensor([1.0, 2.0])._neg_view(),
        **{str(dt): (torch.arange(-2, 4) if dt.is_signed or dt == torch.bool
                     else torch.arange(0, 6)).to(dt)
           for dt in [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
                      torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16,
                      torch.bool, torch.complex64, torch.complex128, torch.float8_e4m3fn]},
    }
    got = round_trip(tensors)
    for name, want in tensors.items():
        value = got[name]
        assert type(value) is torch.Tensor, name
        assert value.dtype == want.dtype and value.shape == want.shape, name
        assert value.requires_grad == want.requires_grad and value.is_leaf, name
        exact = want.detach().resolve_conj().resolve_neg()
        if want.dtype in (torch.bfloat16, torch.float8_e4m3fn):
            exact, value = exact.double(), value.double()
        assert torch.equal(value.detach(), exact), name
    assert got["non_leaf"].requires_grad and got["non_leaf"].grad_fn is None
    got["leaf"].sum().backward()  # usable for training
    assert got["leaf"].grad is not None


@needs_torch
def test_torch_parameters_shared_tensors_and_constants() -> None:
    weight = nn.Parameter(torch.ones(2, 2))
    frozen = nn.Parameter(torch.zeros(3), requires_grad=False)
    shared = torch.arange(4)
    state = {"weight": weight, "frozen": frozen, "a": shared, "b": shared,
             "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cpu"),
             "layout": torch.strided, "format": torch.channels_last}
    got = round_trip(state)
    assert type(got["weight"]) is nn.Parameter and got["weight"].requires_grad
    assert type(got["frozen"]) is nn.Parameter and not got["frozen"].requires_grad
    assert got["a"] is got["b"]
    for key in ("size", "dtype", "device", "layout", "format"):
        assert got[key] == state[key]


@needs_torch
def test_torch_modules_round_trip() -> None:
    torch.manual_seed(0)
    sequential = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Dropout(0.1))
    sequential(torch.randn(8, 3))  # moves the BatchNorm running stats
    sequential.eval()
    transformer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()  # keeps F.relu
    got = round_trip({"seq": sequential, "transformer": transformer})
    x = torch.randn(4, 3)
    assert not got["seq"].training
    torch.testing.assert_close(got["seq"](x), sequential(x))
    for key, value in sequential.state_dict().items():
        assert torch.equal(got["seq"].state_dict()[key], value), key
    tokens = torch.randn(2, 5, 8)
    torch.testing.assert_close(got["transformer"](tokens), transformer(tokens))


@needs_torch
def test_user_module_needs_its_package_approved() -> None:
    torch.manual_seed(0)
    model = UserNet()
    frame = dumps({"model": model, "optimizer_lr": 0.1})
    got = loads(frame, allowed_modules={HERE})["model"]
    assert type(got) is UserNet and got.scale == 0.5
    assert got.steps.dtype == torch.int64 and int(got.steps) == 3
    x = torch.randn(2, 4)
    torch.testing.assert_close(got(x), model(x))
    assert all(type(p) is nn.Parameter and p.requires_grad for p in got.parameters())
    with pytest.raises(WireError, match=rf"refused to decode {HERE}\.UserNet") as refused:
        loads(frame)
    assert refused.value.refused == f"{HERE}.UserNet"


def test_dumps_reports_what_cannot_be_encoded() -> None:
    with pytest.raises(WireError, match="cannot encode"):
        dumps({"f": lambda: 1})
    if HAVE_TORCH:
        with pytest.raises(WireError, match="to_dense"):
            dumps(torch.eye(3).to_sparse())

        class Special(torch.Tensor):
            pass

        with pytest.raises(WireError, match=r"only plain torch.Tensor"):
            dumps(torch.ones(2).as_subclass(Special))


def test_big_array_travels_out_of_band_with_a_small_envelope() -> None:
    """A large array is carried as one raw buffer: the frame is the array's bytes plus a small
    envelope (no pickled copy, no text encoding), and it comes back equal and writable.

    How fast that is lives in benchmarks/wire_frames.py, not in a timed test."""
    array = np.random.default_rng(0).random(2_000_000)  # 16 MB
    frame = dumps({"w": array})
    assert array.nbytes <= len(frame) < array.nbytes + 4096
    got = loads(frame)["w"]
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable and not np.shares_memory(got, np.frombuffer(frame, np.uint8))


# ---------------------------------------------------------------------------- hostile payloads


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a hostile payload ran"


def hostile_objects(marker: Path) -> list[tuple[Any, set[str]]]:
    """(object whose pickle calls something dangerous, names the refusal may give)."""
    command = f"touch {marker}"
    opener = f"open({str(marker)!r}, 'w')"
    system = {"posix.system", "nt.system", "os.system"}
    return [
        (Reduces(os.system, command), system),
        (Reduces(builtins.eval, opener), {"builtins.eval"}),
        (Reduces(builtins.exec, opener), {"builtins.exec"}),
        (Reduces(builtins.getattr, 1, "real"), {"builtins.getattr"}),
        (Reduces(builtins.__import__, "os"), {"builtins.__import__"}),
        (Reduces(builtins.compile, "1", "x", "eval"), {"builtins.compile"}),
        (Reduces(builtins.globals), {"builtins.globals"}),
        (Reduces(builtins.open, str(marker), "w"), {"io.open", "builtins.open"}),
        (Reduces(subprocess.Popen, ["touch", str(marker)]), {"subprocess.Popen"}),
        (Reduces(subprocess.check_call, ["touch", str(marker)]), {"subprocess.check_call"}),
        (Reduces(importlib.import_module, "os"), {"importlib.import_module"}),
        (Reduces(functools.partial(os.system, command)), {"functools.partial"} | system),
        (Reduces(pickle.loads, pickle.dumps(Reduces(os.system, command))), {"_pickle.loads"}),
        (Reduces(np.load, str(marker)), {"numpy.load", "numpy.lib._npyio_impl.load"}),
        (Reduces(Path.touch, marker), {"pathlib.Path.touch", "pathlib.Path"}),
        ({"ok": [1, 2], "bad": [Reduces(os.system, command)]}, system),  # deep inside
        (collections.defaultdict(os.getcwd), {"posix.getcwd", "nt.getcwd", "os.getcwd"}),
    ]


def test_hostile_objects_are_refused_naming_the_callable(marker: Path) -> None:
    for obj, names in hostile_objects(marker):
        frame = dumps(obj)
        for allowed in ((), (HERE,)):
            with pytest.raises(WireError, match="refused to decode") as refused:
                loads(frame, allowed_modules=allowed)
            assert refused.value.refused in names, (refused.value.refused, names)
            assert refused.value.refused in str(refused.value)
            assert "only decodes well-known data types" in str(refused.value)


def hand_made(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Hand-made hostile pickles by label: (pickle, the global its refusal names)."""
    command = f"touch {marker}"
    p5 = pickle.PROTO + b"\x05"
    cases = [
        ("GLOBAL opcode", b"cos\nsystem\n(S'" + command.encode() + b"'\ntR.", "os.system"),
        ("STACK_GLOBAL", call("posix", "system", command), "posix.system"),
        ("INST", b"(S'" + command.encode() + b"'\nios\nsystem\n.", "os.system"),
        ("OBJ", b"(cos\nsystem\nS'" + command.encode() + b"'\no.", "os.system"),
        ("NEWOBJ", p5 + stack_global("subprocess", "Popen") + pickle.MARK + pickle.MARK
         + text("touch") + text(str(marker)) + pickle.LIST + pickle.TUPLE + pickle.NEWOBJ
         + pickle.STOP, "subprocess.Popen"),
        ("_reconstructor", p5 + stack_global("copyreg", "_reconstructor") + pickle.MARK
         + stack_global("subprocess", "Popen") + stack_global("builtins", "object")
         + pickle.NONE + pickle.TUPLE + pickle.REDUCE + pickle.STOP, "subprocess.Popen"),
        ("python 2 name", b"c__builtin__\neval\n(S'1'\ntR.", "__builtin__.eval"),
        ("eval", call("builtins", "eval", "1+1"), "builtins.eval"),
        ("breakpoint", call("builtins", "breakpoint"), "builtins.breakpoint"),
        ("type", call("builtins", "type", "x"), "builtins.type"),
        ("method of a builtin", call("builtins", "str.format", "{}"), "builtins.str.format"),
        ("sys.modules", p5 + stack_global("sys", "modules") + pickle.STOP, "sys.modules"),
        ("import into package", call(HERE, "imported_system", command),
         f"{HERE}.imported_system"),
        ("module of package", p5 + stack_global(HERE, "subprocess") + pickle.STOP,
         f"{HERE}.subprocess"),
        ("dotted into module", call(HERE, "os.system", command), f"{HERE}.os.system"),
        ("dunder walk", p5 + stack_global(HERE, "Point.__init__.__globals__") + pickle.STOP,
         f"{HERE}.Point.__init__.__globals__"),
        ("method walk", call(HERE, "Point.__eq__", "x"), f"{HERE}.Point.__eq__"),
        ("torch.load", call("torch", "load", str(marker)), "torch.load"),
        ("torch storage", call("torch.storage", "_load_from_bytes", "x"),
         "torch.storage._load_from_bytes"),
        ("torch import", p5 + stack_global("torch.nn.modules.module", "torch") + pickle.STOP,
         "torch.nn.modules.module.torch"),
        ("torch.nn hook", call("torch.nn.modules.module", "register_module_forward_hook", "x"),
         "torch.nn.modules.module.register_module_forward_hook"),
        ("F plumbing", call("torch.nn.functional", "handle_torch_function", "x"),
         "torch.nn.functional.handle_torch_function"),
        ("numpy.load", call("numpy", "load", str(marker)), "numpy.load"),
        ("numpy.memmap", call("numpy", "memmap", str(marker), "w+"), "numpy.memmap"),
        ("wire itself", call("fedloom.federation.transport.wire", "loads", "x"),
         "fedloom.federation.transport.wire.loads"),
        ("copyreg.__newobj__", call("copyreg", "__newobj__", "x"), "copyreg.__newobj__"),
        ("namedtuple factory", call("collections", "namedtuple", "X", "a"),
         "collections.namedtuple"),
    ]
    return {label: (payload, name) for label, payload, name in cases}


HAND_MADE = list(hand_made(Path("marker")))


@pytest.mark.parametrize("label", HAND_MADE)
def test_hand_made_pickles_are_refused(marker: Path, label: str) -> None:
    payload, name = hand_made(marker)[label]
    if name.startswith("torch") and not HAVE_TORCH:
        pytest.skip("torch is not installed")
    for allowed in ((), (HERE,)):
        with pytest.raises(WireError, match="refused to decode") as refused:
            loads(framed(payload), allowed_modules=allowed)
        assert refused.value.refused == name, label
        assert name in str(refused.value)


def test_torch_save_style_pickles_are_refused() -> None:
    if not HAVE_TORCH:
        pytest.skip("torch is not installed")
    payload = pickle.dumps({"w": torch.ones(2)}, protocol=5)  # torch's own reduction
    with pytest.raises(WireError, match="refused to decode torch") as refused:
        loads(framed(payload))
    assert refused.value.refused in {"torch._utils._rebuild_tensor_v2",
                                     "torch.storage._load_from_bytes"}


def test_other_pickle_machinery_is_refused() -> None:
    p5 = pickle.PROTO + b"\x05"
    with pytest.raises(WireError, match="persistent id"):
        loads(framed(p5 + text("file:/etc/passwd") + pickle.BINPERSID + pickle.STOP))
    with pytest.raises(WireError, match=r"extension|ValueError"):
        loads(framed(p5 + pickle.EXT1 + b"\x01" + pickle.STOP))
    with pytest.raises(WireError, match="refused"):
        wire._checked_reconstructor((), subprocess.Popen, object, None)
    # The restricted reconstructor still serves allowed classes (old protocols use it).
    point = pickle.dumps(Point(1.0, 2.0), protocol=1, fix_imports=False)
    assert loads(framed(point), allowed_modules=[HERE]) == Point(1.0, 2.0)
    with pytest.raises(WireError, match=rf"{HERE}\.Point"):
        loads(framed(point))


def set_attribute(module: str, name: str, attribute: str, value: bytes) -> bytes:
    """A pickle whose BUILD sets ``module.name.attribute = value`` (value: pickle ops)."""
    return (pickle.PROTO + b"\x05" + stack_global(module, name) + pickle.NONE
            + pickle.EMPTY_DICT + text(attribute) + value + pickle.SETITEM + pickle.TUPLE2
            + pickle.BUILD + pickle.STOP)


def test_frames_cannot_modify_well_known_classes_or_functions() -> None:
    before_counter = dict(vars(collections.Counter))
    with pytest.raises(WireError, match=r"changed collections\.Counter \(undone\)"):
        loads(framed(set_attribute("collections", "Counter", "most_common",
                                   stack_global("builtins", "list"))))
    assert dict(vars(collections.Counter)) == before_counter
    with pytest.raises(WireError,
                       match=r"changed fedloom\.federation\.transport\.wire\._rebuild_tensor"):
        loads(framed(set_attribute("fedloom.federation.transport.wire", "_rebuild_tensor", "x",
                                   pickle.NONE)))
    assert not vars(wire._rebuild_tensor)
    if HAVE_TORCH:  # (Module classes have __setstate__, which fails on the class itself)
        forward = vars(nn.Linear)["forward"]
        with pytest.raises(WireError):
            loads(framed(set_attribute("torch.nn.modules.linear", "Linear", "forward",
                                       stack_global("torch.nn.functional", "relu"))))
        assert vars(nn.Linear)["forward"] is forward


def test_frames_must_use_exactly_their_pickle_and_buffers() -> None:
    array_pickle_buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(np.arange(4), protocol=5,
                           buffer_callback=array_pickle_buffers.append)
    raw = bytes(array_pickle_buffers[0].raw())
    assert loads(framed(payload, raw)).tolist() == [0, 1, 2, 3]
    with pytest.raises(WireError, match="carries 2 buffers but the pickle uses 1"):
        loads(framed(payload, raw, b"extra"))
    with pytest.raises(WireError, match=r"out-of-band|buffer"):
        loads(framed(payload))
    with pytest.raises(WireError, match="after the end of the pickle"):
        loads(framed(payload + b"junk", raw))


# -------------------------------------------------------------------- corruption, truncation


def small_frame() -> bytes:
    return dumps({"weights": np.arange(40, dtype=np.float32), "name": "model", "n": 3})


def test_flipped_byte_in_each_region_is_a_checksum_or_header_error() -> None:
    frame = small_frame()
    found = regions(frame)
    assert set(found) == {"prefix", "table", "pickle", "buffer0"}
    for name, (start, stop) in found.items():
        for index in (start, (start + stop) // 2, stop - 1):
            with pytest.raises(WireError, match=r"checksum|header") as error:
                loads(flipped(frame, index))
            assert "corrupt" in str(error.value) or "header" in str(error.value), name


def test_every_flipped_byte_is_detected() -> None:
    frame = small_frame()
    for index in range(len(frame)):
        with pytest.raises(WireError):
            loads(flipped(frame, index))


@pytest.mark.parametrize("keep", [0, 1, 4, 31, 32, 33, 50, -200, -161, -100, -1])
def test_truncated_frames_are_refused(keep: int) -> None:
    frame = small_frame()
    with pytest.raises(WireError, match=r"truncated|empty"):
        loads(frame[:keep])


def test_trailing_bytes_and_garbage_are_refused() -> None:
    frame = small_frame()
    with pytest.raises(WireError, match="announces"):
        loads(frame + b"\x00")
    rng = random.Random(1)
    for data in [b"", b"\x00" * 100, rng.randbytes(1000), pickle.dumps([1, 2]),
                 wire.MAGIC + rng.randbytes(200), b"\x89FLW\x02" + bytes(27),
                 frame[:8] + b"\xff" * 8 + frame[16:]]:
        with pytest.raises(WireError):
            loads(data)
    # A header that checks out but announces an absurd number of buffers.
    head = wire._PREFIX.pack(wire.MAGIC, wire.VERSION, 0, 0, 2**32 - 1, 0, 100)
    with pytest.raises(WireError, match="cannot fit"):
        loads(head + wire._CRC.pack(zlib.crc32(head)) + bytes(68))


def test_random_mutations_only_raise_wire_errors() -> None:
    rng = random.Random(5)
    frame = small_frame()
    for _ in range(300):
        data = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            operation = rng.choice(["flip", "insert", "delete"])
            index = rng.randrange(len(data))
            if operation == "flip":
                data[index] = rng.randrange(256)
            elif operation == "insert":
                data[index:index] = rng.randbytes(rng.randint(1, 8))
            else:
                del data[index:index + rng.randint(1, 8)]
        if bytes(data) != frame:
            with pytest.raises(WireError):
                loads(bytes(data))


def mutated_pickles(seed: int, count: int) -> Iterator[bytes]:
    """Damaged pickles of a small state, to wrap in frames with valid checksums."""
    rng = random.Random(seed)
    payload = pickle.dumps({"a": [1, 2.5, "x", (None, True)], "b": {"c": b"d"},
                            "n": np.float64(2.0), "r": range(3)}, protocol=5)
    for _ in range(count):
        data = bytearray(payload)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)


def test_damaged_pickles_inside_valid_frames_only_raise_wire_errors() -> None:
    for payload in mutated_pickles(seed=3, count=400):
        with contextlib.suppress(WireError):
            loads(framed(payload))


if HAVE_HYPOTHESIS:
    fuzz = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @fuzz
    @given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: wire.MAGIC + b))
    def test_fuzz_loads_random_bytes(data: bytes) -> None:
        with pytest.raises(WireError):
            loads(data)

    @fuzz
    @given(st.binary(min_size=1, max_size=200))
    def test_fuzz_loads_arbitrary_pickles_in_valid_frames(payload: bytes) -> None:
        with contextlib.suppress(WireError):
            loads(framed(payload), allowed_modules=[HERE])

    @fuzz
    @given(st.data())
    def test_fuzz_loads_damaged_frames(data: st.DataObject) -> None:
        frame = bytearray(small_frame())
        index = data.draw(st.integers(0, len(frame) - 1))
        frame[index] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.integers(0, len(frame)))
        with pytest.raises(WireError):
            loads(bytes(frame[:cut]))
else:  # pragma: no cover
    def test_fuzz_loads_random_bytes() -> None:
        pytest.skip("hypothesis is not installed")


# ---------------------------------------------------------------------------------- chunking


def big_frame() -> bytes:
    return dumps({"w": np.arange(3000, dtype=np.float64), "tag": "x" * 500})


@pytest.mark.parametrize("size", [1, 7, 32, 1000, 1 << 20])
def test_chunks_reassemble(size: int) -> None:
    frame = big_frame()
    pieces = list(chunk(frame, size))
    assert all(len(p) <= size for p in pieces) and all(p.obj is frame for p in pieces)
    assembler = Reassembler()
    for piece in pieces:
        assembler.add(piece)
    assert assembler.expected == len(frame) == assembler.received
    whole = assembler.finish()
    assert whole == frame
    np.testing.assert_array_equal(loads(whole)["w"], np.arange(3000, dtype=np.float64))


def test_chunk_rejects_nonsense_sizes_and_yields_nothing_for_nothing() -> None:
    with pytest.raises(ValueError):
        chunk(b"abc", 0)
    assert list(chunk(b"")) == []


def assemble(pieces: list[memoryview] | list[bytes], **kwargs: Any) -> bytes:
    assembler = Reassembler(**kwargs)
    for piece in pieces:
        assembler.add(piece)
    return assembler.finish()


def test_missing_chunks_are_truncation() -> None:
    pieces = list(chunk(big_frame(), 1000))
    for missing in (len(pieces) // 2, len(pieces) - 1):
        with pytest.raises(WireError, match="truncated"):
            assemble(pieces[:missing] + pieces[missing + 1:])
    with pytest.raises(WireError, match="not a fedloom wire frame"):
        assemble(pieces[1:])
    with pytest.raises(WireError, match="empty"):
        assemble([])
    with pytest.raises(WireError, match="truncated"):
        assemble([pieces[0][:10]])


def test_extra_chunks_are_refused_when_they_arrive() -> None:
    pieces = list(chunk(big_frame(), 1000))
    assembler = Reassembler()
    for piece in pieces:
        assembler.add(piece)
    with pytest.raises(WireError, match="extra data"):
        assembler.add(pieces[-1])
    with pytest.raises(WireError, match="extra data"):
        assemble([big_frame() + b"tail"])


def test_reordered_chunks_are_caught() -> None:
    frame = big_frame()
    pieces = list(chunk(frame, 1000))
    with pytest.raises(WireError, match="not a fedloom wire frame"):
        assemble([pieces[1], pieces[0], *pieces[2:]])
    swapped = assemble([pieces[0], pieces[2], pieces[1], *pieces[3:]])
    assert len(swapped) == len(frame)  # same length: the checksums catch it
    with pytest.raises(WireError, match="checksum"):
        loads(swapped)


def test_oversize_frames_are_refused_from_the_header() -> None:
    frame = big_frame()
    assembler = Reassembler(max_bytes=len(frame) - 1)
    assembler.add(frame[:10])
    with pytest.raises(WireError, match="more than"):
        assembler.add(frame[10:40])  # the header is complete: refused before the rest
    assert assemble([frame], max_bytes=len(frame)) == frame


def test_reassembler_is_single_use_and_checks_the_header_early() -> None:
    frame = big_frame()
    assembler = Reassembler()
    assembler.add(frame)
    assembler.finish()
    with pytest.raises(WireError, match="finished"):
        assembler.add(b"x")
    with pytest.raises(WireError, match="finished"):
        assembler.finish()
    broken = Reassembler()
    with pytest.raises(WireError, match="header checksum"):
        broken.add(flipped(frame, 20))
    with pytest.raises(WireError, match="refused: corrupt wire frame: header checksum"):
        broken.add(frame)


def test_an_adopted_frame_becomes_the_arrays_without_a_copy() -> None:
    from fedloom.federation.transport.wire import ADOPT_MIN_BYTES

    model = np.arange(ADOPT_MIN_BYTES // 4, dtype=np.float32)  # large: adopted
    metric = np.ones(3)  # small: copied out, so keeping it does not pin the frame
    frame = bytearray(dumps({"model": model, "metric": metric}))
    got = loads(memoryview(frame), adopt=True)
    assert got["model"].flags.writeable
    got["model"][0] = 42.0  # built on the frame itself: the frame changes, nothing else
    assert np.float32(42.0).tobytes() in bytes(frame)
    assert model[0] == 0.0
    got["metric"][0] = 7.5
    assert np.float64(7.5).tobytes() not in bytes(frame)
    read_only = bytes(dumps({"model": model}))  # not the caller's to give: copied
    again = loads(read_only, adopt=True)
    again["model"][1] = 7.0
    assert loads(read_only)["model"][1] == 1.0
