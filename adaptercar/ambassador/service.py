"""The routes of one process as a twisted.application service (listen on start, stop on stop)."""

from __future__ import annotations

import gc
from typing import Any

from twisted.application import service
from twisted.internet import defer

from .route import Route


class AmbassadorService(service.Service):
    def __init__(self, routes_cfg: Any, reactor: Any, drain_timeout: float) -> None:
        self.routes = [Route(r, reactor) for r in routes_cfg]
        self.drain_timeout = drain_timeout

    def startService(self) -> None:  # noqa: N802 - twisted's name
        super().startService()
        tune_gc()
        for r in self.routes:
            r.start()

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - twisted's name
        super().stopService()
        return defer.DeferredList([r.stop(self.drain_timeout) for r in self.routes], consumeErrors=True)

    def stop_listening(self) -> defer.Deferred[Any]:
        """Free the routes' ports (for a reload's new routes); their calls go on."""
        return defer.DeferredList([r.stop_listening() for r in self.routes], consumeErrors=True)

    def view(self) -> dict[str, Any]:
        return {"routes": [r.view() for r in self.routes]}


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young collections (CPython's default: 700)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the proxy's hot path.

    Measured under the benchmark's load (benchmarks/profiles/ambassador-*.svg): a proxied
    request allocates a few hundred objects (Deferreds, coroutines, header dicts) that live
    for its few milliseconds, so with the default thresholds they survive young collections
    and are promoted, and full collections ran about twice a second over the ~70k objects
    of the loaded modules and config: a quarter of the worker's CPU. Freezing what exists
    once the routes are up takes those objects out of every collection, and a larger young
    generation lets a request's objects die by reference counting before a collection sees
    them. Cycles are still collected, only later.
    """
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(_young, GC_YOUNG_THRESHOLD), older, oldest)
