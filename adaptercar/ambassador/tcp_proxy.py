"""The `tcp` route: connect with failover (only the connect is retried), then splice bytes.

Once a byte has gone to an upstream the stream cannot be replayed elsewhere, so failover
stops at the connect. The caller's side is paused until the upstream is connected, then both
transports are each other's producers, which keeps memory bounded on a slow reader.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, error, protocol, task

from .. import metrics
from ..logs import log
from .policy import CONNECT_FAILURE
from .route import Route

_CONNECT_ERRORS = (error.ConnectError, error.TimeoutError)


class _Outbound(protocol.Protocol):
    transport: Any  # twisted's zope interfaces do not type-check as methods
    inbound: _Inbound | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.inbound is not None and self.inbound.transport is not None:
            self.inbound.transport.write(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        if self.inbound is not None and self.inbound.transport is not None:
            self.inbound.transport.loseConnection()


class _Inbound(protocol.Protocol):
    transport: Any

    def __init__(self, route: Route) -> None:
        self.route = route
        self.peer: _Outbound | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.call: defer.Deferred[Any] | None = None

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self.route.drain.enter()  # a spliced connection is in flight until it closes
        self.transport.pauseProducing()
        self.call = defer.ensureDeferred(connect(self.route))
        timer = self.route.reactor.callLater(self.route.timeout, self.call.cancel)
        self.call.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        self.call.addCallbacks(self._connected, self._failed)

    def _connected(self, result: tuple[_Outbound | None, str]) -> None:
        peer, why = result
        if peer is None:
            metrics.ambassador_requests_total.labels(self.route.name, why).inc()
            if self.transport is not None:
                self.transport.loseConnection()
            return
        metrics.ambassador_requests_total.labels(self.route.name, "connected").inc()
        if self.closed:
            peer.transport.loseConnection()
            return
        self.peer = peer
        peer.inbound = self
        for data in self.pending:
            peer.transport.write(data)
        self.pending.clear()
        me: Any = self.transport
        other: Any = peer.transport
        me.registerProducer(other, True)
        other.registerProducer(me, True)
        me.resumeProducing()

    def _failed(self, f: Any) -> None:
        if not f.check(defer.CancelledError):
            log.error("ambassador_error", route=self.route.name, error=repr(f.value))
        metrics.ambassador_requests_total.labels(self.route.name, "deadline").inc()
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        self.closed = True
        self.route.drain.leave()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
        elif self.call is not None and not self.call.called:
            self.call.cancel()


async def connect(route: Route) -> tuple[_Outbound | None, str]:
    """Connect to one endpoint, failing over on connect errors; (None, reason) if none took."""
    reactor = route.reactor
    route.budget.request(reactor.seconds())
    tried: set[str] = set()
    why = "upstream-unavailable"
    for n in range(route.policy.attempts):
        ep, reason = route.pick(tried)
        if ep is None:
            return None, reason if not tried else why
        tried.add(ep.key)

        async def attempt(host: str = ep.host, port: int = ep.port) -> _Outbound | None:
            target = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=route.connect_timeout)
            try:
                return await endpoints.connectProtocol(target, _Outbound())  # type: ignore[no-any-return]
            except _CONNECT_ERRORS:
                return None

        peer = await route.breaker(ep).run(attempt, lambda p: p is None)
        if peer is not None:
            return peer, "connected"
        if n == route.policy.attempts - 1 or not route.policy.on_connect:
            break
        now = reactor.seconds()
        if not route.budget.try_retry(now):
            return None, "budget-exhausted"
        metrics.ambassador_retries_total.labels(route.name, CONNECT_FAILURE).inc()
        delay = route.policy.backoff(n, route.rng)
        if delay > 0:
            await task.deferLater(reactor, delay, lambda: None)
    return None, why


class SpliceFactory(protocol.Factory):
    def __init__(self, route: Route) -> None:
        self.route = route

    def buildProtocol(self, addr: Any) -> _Inbound:  # noqa: N802
        return _Inbound(self.route)
