"""Large states beside the Director service: ``fedloom.v1.Bulk`` on the same port and TLS.

A state inside protobuf ``Chunk`` messages is copied three more times on each side (the
message, its serialisation, ``.data`` and the join), which made protobuf, not the network, the
cost of a large model. Here a state moves as raw pieces of bytes: one copy to cut a piece, one
to put it in place on the other side, into a memory map that only commits pages as they are
written (so a size announced by a peer costs nothing until the bytes arrive).

- ``Pull``: the envoy asks for the state of a chain it was sent (by experiment and request);
  the director streams it, only to an envoy the chain was addressed to.
- ``Push``: the envoy sends a chain's outcome: a ``Report`` header, then the state's pieces.
- ``PushSmall``: an outcome with a state up to :data:`INLINE_BYTES`, in one unary call.
- ``PushStream``: such outcomes as messages on one long-lived call per connection (a message
  on an open stream costs the director a fraction of a call); fx envoy uses it when the
  director has it, and PushSmall otherwise.
- ``Submit``: the user sends an experiment: a ``SubmissionHeader``, then the package's pieces.
- ``Result``: the user takes its experiment's final state (once; it is kept for a while).
- ``Fetch``: the user fetches its experiment's recorded run (its size, then a tar archive).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedloom.federation.transport.channels import MAX_FRAME_BYTES, TransportError
from fedloom.federation.transport.pipes import MemoryFrame
from fedloom.federation.transport.proto import fedloom_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "fedloom.v1.Bulk"
PULL = f"/{SERVICE}/Pull"
PUSH = f"/{SERVICE}/Push"
PUSH_SMALL = f"/{SERVICE}/PushSmall"
PUSH_STREAM = f"/{SERVICE}/PushStream"
# The director's initial metadata on a PushStream it accepted: an answer that a call refused
# at once (no such method) cannot be mistaken for, as its empty metadata can.
STREAM_OPEN = ("fedloom-outcome-stream", "open")
SUBMIT = f"/{SERVICE}/Submit"
RESULT = f"/{SERVICE}/Result"
FETCH = f"/{SERVICE}/Fetch"
_SIZE = struct.Struct("<Q")  # Fetch's first message: the archive's size
_HEAD_SIZE = struct.Struct("<I")  # PushSmall's request starts with its header's length
PIECE_BYTES = 4 << 20  # measured: the fastest piece size for gRPC streams here (1-16 MiB)
INLINE_BYTES = 256 << 10  # smaller states stay inside the control messages (no extra trip)
PACKAGE = "package"  # the request name under which envoys pull an experiment's package
SECONDS_PER_GB = 60  # a transfer's deadline grows with its size; nothing waits forever
Frame = bytes | bytearray | memoryview


def pieces(frame: Frame, size: int = PIECE_BYTES) -> Iterator[bytes]:
    """``frame`` in raw pieces (gRPC sends bytes: one copy each)."""
    view = memoryview(frame).cast("B")
    for offset in range(0, len(view), size):
        yield bytes(view[offset:offset + size])


def deadline(nbytes: int) -> float:
    return 60 + SECONDS_PER_GB * nbytes / 1e9


class Receiver:
    """Puts the pieces of one state of announced size in place; refuses more or fewer."""

    def __init__(self, total: int, what: str, max_bytes: int = MAX_FRAME_BYTES) -> None:
        if total > max_bytes:
            raise TransportError(f"{what}: {total} bytes announced, more than the {max_bytes} "
                                 "allowed")
        self._what = what
        self._total = total
        self._received = 0
        # Pages are committed as pieces land, not for the announced size; and the frame goes
        # on to the next process by its descriptor, without a copy.
        self._frame = MemoryFrame(total)
        self._view = self._frame.view

    def add(self, piece: bytes) -> None:
        end = self._received + len(piece)
        if end > self._total:
            raise TransportError(f"{self._what}: more bytes than the {self._total} announced")
        self._view[self._received:end] = piece
        self._received = end

    def finish(self) -> MemoryFrame:
        if self._received != self._total:
            raise TransportError(f"{self._what}: the stream ended after {self._received} of "
                                 f"{self._total} bytes")
        return self._frame


def pull(channel: grpc.Channel, request: pb.PullRequest, total: int, what: str) -> MemoryFrame:
    """The state of a chain (or the package to review), from the director."""
    return _fetch(channel, PULL, request, total, what)


def result(channel: grpc.Channel, experiment: str, total: int) -> MemoryFrame:
    """The final state of the user's experiment, from the director."""
    return _fetch(channel, RESULT, pb.EventsRequest(experiment=experiment), total,
                  "final state")


def fetch_run(channel: grpc.Channel, experiment: str, timeout: float) -> MemoryFrame:
    """The recorded run of the user's experiment (a tar archive), from the director."""
    call = channel.unary_stream(FETCH, request_serializer=pb.FetchRunRequest.SerializeToString,
                                response_deserializer=None)
    messages = call(pb.FetchRunRequest(experiment=experiment), timeout=timeout)
    first = next(messages, b"")
    if len(first) != _SIZE.size:
        raise TransportError(f"recorded run of experiment {experiment}: no size announced")
    receiver = Receiver(_SIZE.unpack(first)[0], f"recorded run of experiment {experiment}")
    for piece in messages:
        receiver.add(piece)
    return receiver.finish()


def sized_pieces(frame: Frame) -> Iterator[bytes]:
    """Fetch's answer: the size, then the pieces."""
    yield _SIZE.pack(len(memoryview(frame).cast("B")))
    yield from pieces(frame)


def _fetch(channel: grpc.Channel, method: str, request: Any, total: int,
           what: str) -> MemoryFrame:
    call = channel.unary_stream(method, request_serializer=type(request).SerializeToString,
                                response_deserializer=None)
    receiver = Receiver(total, what)
    for piece in call(request, timeout=deadline(total)):
        receiver.add(piece)
    return receiver.finish()


def push(channel: grpc.Channel, head: pb.Report, frame: Frame) -> None:
    """A chain's outcome (``head``) and its state, to the director: a small state in one
    unary call (a streaming call costs a thread on this side and a stream on the director's,
    a hundred times a round with a hundred envoys), a large one in pieces."""
    view = memoryview(frame).cast("B")
    head.bulk_bytes = len(view)
    if len(view) > INLINE_BYTES:
        _send(channel, PUSH, head, frame, pb.Ack.FromString)
        return
    call = channel.unary_unary(PUSH_SMALL, request_serializer=None,
                               response_deserializer=pb.Ack.FromString)
    call(small_push(head, view), timeout=deadline(len(view)))


def small_push(head: pb.Report, frame: Frame) -> bytes:
    """PushSmall's request: the header's length, the header, the state."""
    header = head.SerializeToString()
    return b"".join((_HEAD_SIZE.pack(len(header)), header, memoryview(frame).cast("B")))


def split_small_push(raw: bytes) -> tuple[bytes, memoryview]:
    """PushSmall's request as (its Report header, the state); TransportError if malformed."""
    if len(raw) < _HEAD_SIZE.size:
        raise TransportError("Bulk.PushSmall: the request is too short to hold a header")
    (length,) = _HEAD_SIZE.unpack_from(raw)
    end = _HEAD_SIZE.size + length
    if end > len(raw):
        raise TransportError(f"Bulk.PushSmall: the header says {length} bytes, but only "
                             f"{len(raw) - _HEAD_SIZE.size} follow")
    view = memoryview(raw)
    return bytes(view[_HEAD_SIZE.size:end]), view[end:]


class OutcomeStream:
    """An envoy's small chain outcomes, as messages on one long-lived ``PushStream`` call.

    The call opens at the first outcome and waits for the director to accept it (its initial
    metadata); a director without the method, or one that refuses the call, makes
    :meth:`send` return False, and the caller sends that outcome, and the later ones, with
    PushSmall. Messages carry no answer: an outcome is lost only if the call ends, so the
    call's end (``on_end``, unless :meth:`close` ended it) must end the connection, which
    tells the director this envoy's chains are lost.
    """

    OPEN_TIMEOUT = 60.0  # seconds for the director to accept the call

    def __init__(self, channel: grpc.Channel, session: str,
                 on_end: Callable[[str], None]) -> None:
        self._channel, self._session, self._on_end = channel, session, on_end
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._call: Any = None
        self._usable: bool | None = None  # None: not opened yet
        self._closed = False

    def send(self, head: pb.Report, frame: Frame) -> bool:
        """Queues the outcome (``head``) and its state; False if the state is over
        INLINE_BYTES or this connection cannot stream outcomes (send it with :func:`push`);
        TransportError if the call ended."""
        view = memoryview(frame).cast("B")
        if len(view) > INLINE_BYTES or not self._open():
            return False
        head.bulk_bytes = len(view)
        if self._call.done():
            raise TransportError(f"the director's outcome stream ended: {_why_ended(self._call)}")
        self._queue.put(small_push(head, view))
        return True

    def close(self) -> None:
        """Ends the call (its connection is closing): the messages queued go out first."""
        with self._lock:
            self._closed = True
        self._queue.put(None)

    def _open(self) -> bool:
        with self._lock:
            if self._usable is None and not self._closed:
                self._usable = self._start()
            return bool(self._usable) and not self._closed

    def _start(self) -> bool:
        call = self._channel.stream_unary(PUSH_STREAM, request_serializer=None,
                                          response_deserializer=pb.Ack.FromString)
        self._queue.put(pb.WorkRequest(session=self._session).SerializeToString())
        self._call = call.future(iter(self._queue.get, None))
        answered = threading.Event()
        metadata: list[tuple[str, Any]] = []

        def wait_answer() -> None:
            metadata.extend(self._call.initial_metadata() or ())  # or the call's end
            answered.set()

        threading.Thread(target=wait_answer, daemon=True,
                         name="fedloom-outcome-stream").start()
        if not answered.wait(self.OPEN_TIMEOUT) or STREAM_OPEN not in metadata:
            if answered.is_set():
                with contextlib.suppress(grpc.FutureTimeoutError, grpc.FutureCancelledError):
                    self._call.exception(timeout=self.OPEN_TIMEOUT)  # why it was refused
            why = _why_ended(self._call) if self._call.done() else \
                f"not accepted within {self.OPEN_TIMEOUT:g} s"
            self._call.cancel()
            log.info("the director's outcome stream is not available (%s): chain outcomes go "
                     "in one call each", why)
            return False
        self._call.add_done_callback(self._call_ended)
        log.info("chain outcomes go on one stream to the director (Bulk.PushStream)")
        return True

    def _call_ended(self, call: Any) -> None:
        if not self._closed:
            self._on_end(_why_ended(call))


def _why_ended(call: Any) -> str:
    if call.cancelled():
        return "cancelled"
    error = call.exception()
    if error is None:
        return "closed by the director"
    return f"{error.code().name}: {error.details()}"


def submit(channel: grpc.Channel, head: pb.SubmissionHeader, package: Frame) -> pb.SubmitReply:
    """An experiment's package, to the director."""
    head.bulk_bytes = len(memoryview(package).cast("B"))
    reply: pb.SubmitReply = _send(channel, SUBMIT, head, package, pb.SubmitReply.FromString)
    return reply


def _send(channel: grpc.Channel, method: str, head: Any, frame: Frame,
          reply: Callable[[bytes], Any]) -> Any:
    call = channel.stream_unary(method, request_serializer=None, response_deserializer=reply)

    def messages() -> Iterator[bytes]:
        yield head.SerializeToString()
        yield from pieces(frame)

    return call(messages(), timeout=deadline(head.bulk_bytes))


@dataclass
class _Waiting:
    frame: Frame
    envoys: set[str] = field(default_factory=set)


class Outbox:
    """States waiting for their envoys to pull them, by (experiment, request). A new fan-out of
    an experiment replaces what its previous one left unpulled (a straggler's old work); its
    package (:data:`PACKAGE`) stays until the experiment ends (an envoy that rejoins reviews
    it again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], _Waiting] = {}

    def offer(self, experiment: str, request: str, frame: Frame, envoys: set[str]) -> None:
        with self._lock:
            if request == PACKAGE:
                waiting = self._waiting.setdefault((experiment, request), _Waiting(frame))
                waiting.envoys |= envoys
                return
            self._drop(experiment, keep=PACKAGE)
            self._waiting[(experiment, request)] = _Waiting(frame, set(envoys))

    def take(self, experiment: str, request: str, envoy: str) -> Frame | None:
        """The state for ``envoy`` (once), or None if it was not sent to it or is gone."""
        with self._lock:
            waiting = self._waiting.get((experiment, request))
            if waiting is None or envoy not in waiting.envoys:
                return None
            waiting.envoys.discard(envoy)
            if not waiting.envoys:
                del self._waiting[(experiment, request)]
            return waiting.frame

    def drop(self, experiment: str) -> None:
        with self._lock:
            self._drop(experiment)

    def _drop(self, experiment: str, keep: str = "") -> None:
        for key in [k for k in self._waiting if k[0] == experiment and k[1] != keep]:
            del self._waiting[key]


def method_handlers(servicer: Any) -> dict[str, Any]:
    """The Bulk service's methods, around the director's ``pull_state``, ``push_state``,
    ``push_small_state``, ``push_stream``, ``submit_package``, ``final_state`` and
    ``recorded_run``."""
    return {
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.pull_state, request_deserializer=pb.PullRequest.FromString),
        "Push": grpc.stream_unary_rpc_method_handler(
            servicer.push_state, response_serializer=pb.Ack.SerializeToString),
        "PushSmall": grpc.unary_unary_rpc_method_handler(
            servicer.push_small_state, response_serializer=pb.Ack.SerializeToString),
        "PushStream": grpc.stream_unary_rpc_method_handler(
            servicer.push_stream, response_serializer=pb.Ack.SerializeToString),
        "Submit": grpc.stream_unary_rpc_method_handler(
            servicer.submit_package, response_serializer=pb.SubmitReply.SerializeToString),
        "Result": grpc.unary_stream_rpc_method_handler(
            servicer.final_state, request_deserializer=pb.EventsRequest.FromString),
        "Fetch": grpc.unary_stream_rpc_method_handler(
            servicer.recorded_run, request_deserializer=pb.FetchRunRequest.FromString),
    }
