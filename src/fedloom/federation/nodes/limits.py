"""Per-peer limits on the director: no certificate holder, careless or hostile, can take
enough of the director to deny service to the others.

Long-lived calls (work streams, event streams, transfers) are counted per certificate; a peer
over its limit gets ``RESOURCE_EXHAUSTED`` naming the limit and the setting that raises it.
Health checks and registration are unary calls and never counted: they cannot be crowded out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """The director's limits (``settings`` keys of the same names), sized for a federation of
    a thousand envoys and a few dozen users."""

    max_streams_per_peer: int = 64  # open long-lived calls per certificate
    max_uploads_per_peer: int = 8  # concurrent uploads (submissions, results) per certificate
    max_queued_per_user: int = 32  # experiments a user may have queued or running at once
    first_message_timeout: float = 30.0  # seconds to send an upload's first message
    upload_idle_timeout: float = 120.0  # seconds an upload may stay silent between pieces

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Limits:
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class LimitExceeded(Exception):
    """A peer asked for more than its limit; the message says which and how to change it."""


class Hold:
    """One stream (and upload) held by a peer, given back when the ``with`` block ends."""

    def __init__(self, counters: PeerCounters, peer: str, upload: bool) -> None:
        self._counters, self._peer, self._upload = counters, peer, upload

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self._counters.release(self._peer, self._upload)


class PeerCounters:
    """How many long-lived calls and uploads each peer holds now."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._streams: Counter[str] = Counter()
        self._uploads: Counter[str] = Counter()

    def acquire(self, peer: str, *, upload: bool = False) -> Hold:
        """One more of ``peer``'s streams (and uploads); :class:`LimitExceeded` when over."""
        self._check(peer, self._streams, self.limits.max_streams_per_peer,
                    "max_streams_per_peer", "long-lived calls")
        if upload:
            self._check(peer, self._uploads, self.limits.max_uploads_per_peer,
                        "max_uploads_per_peer", "uploads")
        self._streams[peer] += 1
        self._uploads[peer] += upload
        return Hold(self, peer, upload)

    def release(self, peer: str, upload: bool) -> None:
        self._streams[peer] -= 1
        self._uploads[peer] -= upload
        for counter in (self._streams, self._uploads):
            if counter[peer] <= 0:
                del counter[peer]

    def held(self, peer: str) -> int:
        return self._streams.get(peer, 0)

    @staticmethod
    def _check(peer: str, counter: Counter[str], limit: int, setting: str, what: str) -> None:
        if counter[peer] >= limit:
            raise LimitExceeded(
                f"'{peer}' already has {counter[peer]} {what} open, the director's limit "
                f"(settings.{setting}: {limit}); close some first, or ask the director's "
                f"admin to raise settings.{setting}")
