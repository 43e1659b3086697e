"""How bytes move: gRPC channels and servers (``channels``, re-exported here), the wire format
of flow state (``wire``), large transfers (``bulk``), frames between a node and its processes
(``pipes``), protobuf conversions (``messages``), and the generated protocol (``proto``)."""

from fedloom.federation.transport.channels import (
    CHUNK_BYTES,
    KEEPALIVE_OPTIONS,
    MAX_FRAME_BYTES,
    SERVER_OPTIONS,
    Assembler,
    Endpoint,
    TransportError,
    chunks,
    new_aio_server,
    open_channel,
    wait_ready,
)

__all__ = [
    "CHUNK_BYTES",
    "KEEPALIVE_OPTIONS",
    "MAX_FRAME_BYTES",
    "SERVER_OPTIONS",
    "Assembler",
    "Endpoint",
    "TransportError",
    "chunks",
    "new_aio_server",
    "open_channel",
    "wait_ready",
]
