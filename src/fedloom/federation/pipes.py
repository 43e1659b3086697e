"""The pipe between a node and its experiment process, for tuples of plain values and frames.

``Connection.send`` pickles its message, so a 100 MB frame inside a tuple is copied into the
pickle, written, read back into another bytes and copied out again. Here a message whose last
element is large bytes goes as the rest of the tuple, then the frame on its own with
``send_bytes``: about half the time for large states. A lock keeps the two parts together when
several threads send.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection
from typing import Any

INLINE_BYTES = 64 * 1024  # smaller frames stay inside the pickled tuple
_FRAME_FOLLOWS = "\x00fedloom-frame-follows"


class FramePipe:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        last = message[-1] if message else None
        with self._lock:
            if isinstance(last, bytes | bytearray | memoryview) and len(last) > INLINE_BYTES:
                self._conn.send((*message[:-1], _FRAME_FOLLOWS))
                self._conn.send_bytes(last)
            else:
                self._conn.send(message)

    def recv(self) -> tuple[Any, ...]:
        """The next message; EOFError when the other end closed."""
        message = self._conn.recv()
        if message and message[-1] == _FRAME_FOLLOWS:
            return (*message[:-1], self._conn.recv_bytes())
        return tuple(message)

    def poll(self, timeout: float | None) -> bool:
        """Whether a message is ready within ``timeout`` seconds (None: wait for one)."""
        return self._conn.poll(timeout)

    def close(self) -> None:
        self._conn.close()
