"""Keeps a route's endpoint set fresh from DNS: SRV (+ the targets' A/AAAA), or A/AAAA for `dns:`.

dnspython's asyncio resolver runs as asyncio tasks on the loop under Twisted's asyncioreactor,
so no lookup blocks the reactor. It has no cache by default, which is what we want: each
refresh asks the nameserver, and the TTL (clamped by `discovery.Discovery`) spaces refreshes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from twisted.internet import defer

from ..config.schema import split_host_port
from ..logs import log
from .selection import Endpoint

_EMPTY = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)
"""Answers that say "no endpoints" (held back for one TTL); anything else is a failure."""


def make_resolver(cfg: Any) -> dns.asyncresolver.Resolver:
    if cfg is None or not cfg.nameservers:
        r = dns.asyncresolver.Resolver()
    else:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(*split_host_port(ns)) for ns in cfg.nameservers]
    timeout = float(cfg.timeout) if cfg is not None else 2.0
    r.lifetime = timeout
    r.timeout = timeout
    return r


async def _addresses(r: dns.asyncresolver.Resolver, name: str) -> tuple[list[str], float]:
    """A then AAAA records of one name, with the smallest TTL seen."""
    out: list[str] = []
    ttl = float("inf")
    for rdtype in ("A", "AAAA"):
        try:
            ans = await r.resolve(name, rdtype)
        except _EMPTY:
            continue
        if ans.rrset is not None:
            out += [rd.to_text() for rd in ans.rrset]
            ttl = min(ttl, ans.rrset.ttl)
        if out:
            break
    return out, ttl


async def lookup(r: dns.asyncresolver.Resolver, upstream: Any) -> tuple[list[Endpoint], float]:
    """Endpoints and TTL; NXDOMAIN/NoAnswer give an empty list, other errors raise."""
    if upstream.srv is not None:
        try:
            ans = await r.resolve(upstream.srv, "SRV")
        except _EMPTY:
            return [], 0.0
        assert ans.rrset is not None
        ttl = float(ans.rrset.ttl)
        eps: list[Endpoint] = []
        for rd in ans.rrset:
            target = rd.target.to_text(omit_final_dot=True)
            if target in ("", "."):
                continue  # "." means the service is decidedly not available (RFC 2782)
            addrs, attl = await _addresses(r, target)
            ttl = min(ttl, attl)
            eps += [Endpoint(a, rd.port, rd.priority, rd.weight, target) for a in addrs]
        return eps, ttl
    host, port = split_host_port(upstream.dns)
    addrs, ttl = await _addresses(r, host)
    return [Endpoint(a, port, name=host) for a in addrs], (0.0 if ttl == float("inf") else ttl)


class RouteResolver:
    def __init__(self, route: Any) -> None:
        self.route = route
        self.reactor = route.reactor
        self.loop: asyncio.AbstractEventLoop = getattr(self.reactor, "_asyncioEventloop", None) \
            or asyncio.get_event_loop()
        self.resolver = make_resolver(route.cfg.resolver)
        self._next: Any = None
        self._running: defer.Deferred[Any] | None = None
        self.stopped = False

    def start(self) -> None:
        self.refresh()

    def stop(self) -> None:
        self.stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        if self._running is not None:
            self._running.cancel()

    def refresh(self) -> None:
        if self.stopped:
            return
        task = self.loop.create_task(lookup(self.resolver, self.route.cfg.upstream))
        d: defer.Deferred[tuple[list[Endpoint], float]] = defer.Deferred.fromFuture(task)
        self._running = d
        d.addCallbacks(self._answer, self._failure)
        d.addErrback(lambda f: log.error("discovery_bug", route=self.route.name, error=repr(f.value)))
        d.addBoth(self._schedule)

    def _answer(self, result: tuple[list[Endpoint], float]) -> None:
        eps, ttl = result
        disc = self.route.discovery
        outcome = disc.answer(eps, ttl, self.reactor.seconds())
        self.route.set_endpoints(outcome)

    def _failure(self, f: Any) -> None:
        if f.check(defer.CancelledError, asyncio.CancelledError):
            return
        outcome = self.route.discovery.failure(self.reactor.seconds())
        self.route.set_endpoints(outcome)
        log.warning("discovery_failed", route=self.route.name, error=str(f.value) or repr(f.value),
                    kept=len(self.route.discovery.endpoints))

    def _schedule(self, _: Any) -> None:
        self._running = None
        if not self.stopped:
            self._next = self.reactor.callLater(self.route.discovery.ttl_next, self.refresh)
