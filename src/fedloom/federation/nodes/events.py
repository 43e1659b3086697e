"""What an experiment tells whoever follows it: an append-only list of events that any number
of followers read from the start, each at its own pace, woken when one is added (asyncio, on
the director's event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fedloom.federation.transport.proto import fedloom_pb2 as pb


class EventLog:
    """Events of one experiment; :meth:`close` marks its end. Only the event loop that owns
    it may call its methods."""

    def __init__(self) -> None:
        self._events: list[pb.Event] = []
        self._closed = False
        self._added = asyncio.Event()

    def put(self, event: pb.Event) -> None:
        if self._closed:  # nothing follows the end (a late status of a cancelled run)
            return
        self._events.append(event)
        self._wake()

    def status(self, text: str) -> None:
        self.put(pb.Event(status=text))

    def failure(self, message: str, kind: str = "FedloomError") -> None:
        self.put(pb.Event(failure=pb.Failure(kind=kind, message=message)))

    def close(self) -> None:
        self._closed = True
        self._wake()

    def so_far(self) -> list[pb.Event]:
        return list(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    def _wake(self) -> None:
        self._added.set()
        self._added = asyncio.Event()

    async def follow(self, after: int = 0) -> AsyncIterator[pb.Event]:
        """Every event after the first ``after``, then each as it comes, until the log is
        closed."""
        seen = after
        while True:
            added = self._added  # taken before looking: an event put after this wakes us
            while seen < len(self._events):
                seen += 1
                yield self._events[seen - 1]
            if self._closed:
                return
            await added.wait()
