"""Calls in flight, counted so that a stop can wait for them (bounded by drain_timeout).

Shared by the fronts (the backend calls of a worker) and the ambassador's routes.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from typing import Any

from twisted.internet import defer, task


class Drain:
    """Counts calls in flight so shutdown can wait for them (bounded by drain_timeout)."""

    def __init__(self) -> None:
        self.inflight = 0
        self.waiters: list[defer.Deferred[None]] = []

    def enter(self) -> None:
        self.inflight += 1

    def leave(self, _: Any = None) -> Any:
        self.inflight -= 1
        if self.inflight == 0:
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w.callback(None)
        return _

    def idle(self) -> defer.Deferred[None]:
        if self.inflight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(d)
        return d


def _open(ch: Any) -> bool:
    return ch.transport is not None and bool(ch.transport.connected)


@defer.inlineCallbacks
def close_channels(channels: Iterable[Any], reactor: Any,
                   within: float = 1.0) -> Generator[Any, Any, None]:
    """Close HTTP connections gracefully and wait (boundedly) until they are gone:
    `loseConnection` writes what is buffered first, whereas the reactor's own shutdown would
    drop a response still in a socket buffer."""
    channels = list(channels)
    for ch in channels:
        if _open(ch):
            ch.loseConnection()
    end = time.monotonic() + within
    while time.monotonic() < end and any(_open(ch) for ch in channels):
        yield task.deferLater(reactor, 0.01, lambda: None)
