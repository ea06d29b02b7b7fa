"""One ambassador route: its listener, its endpoint set, its breakers and its retry state.

The protocol shells (`http_proxy`, `tcp_proxy`) ask the route for the next endpoint and report
back; everything a route remembers between calls (discovery, breakers, budget) lives here so
`GET /ambassador` can show it.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Generator
from typing import Any

from twisted.internet import defer

from .. import metrics
from ..config.schema import split_host_port
from ..drain import Drain, close_channels
from ..logs import log
from .breaker import EndpointBreaker
from .discovery import Discovery
from .policy import RetryBudget, RetryPolicy
from .selection import Endpoint, choose


def _static(addr: str) -> Endpoint:
    host, port = split_host_port(addr)
    return Endpoint(host, port, name=host)


class Route:
    def __init__(self, cfg: Any, reactor: Any, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.drain = Drain()  # proxied calls (HTTP) or spliced connections (TCP) in flight
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()  # HTTP: those that had a call
        self.name: str = cfg.name
        self.reactor = reactor
        self.rng = rng or random.Random()
        self.policy = RetryPolicy(cfg.retry)
        self.budget = RetryBudget(cfg.retry.budget.ratio, cfg.retry.budget.min_per_second)
        self.timeout = float(cfg.timeout)
        self.per_try = float(cfg.per_try_timeout) if cfg.per_try_timeout else None
        self.connect_timeout = float(cfg.connect_timeout)
        host = cfg.host_header
        self.host_header: bytes | None = (None if host in ("keep", "upstream")
                                          else host.encode("ascii"))
        """The literal `Host` to send; None: keep the caller's, or the endpoint's (`rewrite_host`)."""
        self.rewrite_host = host == "upstream"
        self.breakers: dict[str, EndpointBreaker] = {}
        res = cfg.resolver
        self.discovery = Discovery(min_ttl=float(res.min_ttl) if res else 1.0,
                                   max_ttl=float(res.max_ttl) if res else 60.0)
        if cfg.upstream.static is not None:
            self.discovery = Discovery.static([_static(a) for a in cfg.upstream.static])
        self.resolver: Any = None
        self.listener: Any = None
        self._sync_breakers()

    # --- endpoints and breakers ---------------------------------------------------------------

    def _sync_breakers(self) -> None:
        """Give each current endpoint a breaker; a refresh keeps known endpoints' breakers."""
        for ep in self.discovery.endpoints:
            if ep.key not in self.breakers:
                self.breakers[ep.key] = self._new_breaker(ep.key)

    def _new_breaker(self, key: str) -> EndpointBreaker:
        gauge = metrics.circuit_state.labels(self.name, key)
        gauge.set(0)

        def changed(state: int) -> None:
            gauge.set(state)
            log.info("circuit_state", route=self.name, endpoint=key,
                     state=("closed", "half-open", "open")[state])

        cb = self.cfg.circuit_breaker
        return EndpointBreaker(cb.failures, float(cb.reset), changed)

    def set_endpoints(self, outcome: str) -> None:
        metrics.discovery_refreshes_total.labels(self.name, outcome).inc()
        self._sync_breakers()

    def breaker(self, ep: Endpoint) -> EndpointBreaker:
        b = self.breakers.get(ep.key)
        if b is None:
            b = self.breakers[ep.key] = self._new_breaker(ep.key)
        return b

    def pick(self, tried: set[str]) -> tuple[Endpoint | None, str]:
        """The next endpoint, or None and the reason (`no-endpoints` / `circuit-open`)."""
        eps = self.discovery.endpoints
        if not eps:
            return None, "no-endpoints"
        ep = choose(eps, lambda e: not self.breaker(e).available(), self.rng, tried)
        return ep, "circuit-open"

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        host, port = split_host_port(self.cfg.listen)
        if self.cfg.protocol == "http":
            from .http_proxy import proxy_site

            factory: Any = proxy_site(self)
        else:
            from .tcp_proxy import SpliceFactory

            factory = SpliceFactory(self)
        self.listener = self.reactor.listenTCP(port, factory, interface=host or "127.0.0.1")
        if self.cfg.upstream.static is None:
            from .resolver import RouteResolver

            self.resolver = RouteResolver(self)
            self.resolver.start()

    def stop_listening(self) -> defer.Deferred[Any]:
        listener, self.listener = self.listener, None
        return defer.succeed(None) if listener is None else defer.maybeDeferred(listener.stopListening)

    @defer.inlineCallbacks
    def stop(self, drain_timeout: float) -> Generator[Any, Any, None]:
        """Stop listening, then let what is in flight finish, up to drain_timeout (the rest is
        cut when the process exits)."""
        yield self.stop_listening()
        idle = self.drain.idle()
        idle.addTimeout(drain_timeout, self.reactor)
        try:
            yield idle
        except defer.TimeoutError:
            log.warning("route_drain_timeout", route=self.name, in_flight=self.drain.inflight)
        yield close_channels(self.channels, self.reactor)  # answers still in a buffer
        if self.resolver is not None:
            self.resolver.stop()

    def view(self) -> dict[str, Any]:
        """What `GET /ambassador` shows for this route."""
        d = self.discovery
        last = d.last_refresh
        return {
            "name": self.name, "listen": self.cfg.listen, "protocol": self.cfg.protocol,
            "upstream": self.cfg.upstream.model_dump(exclude_none=True),
            "last_refresh": None if last is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
            "last_outcome": d.last_outcome,
            "endpoints": [
                {"address": e.key, "priority": e.priority, "weight": e.weight,
                 "breaker": ("closed", "half-open", "open")[self.breaker(e).state]}
                for e in d.endpoints],
        }
