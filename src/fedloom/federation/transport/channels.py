"""gRPC at the edge: channels and servers (TLS or explicit plaintext), and frames in chunks.

Everything that depends on grpc's API lives here and in the servicer; the director, envoys and
users see typed helpers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from fedloom.errors import FedloomError
from fedloom.federation.transport.proto import fedloom_pb2 as pb

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB message limit
MAX_FRAME_BYTES = 8 << 30
# Keepalive pings let both ends notice a peer that vanished without closing its connection.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


class TransportError(FedloomError):
    """A frame arrived incomplete or out of order, or a peer could not be reached."""


@dataclass(frozen=True)
class Endpoint:
    """Where the director listens, and how to talk to it."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def chunks(frame: bytes | bytearray | memoryview, size: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """``frame`` as Chunk messages (at least one, even for an empty frame)."""
    view = memoryview(frame)
    total = len(frame)
    for offset in range(0, max(total, 1), size):
        yield pb.Chunk(total=total, offset=offset, data=bytes(view[offset:offset + size]))


class Assembler:
    """Collects the chunks of one frame, in order; refuses gaps, overlaps and oversize."""

    def __init__(self, what: str, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._what = what
        self._max = max_bytes
        self._parts: list[bytes] = []
        self._received = 0
        self._total: int | None = None

    def add(self, chunk: pb.Chunk) -> bytes | None:
        """Add a chunk; returns the whole frame once the last one arrived."""
        if self._total is None:
            if chunk.total > self._max:
                raise TransportError(f"{self._what}: {chunk.total} bytes announced, more than "
                                     f"the {self._max} allowed")
            self._total = chunk.total
        if chunk.total != self._total or chunk.offset != self._received:
            raise TransportError(f"{self._what}: chunk at offset {chunk.offset} of "
                                 f"{chunk.total} bytes does not follow {self._received} of "
                                 f"{self._total}; the stream is corrupt")
        self._parts.append(chunk.data)
        self._received += len(chunk.data)
        if self._received > self._total:
            raise TransportError(f"{self._what}: more bytes than the {self._total} announced")
        if self._received == self._total:
            return b"".join(self._parts)
        return None

    def finish(self) -> bytes:
        """The frame; a :class:`TransportError` if the stream ended early."""
        if self._total is None or self._received != self._total:
            raise TransportError(f"{self._what}: the stream ended after {self._received} of "
                                 f"{self._total if self._total is not None else '?'} bytes")
        return b"".join(self._parts)


def open_channel(endpoint: Endpoint, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A channel to the director; ``credentials=None`` is plaintext (logged as insecure)."""
    options = [*KEEPALIVE_OPTIONS, ("grpc.max_receive_message_length", 16 << 20)]
    if credentials is None:
        log.warning("connecting to %s WITHOUT TLS: traffic is neither encrypted nor "
                    "authenticated", endpoint.address)
        return grpc.insecure_channel(endpoint.address, options=options)
    return grpc.secure_channel(endpoint.address, credentials, options=options)


def wait_ready(channel: grpc.Channel, endpoint: Endpoint, timeout: float, *, tls: bool) -> None:
    """Returns once ``channel`` is connected. The first failed attempt is an error at once
    (not after ``timeout``): a director that is down, or a TLS/plaintext mismatch, does not
    get better by waiting, and the message says what to check."""
    settled = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def seen(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            states.append(state)
            settled.set()

    channel.subscribe(seen, try_to_connect=True)
    try:
        if not settled.wait(timeout):
            raise TransportError(f"no answer from the director at {endpoint.address} within "
                                 f"{timeout:g} s: is the host reachable from here?")
    finally:
        channel.unsubscribe(seen)
    if states[0] is not grpc.ChannelConnectivity.READY:
        raise TransportError(_connect_hint(endpoint, tls))


def _connect_hint(endpoint: Endpoint, tls: bool) -> str:
    if tls:
        return (f"cannot connect to the director at {endpoint.address}: it is not running there, "
                "or the TLS handshake failed. Check the host and port, that the director uses "
                "TLS (it was not started with --disable-tls), and that your certificate and its "
                "root CA are the federation's (fx pki)")
    return (f"cannot connect to the director at {endpoint.address} without TLS: it is not "
            "running there, or it requires TLS (the default). Connect with TLS and certificates "
            "from fx pki, unless the director was started with --disable-tls")


SERVER_OPTIONS = [
    *KEEPALIVE_OPTIONS,
    # A chain's outcome header carries its tasks' output (cut at messages.OUTPUT_KEPT_BYTES).
    ("grpc.max_receive_message_length", 64 << 20),
    # One director per port: with SO_REUSEPORT (gRPC's default) a second one would start and
    # take half of the new connections.
    ("grpc.so_reuseport", 0),
]


def new_aio_server(credentials: grpc.ServerCredentials | None,
                   endpoint: Endpoint) -> tuple[grpc.aio.Server, int]:
    """An asyncio gRPC server bound to ``endpoint`` (port 0 picks a free one), with its port.
    A long-lived call costs it a coroutine, not a thread. Call from the event loop."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    if credentials is None:
        log.warning("the director listens on %s WITHOUT TLS: anyone who can reach the port "
                    "can act as any envoy or user", endpoint.address)
    try:
        port = server.add_insecure_port(endpoint.address) if credentials is None else \
            server.add_secure_port(endpoint.address, credentials)
    except RuntimeError:  # newer gRPC raises where older ones returned 0
        port = 0
    if port == 0:
        raise TransportError(f"cannot listen on {endpoint.address}: the port is in use (is "
                             "another director running? 'ss -ltnp' shows who holds it) or the "
                             "host is not an address of this machine; choose another "
                             "settings.listen_port or stop the other process")
    return server, port
