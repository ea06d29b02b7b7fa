"""A route's HTTP/1.1 client: twisted's pooled keep-alive connections, without `Agent`.

`Agent.request` parses the URL, IDNA-encodes the host and builds a new endpoint for every
request; under load that was a fifth of the ambassador worker's time (benchmarks/profiles/
ambassador-before.svg). The endpoint set is small and changes only when discovery does, so
each endpoint's pool key, connection endpoint and parsed URI are made once here and the
request goes straight to the pool. Connections, their reuse, cancellation and the errors a
try sees (`ResponseNeverReceived`, `ConnectError`, ...) are twisted's, exactly as with Agent.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web import client
from twisted.web._newclient import Request, _ensureValidMethod, _ensureValidURI
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from .selection import Endpoint

MAX_IDLE_PER_ENDPOINT = 64
"""Idle keep-alive connections kept per endpoint: above the concurrency one worker serves
well (wrk -c32 in the benchmark), so a burst does not close and reopen connections."""


class UpstreamClient:
    def __init__(self, reactor: Any, connect_timeout: float, tls: Any = None,
                 name: str = "") -> None:
        self.scheme = b"https" if tls is not None else b"http"
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_IDLE_PER_ENDPOINT
        extra: dict[str, Any] = {}
        if tls is not None:  # HTTPS to the upstream (tls.py)
            from ..tls import client_policy, load_client

            extra["contextFactory"] = client_policy(load_client(tls), f"route {name}")
        # Agent is kept for what it does once per endpoint: the TCP/TLS endpoint and Host value.
        self.agent = client.Agent(reactor, connectTimeout=connect_timeout, pool=self.pool,
                                  **extra)
        self._known: dict[str, tuple[tuple[bytes, bytes, int], Any, URI, bytes]] = {}

    def _target(self, ep: Endpoint) -> tuple[tuple[bytes, bytes, int], Any, URI, bytes]:
        got = self._known.get(ep.key)
        if got is None:
            host = ep.host.encode("ascii")
            netloc = b"[" + host + b"]" if b":" in host else host
            uri = URI.fromBytes(b"%s://%s:%d/" % (self.scheme, netloc, ep.port))
            endpoint = self.agent._getEndpoint(uri)
            got = ((self.scheme, host, ep.port), endpoint, uri,
                   self.agent._computeHostValue(self.scheme, host, ep.port))
            self._known[ep.key] = got
        return got

    def request(self, method: bytes, ep: Endpoint, path: bytes, headers: Headers,
                body: Any) -> defer.Deferred[IResponse]:
        """One request on a pooled connection to `ep` (`path` as sent: path and query)."""
        _ensureValidMethod(method)  # what Agent checks (a ValueError: the call fails, 502)
        _ensureValidURI(path)
        key, endpoint, uri, host = self._target(ep)
        if not headers.hasHeader(b"host"):  # an HTTP/1.0 caller may send none
            headers = headers.copy()
            headers.setRawHeaders(b"host", [host])
        persistent = self.pool.persistent

        def connected(proto: Any) -> defer.Deferred[IResponse]:
            return proto.request(Request._construct(method, path, headers, body,
                                                    persistent=persistent, parsedURI=uri))

        d: defer.Deferred[Any] = self.pool.getConnection(key, endpoint)
        return d.addCallback(connected)
