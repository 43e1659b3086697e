"""What reviewers see of an initial state: described without running package code, and a
hostile frame can neither make the node compute for long nor fail the review."""

from __future__ import annotations

import struct
import sys
import types

import numpy as np

from fedloom.federation.review.preview import preview_state
from fedloom.federation.transport import wire


def test_arrays_scalars_containers_and_package_objects_are_described(monkeypatch):
    module = types.ModuleType("experiment_pkg")

    class Model:
        def __init__(self) -> None:
            self.w = np.zeros((100, 10), np.float32)

    Model.__module__, Model.__qualname__ = module.__name__, "Model"
    module.Model = Model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    frame = wire.dumps({"model": Model(), "bias": np.ones(5), "lr": 0.1,
                        "names": ["a", "b"], "step": np.int64(3)})
    monkeypatch.delitem(sys.modules, module.__name__)  # the reviewer's node does not have it
    entries = {e.name: e for e in preview_state(frame)}
    assert (entries["model"].type, entries["model"].nbytes) == ("experiment_pkg.Model", 4000)
    assert entries["model"].detail == "not decoded before approval"
    assert (entries["bias"].type, entries["bias"].detail) == ("numpy.ndarray", "float64 (5,)")
    assert entries["lr"].detail == "0.1" and entries["names"].detail == "2 items"


def _frame(pickled: bytes) -> bytes:
    return wire._frame(pickled, [])


def test_a_frame_that_would_compute_is_only_described():
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    deque_of_range = (b"\x80\x02}(X\x01\x00\x00\x00d" + glob("collections", "deque") +
                      glob("builtins", "range") + b"I300000000\n\x85R" + b"I0\n\x86Ru.")
    [entry] = preview_state(_frame(deque_of_range))
    # A stand-in took the deque's place: range(3e8) was never iterated.
    assert entry.type == "collections.deque" and "not decoded" in entry.detail


def test_shared_references_are_sized_once_and_odd_values_do_not_fail_the_review():
    fan_out: object = "x"
    for _ in range(5):
        fan_out = [fan_out] * 200  # 200**5 paths, 6 distinct objects
    [entry] = preview_state(wire.dumps({"w": fan_out}))
    assert entry.nbytes == 1
    huge_int = b"\x80\x02}(X\x01\x00\x00\x00a\x8b" + struct.pack("<i", 3000) + b"\x01" * 3000
    [odd] = preview_state(_frame(huge_int + b"u."))
    assert odd.name == "a" and "cannot describe" in odd.detail


def test_an_unreadable_frame_is_one_entry_saying_why():
    [entry] = preview_state(b"garbage")
    assert entry.name == "(unreadable)" and "truncated" in entry.detail
