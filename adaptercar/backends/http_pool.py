"""Persistent HTTP/1.1 connections to one endpoint: the I/O shell of the SOAP backend.

The protocol is the sans-IO `mapping.http11`; this module connects, keeps connections, sends
one request at a time on each, and enforces the rule the line backend has too: a connection
is reused only in a known state. After a timeout, an unreadable or oversized reply, stray
bytes while idle, or a reply that says so (`Connection: close`, a close-delimited body), it is
closed. A connection the server closes while idle is dropped from the pool as soon as the
close arrives, so it is not picked for the next request; when the close crosses a request
(nothing of the reply came), the caller learns it (`NoReply.stale`) and may send it again.

Up to `size` idle connections are kept; under more concurrent calls more are opened and the
extra ones closed when they come back, as Twisted's pool did.

On asyncioreactor (what the workers run) connections are asyncio's own transports (uvloop's),
with TLS from an `ssl.SSLContext`; on another reactor they are Twisted's endpoints under the
same protocol, with TLS from `tls.client_policy`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..mapping.http11 import HttpError, Reply, ReplyParser, request_prefix

Done = Callable[[Reply | None, BaseException | None], None]


class ConnectFailed(Exception):
    """No connection (refused, unresolvable, connect timeout, TLS handshake refused)."""


class NoReply(Exception):
    """The connection closed before one byte of the reply; `stale`: it was a reused one."""

    def __init__(self, message: str, stale: bool) -> None:
        super().__init__(message)
        self.stale = stale
        self.retried = False


class Timeout(Exception):
    """No whole reply within the call's timeout (the connection was closed)."""


class Exchange:
    """One request, from the first send to its answer (retry included)."""

    __slots__ = ("data", "done", "timer", "conn", "finished", "notified", "retry_stale",
                 "retried")

    def __init__(self, data: bytes, done: Done, retry_stale: bool) -> None:
        self.data = data
        self.done = done
        self.retry_stale = retry_stale
        self.timer: Any = None
        self.conn: HttpConnection | None = None
        self.finished = False
        self.notified = False
        self.retried = False

    def finish(self, reply: Reply | None, err: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.conn = None
        if self.timer is not None:
            timer, self.timer = self.timer, None
            timer.cancel()
        if not self.notified:
            self.notified = True
            self.done(reply, err)

    def cancel(self) -> None:
        """The caller gave up: it is told at once (CancelledError). A request already sent
        still has its reply read, so the connection stays in step, or is closed at the
        timeout as usual."""
        if not self.notified:
            from twisted.internet.defer import CancelledError

            self.notified = True
            self.done(None, CancelledError())


class HttpConnection(asyncio.Protocol):
    """One connection; its `exchange` is the request on it, None while idle."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.parser = ReplyParser(pool.max_reply_bytes)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.lost_reason: BaseException | None = None

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport
        self.transport = transport

    def send(self, ex: Exchange) -> None:
        self.exchange = ex
        ex.conn = self
        self.parser.reset()
        self.transport.write(ex.data)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: the connection's state is unknown
            self.abort()
            return
        try:
            reply = self.parser.feed(data)
        except HttpError as e:
            self.exchange = None
            self.abort()
            ex.finish(None, e)
            return
        if reply is not None:
            self.exchange = None
            self.reused = True
            if reply.keep_alive and not self.parser.leftover:
                self.pool.release(self)
            else:
                self.close()
            ex.finish(reply, None)

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost_reason = exc
        self.pool.forget(self)
        ex, self.exchange = self.exchange, None
        if ex is None or ex.finished:
            return
        try:
            reply = self.parser.closed()
        except HttpError as e:
            if not self.parser.started:
                why = f": {exc}" if exc is not None else ""
                self.pool.lost(ex, NoReply(f"connection closed without a reply{why}",
                                           stale=self.reused))
            else:
                ex.finish(None, e)
            return
        ex.finish(reply, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.transport.abort()


class _TxTransport:
    """The part of an asyncio transport HttpConnection uses, on a Twisted transport."""

    __slots__ = ("_t",)

    def __init__(self, transport: Any) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        self._t.write(data)

    def close(self) -> None:
        self._t.loseConnection()

    def abort(self) -> None:
        self._t.abortConnection()


def _tx_bridge(conn: HttpConnection) -> Any:
    from twisted.internet.protocol import Protocol

    class Bridge(Protocol):
        def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
            conn.connection_made(_TxTransport(self.transport))

        def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
            conn.data_received(data)

        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
            from twisted.internet.error import ConnectionDone

            clean = reason is None or reason.check(ConnectionDone)
            conn.connection_lost(None if clean else Exception(str(reason.value)))

    return Bridge()


class HttpPool:
    """Connections to the endpoint of `url`; `request` sends one request and calls back."""

    def __init__(self, url: str, size: int, connect_timeout: float, max_reply_bytes: int,
                 reactor: Any, tls: Any = None, where: str = "") -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default = self.port == (443 if self.https else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if default else f"{name}:{self.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.prefix = request_prefix("POST", target, self.host_header)
        """The start of every request: request line and Host."""
        self.size = size
        self.connect_timeout = connect_timeout
        self.max_reply_bytes = max_reply_bytes
        self.reactor = reactor
        self.loop: Any = getattr(reactor, "_asyncioEventloop", None)
        self.idle: list[HttpConnection] = []
        self.stopping = False
        self.tls = tls
        self.server_name = (tls.server_name if tls is not None else None) or self.host
        self._ssl: ssl.SSLContext | None = None
        self._policy: Any = None
        if self.https:
            if self.loop is not None:
                self._ssl = ssl_context(tls, where)
            else:
                from ..tls import ClientMaterial, client_policy

                material = tls or ClientMaterial(None, None, None, None, True)
                self._policy = client_policy(material, where)

    # -- calls -------------------------------------------------------------------------------
    def request(self, data: bytes, timeout: float, retry_stale: bool, done: Done) -> Exchange:
        """Send `data` (a whole request) on an idle connection or a new one; `done(reply,
        None)` or `done(None, error)` once, error being ConnectFailed, NoReply, Timeout,
        ReplyTooLarge or HttpError. `retry_stale`: a request lost on a reused connection
        without a byte of reply is sent once more on a new connection (NoReply.retried)."""
        ex = Exchange(data, done, retry_stale)
        later = self.loop.call_later if self.loop is not None else self.reactor.callLater
        ex.timer = later(timeout, self._timeout, ex)
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.send(ex)
                return ex
        self._connect(ex)
        return ex

    def lost(self, ex: Exchange, err: NoReply) -> None:
        if err.stale and ex.retry_stale and not ex.retried and not self.stopping:
            ex.retried = True
            ex.conn = None
            self._connect(ex)
            return
        err.retried = ex.retried
        ex.finish(None, err)

    def _timeout(self, ex: Exchange) -> None:
        ex.timer = None
        conn = ex.conn
        if conn is not None:
            conn.exchange = None
            conn.abort()  # a late reply must never be read by the next call
        ex.finish(None, Timeout())

    # -- connections -------------------------------------------------------------------------
    def release(self, conn: HttpConnection) -> None:
        if self.stopping or len(self.idle) >= self.size:
            conn.close()
        else:
            self.idle.append(conn)

    def forget(self, conn: HttpConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def _connect(self, ex: Exchange) -> None:
        conn = HttpConnection(self)

        def connected(err: BaseException | None) -> None:
            if err is not None:
                ex.finish(None, ConnectFailed(describe(err)))
                return
            if conn.closed:  # lost before we got to it (a TLS peer that refused us, say)
                why = describe(conn.lost_reason) if conn.lost_reason is not None else "closed"
                ex.finish(None, ConnectFailed(f"the connection was lost at once: {why}"))
            elif self.stopping:
                conn.close()
                ex.finish(None, ConnectFailed("the backend is stopping"))
            elif ex.finished:  # its call timed out meanwhile: a fresh connection, keep it
                self.release(conn)
            else:
                conn.send(ex)

        if self.loop is not None:
            task = self.loop.create_task(self._aio_connect(conn))
            task.add_done_callback(lambda t: connected(
                ConnectFailed("connect cancelled") if t.cancelled() else t.exception()))
        else:
            self._tx_connect(conn).addCallbacks(lambda _: connected(None),
                                                lambda f: connected(f.value))

    async def _aio_connect(self, conn: HttpConnection) -> None:
        extra: dict[str, Any] = {}
        if self._ssl is not None:
            extra = {"ssl": self._ssl, "server_hostname": self.server_name,
                     "ssl_handshake_timeout": self.connect_timeout}
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: conn, self.host, self.port, **extra),
                self.connect_timeout)
        except TimeoutError:
            raise ConnectFailed(f"no connection within connect_timeout "
                                f"({self.connect_timeout:g}s)") from None

    def _tx_connect(self, conn: HttpConnection) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.protocol import Factory

        ep: Any = HostnameEndpoint(self.reactor, self.host.encode("idna"), self.port,
                                   timeout=self.connect_timeout)
        if self._policy is not None:
            ep = wrapClientTLS(self._policy.creatorForNetloc(self.host.encode("idna"),
                                                             self.port), ep)
        return ep.connect(Factory.forProtocol(lambda: _tx_bridge(conn)))  # type: ignore[arg-type]

    def stop(self) -> None:
        self.stopping = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


def ssl_context(material: Any, where: str) -> ssl.SSLContext:
    """The client context of one `tls:` section (a tls.ClientMaterial, None: defaults): trust
    `ca` (or the system's CAs), present the client certificate if any, check the server's
    certificate against the SNI name; `verify: false` encrypts and checks nothing (logged)."""
    if material is None:
        return ssl.create_default_context()
    ctx = ssl.create_default_context(cadata=material.ca.decode("ascii") if material.ca else None)
    if material.cert is not None and material.key is not None:
        _load_chain(ctx, material.cert, material.key)
    if not material.verify:
        from ..logs import log

        log.warning("tls_verify_disabled", upstream=where)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`ssl` loads a certificate and key from files only: a private temporary file, read and
    removed at once (the key is in this process's memory anyway)."""
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="adaptercar-tls-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert.rstrip(b"\n") + b"\n" + key)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def describe(err: BaseException) -> str:
    """Why a connect failed, in one line."""
    if isinstance(err, ConnectFailed):
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed: {err.reason or err}"
    if type(err).__module__.startswith("OpenSSL"):
        from ..tls import describe_failure

        return describe_failure(err) or repr(err)
    if isinstance(err, socket.gaierror):
        return f"DNSLookupError: {err.strerror or err}"
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return f"{type(err).__name__}" + (f": {err}" if str(err) else "")
