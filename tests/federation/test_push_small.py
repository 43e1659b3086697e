"""Bulk.PushSmall's one message: the header's length, the header, the state; anything else is
refused as malformed, naming what is wrong."""

from __future__ import annotations

import pytest

from fedloom.federation.transport import TransportError, bulk
from fedloom.federation.transport.proto import fedloom_pb2 as pb


def _message(header: bytes, state: bytes) -> bytes:
    return len(header).to_bytes(4, "little") + header + state


def test_a_small_push_splits_into_its_header_and_state():
    head = pb.Report(session="s", experiment="1-x", request="r1", bulk_bytes=5)
    header, state = bulk.split_small_push(_message(head.SerializeToString(), b"state"))
    assert pb.Report.FromString(header) == head
    assert bytes(state) == b"state"
    header, state = bulk.split_small_push(_message(b"", b""))  # an empty header is a header
    assert header == b"" and bytes(state) == b""


@pytest.mark.parametrize(("raw", "says"), [
    (b"\x01\x00", "too short to hold a header"),
    (_message(b"header", b"")[:-2], "the header says 6 bytes, but only 4 follow"),
    ((1 << 31).to_bytes(4, "little") + b"x", "but only 1 follow"),
])
def test_a_malformed_small_push_is_refused_naming_the_fault(raw, says):
    with pytest.raises(TransportError, match="Bulk.PushSmall: .*" + says):
        bulk.split_small_push(raw)
