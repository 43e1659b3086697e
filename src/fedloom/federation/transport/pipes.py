"""The pipe between a node and its experiment process, for tuples of plain values and frames.

``Connection.send`` pickles its message, so a 100 MB frame inside a tuple is copied into the
pickle, written, read back into another bytes and copied out again. Here a message whose last
element is a large frame goes as the rest of the tuple, then the frame on its own: on Linux in
an anonymous memory file whose descriptor is passed over the pipe (one copy in, the receiver
maps it; the kernel frees it when both ends have closed it, so nothing leaks if a process
dies), elsewhere with ``send_bytes``. A lock keeps the parts together when several threads
send. A :class:`MemoryFrame` (a frame received from the network straight into a memory file)
is handed over by its descriptor without any copy; a frame still in pieces
(:class:`~fedloom.federation.transport.wire.FrameParts`) is written into the memory file piece
by piece.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import sys
import threading
import weakref
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

from fedloom.federation.transport.wire import FrameParts

INLINE_BYTES = 64 * 1024  # smaller frames stay inside the pickled tuple
_FRAME_FOLLOWS = "\x00fedloom-frame-follows"
_FRAME_IN_FD = "\x00fedloom-frame-in-fd"
_MEMFD = sys.platform == "linux" and hasattr(os, "memfd_create")


class MemoryFrame:
    """A frame of known size, written in place, in an anonymous memory file on Linux (pages
    are committed as they are written), so that :meth:`FramePipe.send` passes its descriptor
    instead of copying it. Sending hands it over; the descriptor is closed then or when the
    frame is collected."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("fedloom-frame", os.MFD_CLOEXEC) if _MEMFD else -1
        self._closer = weakref.finalize(self, _close, self.fd)
        if self.fd >= 0:
            os.ftruncate(self.fd, size)
        self.view = memoryview(bytearray()) if not size else memoryview(
            mmap.mmap(self.fd, size) if self.fd >= 0 else mmap.mmap(-1, size))

    def __len__(self) -> int:
        return self.size

    def handed_over(self) -> None:
        self._closer()


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


class FramePipe:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        """Safe to call from several threads: a message and its frame go together."""
        if not message:
            with self._lock:
                self._conn.send(message)
            return
        head, last = message[:-1], message[-1]
        if isinstance(last, MemoryFrame) and last.fd >= 0 and last.size > INLINE_BYTES:
            with self._lock:  # already in a memory file: its descriptor goes, no copy
                self._conn.send((*head, _FRAME_IN_FD, last.size))
                reduction.send_handle(self._conn, last.fd, 0)
            last.handed_over()
            return
        if isinstance(last, MemoryFrame):
            last = last.view
        large = isinstance(last, bytes | bytearray | memoryview | FrameParts) and \
            len(last) > INLINE_BYTES
        if not large and isinstance(last, memoryview | FrameParts):
            last = last.tobytes()  # small: inside the pickle, which takes bytes
        with self._lock:
            if not large:
                self._conn.send((*head, last))
            elif _MEMFD:
                self._send_in_memory_file(head, last)
            else:
                self._conn.send((*head, _FRAME_FOLLOWS))
                self._conn.send_bytes(last.tobytes() if isinstance(last, FrameParts) else last)

    def _send_in_memory_file(self, head: tuple[Any, ...],
                             frame: bytes | bytearray | memoryview | FrameParts) -> None:
        fd = os.memfd_create("fedloom-frame", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as file:
                for part in frame.parts if isinstance(frame, FrameParts) else [frame]:
                    file.write(part)
            self._conn.send((*head, _FRAME_IN_FD, len(frame)))
            reduction.send_handle(self._conn, fd, 0)
        finally:
            os.close(fd)

    def recv(self) -> tuple[Any, ...]:
        """The next message; EOFError when the other end closed."""
        message = self._conn.recv()
        if message and message[-1] == _FRAME_FOLLOWS:
            return (*message[:-1], self._conn.recv_bytes())
        if len(message) >= 2 and message[-2] == _FRAME_IN_FD:
            return (*message[:-2], _map(reduction.recv_handle(self._conn), message[-1]))
        return tuple(message)

    def poll(self, timeout: float | None) -> bool:
        """Whether a message is ready within ``timeout`` seconds (None: wait for one)."""
        return self._conn.poll(timeout)

    def close(self) -> None:
        self._conn.close()


class AnsweringPipe:
    """The child's end of a pipe whose parent checks that the child is alive: a thread reads
    every message as it comes, answers ``("ping", x)`` with ``("pong", x)`` at once (also while
    the main thread is busy inside a step), and queues the rest for :meth:`recv`. A child that
    stops answering is stopped, or stuck in code that never lets the thread run."""

    def __init__(self, pipe: FramePipe) -> None:
        self._pipe = pipe
        self._inbox: queue.SimpleQueue[tuple[Any, ...] | BaseException] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="fedloom-pipe-reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self._pipe.recv()
            except (EOFError, OSError) as exc:
                self._inbox.put(exc if isinstance(exc, EOFError) else EOFError(str(exc)))
                return
            if message and message[0] == "ping":
                with contextlib.suppress(OSError):  # the parent is gone: recv says so
                    self._pipe.send(("pong", *message[1:]))
                continue
            self._inbox.put(message)

    def recv(self) -> tuple[Any, ...]:
        """The next message that is not a ping; EOFError once the parent closed its end."""
        message = self._inbox.get()
        if isinstance(message, BaseException):
            self._inbox.put(message)  # every later recv ends the same way
            raise message
        return message

    def send(self, message: tuple[Any, ...]) -> None:
        self._pipe.send(message)


def _map(fd: int, length: int) -> memoryview:
    """The frame in memory file ``fd``, without a copy, as this process's own: a private
    copy-on-write mapping, so what decodes it may keep and change its arrays in place (see
    ``wire.loads(adopt=True)``); the view keeps the mapping alive, the descriptor is closed."""
    try:
        return memoryview(mmap.mmap(fd, length, access=mmap.ACCESS_COPY))
    finally:
        os.close(fd)
