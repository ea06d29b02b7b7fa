"""Pooled TCP (or unix socket) connections to a line-protocol server: the Twisted shell.

All protocol knowledge lives in the sans-IO core (framing Decoder, ReplyReader); this module
only moves bytes, keeps connections, and enforces the one rule that protects callers from
each other: a connection is never reused in an unknown state. After UNKNOWN, a timeout, a
framing or bound error, or bytes arriving while nothing is outstanding, it is closed.

Availability rules, each there because a simpler rule failed a real scenario:
- A backend whose connects fail (or whose probe fails) is "down": calls fail fast with
  UNAVAILABLE while connects are retried in the background with backoff.
- Losing a connection that had worked is not "down": the server is probably restarting, so
  for up to connect_timeout refused connects are retried quickly and calls wait instead of
  failing.
- A connection that dies young without a single reply counts as a failed connect, so a server
  that hangs up on every session is retried with backoff, never in a loop.
- The probe runs on an idle connection only: queued behind slow calls it would time out and
  call a busy but healthy backend down.
- Per-call mode opens at most pool.size connections at once; other calls wait, boundedly.

On asyncioreactor (what the workers run) connections use asyncio's own transports under the
Twisted protocol, and one timer per pool watches every call's deadline: both measured as the
largest costs of the shell per call (see docs/performance.md). Other reactors get Twisted's
endpoints, as before.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, DNSLookupError
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefusedError
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TxProtocol
from twisted.python.failure import Failure

from .. import metrics
from ..logs import log
from ..mapping.errors import CallError, Code, quote_raw
from ..mapping.framing import Decoder, Framing, FramingError, encode_frame

#: A connection that dies younger than this without ever answering a call is treated as a
#: failed connect (backoff), so a server that hangs up at once cannot cause a reconnect storm.
YOUNG_CONNECTION_S = 1.0
#: While a live connection was just lost, refused connects are retried this often (within the
#: connect timeout) before the backend is declared down: a restarting server is not "down".
GRACE_RETRY_S = 0.05
#: A failing probe is retried this often (or every `probe.every`, whichever is shorter).
PROBE_RETRY_S = 1.0
GAUGE_EVERY_S = 0.5


class Reader(Protocol):
    def pump(self, decoder: Decoder) -> Any | None: ...


@dataclass(frozen=True)
class ProbeSpec:
    send: bytes  # already framed
    expect: re.Pattern[str]
    every: float
    timeout: float | None = None  # None: the backend's timeout


@dataclass(frozen=True)
class LineSpec:
    """A line backend as the shell needs it, built once from config (see compile.py)."""

    name: str
    address: str
    framing: Framing
    encoding: str
    mode: str = "pooled"  # pooled | per-call
    banner: re.Pattern[str] | None = None
    on_connect: tuple[tuple[bytes, re.Pattern[str] | None], ...] = ()
    pool_size: int = 4
    pipeline: int = 1
    max_waiting: int = 1000
    idle_timeout: float | None = None
    max_age: float | None = None
    keepalive: bool = True
    timeout: float = 2.0
    connect_timeout: float = 1.0
    max_line_bytes: int = 65536
    probe: ProbeSpec | None = None


class ExpectReader:
    """Reads one frame and tests it with re.search: banners, on_connect and probes."""

    def __init__(self, pattern: re.Pattern[str] | None, encoding: str, what: str) -> None:
        self.pattern = pattern
        self.encoding = encoding
        self.what = what

    def pump(self, decoder: Decoder) -> Any | None:
        frame = decoder.next_frame()
        if frame is None:
            return None
        text = frame.decode(self.encoding, "replace")
        if self.pattern is not None and self.pattern.search(text) is None:
            raise CallError(
                Code.UNAVAILABLE, f"{self.what}: unexpected reply {quote_raw(text)}", reusable=False
            )
        return text


def advance_handshake(steps: deque[tuple[str, Any]], decoder: Decoder,
                      write: Callable[[bytes], None]) -> bool:
    """Runs banner/on_connect steps as far as the bytes received allow: True once all are
    done. The same for TCP connections and child processes; a failed step raises CallError."""
    while steps:
        kind, arg = steps[0]
        if kind == "send":
            steps.popleft()
            write(arg)
            continue
        try:
            text = arg.pump(decoder)
        except FramingError as e:
            # Most often the framing configured does not match the server's.
            raise CallError(Code.UNAVAILABLE, f"{arg.what}: framing error (is 'framing' right?): {e}",
                            reusable=False) from e
        if text is None:
            return False
        steps.popleft()
    return True


_NEVER = float("inf")

#: How a call's outcome reaches its caller without a Deferred: (result, None) or (None, error).
Done = Callable[[Any, BaseException | None], None]


class Call:
    """One request on its way through a pool, and how its outcome reaches the caller.

    The hot path passes `on_done` and never builds a Deferred (a Deferred chain with its
    callbacks was ~5% of a JSON call's CPU); `deferred` is made on first use for callers that
    want one (the probe, the process backend). `timer` is only used by the process backend:
    a line pool watches every call's `deadline` with one timer per pool.
    """

    __slots__ = (
        "data", "reader", "_deferred", "on_done", "done", "idempotent", "retried", "timer",
        "got_bytes", "started", "deadline", "conn",
    )

    def __init__(self, data: bytes, reader: Reader, idempotent: bool, on_done: Done | None = None) -> None:
        self.data = data
        self.reader = reader
        self.on_done = on_done
        self._deferred: defer.Deferred[Any] | None = None if on_done is not None else defer.Deferred()
        self.done = False
        self.idempotent = idempotent
        self.retried = False
        self.timer: Any = None
        self.got_bytes = False
        self.started = time.monotonic()
        self.deadline = _NEVER
        self.conn: LegacyConnection | None = None

    @property
    def deferred(self) -> defer.Deferred[Any]:
        d = self._deferred
        if d is None:
            if self.done:
                raise RuntimeError("the call is already finished; ask for its Deferred before it ends")
            d = self._deferred = defer.Deferred()
        return d

    @property
    def finished(self) -> bool:
        """Answered, failed, or given up by its caller (a cancelled Deferred counts too)."""
        d = self._deferred
        return self.done or (d is not None and d.called)

    def finish(self, result: Any) -> None:
        self._complete(result, None)

    def fail(self, err: BaseException) -> None:
        self._complete(None, err)

    def _complete(self, result: Any, err: BaseException | None) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        if self.done:
            return
        self.done = True
        if self.on_done is not None:
            try:
                self.on_done(result, err)
            except Exception as e:  # noqa: BLE001 - the caller's bug must not break the connection
                log.error("internal_error", where="call completion", error=repr(e))
        d = self._deferred
        if d is not None and not d.called:
            if err is None:
                d.callback(result)
            else:
                d.errback(Failure(err))

    def cancel(self) -> None:
        """The caller gave up (a gRPC client cancelled, say). The call fails with
        CancelledError at once; if it was already sent, its reply is still read, so the
        connection stays in step, and dropped. Its deadline keeps counting: if the reply never
        comes, the connection is closed as usual."""
        self.fail(defer.CancelledError())


class LegacyConnection(TxProtocol):
    def __init__(self, pool: LinePool) -> None:
        self.pool = pool
        spec = pool.spec
        self.decoder = Decoder(spec.framing, spec.max_line_bytes)
        self.inflight: deque[Call] = deque()
        self.handshake: deque[tuple[str, Any]] = deque()
        if spec.banner is not None:
            self.handshake.append(("expect", ExpectReader(spec.banner, spec.encoding, "banner")))
        steps = len(spec.on_connect)
        for i, (frame, expect) in enumerate(spec.on_connect):
            # Steps are named by number only: the frame sent may hold a password.
            self.handshake.append(("send", frame))
            self.handshake.append(
                ("expect", ExpectReader(expect, spec.encoding, f"on_connect step {i + 1} of {steps}"))
            )
        self.ready = False
        self.retiring = False  # a restart was asked: no new calls, closed once its calls are done
        self.replies = 0  # replies read to their end: proof the conversation works
        self.closed = False
        self.born = time.monotonic()
        self.last_used = self.born
        self.ready_deferred: defer.Deferred[LegacyConnection] = defer.Deferred()
        self.handshake_timer: Any = None
        self.unsent: list[bytes] = []  # requests of this loop iteration, not yet flushed
        self.flush_due = False

    # -- Twisted callbacks -----------------------------------------------------------------
    def connectionMade(self) -> None:
        if self.pool.spec.keepalive and hasattr(self.transport, "setTcpKeepAlive"):
            try:
                self._t().setTcpKeepAlive(1)
            except OSError:
                pass
        if self.handshake:
            self.handshake_timer = self.pool.reactor.callLater(
                self.pool.spec.connect_timeout + self.pool.spec.timeout, self._handshake_timeout
            )
        self._advance_handshake()

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.decoder.feed(data)
        try:
            if not self.ready:
                self._advance_handshake()
                if not self.ready:
                    return
            done_any = False
            pool = self.pool
            decoder = self.decoder
            while self.inflight:
                call = self.inflight[0]
                if decoder.pending():
                    call.got_bytes = True
                try:
                    result = call.reader.pump(decoder)
                except CallError as e:
                    self.inflight.popleft()
                    if e.reusable:
                        self.replies += 1
                    self.pool.record(call, e)
                    call.fail(e)
                    if not e.reusable:
                        self.abort(f"call failed with {e.code.name}")
                        return
                    done_any = True
                    continue
                if result is None:
                    break
                self.inflight.popleft()
                self.replies += 1
                pool.failures = 0
                metrics.recorder.backend_call(pool.spec.name, "ok", time.monotonic() - call.started)
                call.finish(result)
                done_any = True
            if not self.inflight and self.decoder.pending():
                self.abort(
                    "unsolicited bytes from backend while no call was outstanding: "
                    + quote_raw(data[-self.decoder.pending():])
                )
                return
            if done_any:
                self.pool.connection_free(self)
        except FramingError as e:
            self.abort(f"framing error: {e}")

    def connectionLost(self, reason: Failure | None = None) -> None:
        by_peer = not self.closed
        self.closed = True
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        calls = list(self.inflight)
        self.inflight.clear()
        if by_peer and self.ready:
            log.info("backend_connection_lost", backend=self.pool.spec.name, calls_in_flight=len(calls),
                     age_s=round(time.monotonic() - self.born, 3))
        if not self.ready_deferred.called:
            self.ready_deferred.errback(
                Failure(CallError(Code.UNAVAILABLE, "the backend closed the connection during login"))
            )
        self.pool.connection_lost(self, calls)

    # -- handshake -------------------------------------------------------------------------
    def _advance_handshake(self) -> None:
        try:
            if not advance_handshake(self.handshake, self.decoder, self._t().write):
                return
        except CallError as e:
            self._handshake_failed(e.message)
            return
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        if self.decoder.pending():
            self._handshake_failed("unexpected extra bytes after the banner/login")
            return
        self.ready = True
        if not self.ready_deferred.called:
            self.ready_deferred.callback(self)

    def _handshake_failed(self, why: str) -> None:
        log.warning("backend_login_failed", backend=self.pool.spec.name, reason=why)
        if not self.ready_deferred.called:
            self.ready_deferred.errback(Failure(CallError(Code.UNAVAILABLE, why)))
        self.abort(why, "login-failed")

    def _handshake_timeout(self) -> None:
        step = next((arg.what for kind, arg in self.handshake if kind == "expect"), "login")
        self._handshake_failed(f"{step}: no reply in time")

    # -- used by the pool ------------------------------------------------------------------
    def _t(self) -> Any:
        return self.transport

    def send(self, call: Call) -> None:
        call.conn = self
        self.inflight.append(call)
        self.last_used = time.monotonic()
        loop = self.pool.loop
        if loop is None:
            self._t().write(call.data)
            return
        # Requests sent during one loop iteration go out together, in one write, at the start
        # of the next: a JSON worker sends a dozen per iteration under load.
        # (Measured: writing the first request of an iteration at once gained nothing for gRPC
        # and cost the JSON worker 8%.)
        unsent = self.unsent
        unsent.append(call.data)
        if len(unsent) == 1 and not self.flush_due:
            self.flush_due = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        unsent, self.unsent = self.unsent, []
        if self.closed or not unsent:
            return  # the calls fail (or are retried) through connectionLost
        # uvloop writes at once when nothing is queued, and queues in order when it is
        self._t().write(unsent[0] if len(unsent) == 1 else b"".join(unsent))

    def abort(self, why: str, kind: str = "closed-unknown-state") -> None:
        """Close at once, unread bytes and all. `kind` is the restarts metric's reason label:
        closed-unknown-state, timeout, login-failed, max-age, idle-timeout or restart."""
        if self.closed:
            return
        self.closed = True
        log.info("backend_connection_closed", backend=self.pool.spec.name, reason=why)
        metrics.backend_restarts_total.labels(self.pool.spec.name, kind).inc()
        self._t().abortConnection()


class _AioTransport:
    """The part of a Twisted transport LegacyConnection uses, on an asyncio transport."""

    __slots__ = ("_t",)

    def __init__(self, transport: Any) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        self._t.write(data)  # uvloop sends at once when nothing is queued

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self._t.close()

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self._t.abort()


class _AioTcpTransport(_AioTransport):
    __slots__ = ()

    def setTcpKeepAlive(self, enabled: int) -> None:  # noqa: N802 - Twisted's name
        sock = self._t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)


class _AioProtocol(asyncio.Protocol):
    """Feeds a LegacyConnection (a Twisted protocol) from an asyncio transport."""

    def __init__(self, conn: LegacyConnection, tcp: bool) -> None:
        self.conn = conn
        self.tcp = tcp

    def connection_made(self, transport: Any) -> None:  # uvloop's are not asyncio.Transport
        shim = _AioTcpTransport(transport) if self.tcp else _AioTransport(transport)
        self.conn.makeConnection(shim)

    def data_received(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def eof_received(self) -> bool:
        return False  # the peer is done: close, as Twisted does

    def connection_lost(self, exc: Exception | None) -> None:
        reason = ConnectionDone() if exc is None else ConnectionLost(str(exc))
        self.conn.connectionLost(Failure(reason))


class _ConnFactory(Factory):
    def __init__(self, pool: LinePool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> LegacyConnection:
        return LegacyConnection(self.pool)


def _endpoint(reactor: Any, address: str, timeout: float) -> Any:
    if address.startswith("unix:"):
        return UNIXClientEndpoint(reactor, address[5:], timeout=timeout)
    host, _, port = address.rpartition(":")
    return HostnameEndpoint(reactor, host.strip("[]"), int(port), timeout=timeout)


class LinePool:
    """Connections to one backend in one worker, the calls waiting for them, and readiness."""

    def __init__(self, spec: LineSpec, reactor: Any) -> None:
        self.spec = spec
        self.reactor: Any = reactor
        self.conns: list[LegacyConnection] = []
        self.connecting = 0
        self.waiting: deque[Call] = deque()
        self.down = False  # the last connect attempt failed: fail fast until one succeeds
        self.down_reason = ""
        self.failures = 0  # failed rounds of connects (or young deaths) since the last success
        self.grace_until = 0.0  # a live connection was lost: refused connects retry until then
        self.reconnect_call: Any = None
        self.probe_call: Any = None
        self.probe_ok: bool | None = None
        self.probe_reason = ""
        self.gauge_call: Any = None
        # One timer watches the deadlines of all outstanding calls (see _sweep): a timer per
        # call (callLater + cancel) was ~5% of a JSON call's CPU.
        self.sweep_call: Any = None
        self.sweep_at = float("inf")
        self.started = False
        self.stopping = False
        self.endpoint = _endpoint(reactor, spec.address, spec.connect_timeout)
        self.factory = _ConnFactory(self)
        # Whether connections may be recycled for age or idleness (most pools: never).
        self._recycles = spec.max_age is not None or spec.idle_timeout is not None
        # asyncioreactor's loop: connections batch their writes per loop iteration on it
        self.loop: Any = getattr(reactor, "_asyncioEventloop", None)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        if self.spec.mode == "pooled":
            for _ in range(self.spec.pool_size):
                self._connect()
        if self.spec.probe is not None:
            self.probe_call = self.reactor.callLater(0.05, self._probe)
        self._gauge()

    def stop(self) -> None:
        self.stopping = True
        for c in (self.reconnect_call, self.probe_call, self.gauge_call):
            if c is not None and c.active():
                c.cancel()
        self.gauge_call = None  # _gauge() schedules when None
        for call in list(self.waiting):
            call.fail(CallError(Code.UNAVAILABLE, "sidecar shutting down"))
        self.waiting.clear()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn._t().loseConnection()

    def restart(self) -> None:
        """Reconnect (`on_change: {restart: BACKEND}`): new connections for new calls; one
        with calls in flight takes no more and closes once they are answered."""
        if self.stopping or not self.started:
            return
        log.info("backend_restart", backend=self.spec.name, connections=len(self.conns))
        for conn in list(self.conns):
            if conn.closed or conn.retiring or not conn.ready:
                continue  # one still logging in is as new as a replacement would be
            conn.retiring = True
            self._recycle_if_old(conn)
        self.failures = 0
        if self.reconnect_call is not None and self.reconnect_call.active():
            self.reconnect_call.cancel()
        self._refill()
        self._gauge()

    @property
    def ready(self) -> bool:
        if self.spec.probe is not None:
            return bool(self.probe_ok)
        if self.spec.mode == "per-call":
            return not self.down
        return not self.down and any(c.ready for c in self.conns)

    def state(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "connections": sum(1 for c in self.conns if c.ready),
            "busy": sum(1 for c in self.conns if c.inflight),
            "waiting": len(self.waiting),
            "down_reason": self.down_reason if self.down else self.probe_reason if self.probe_ok is False else "",
            "probe_ok": self.probe_ok,
        }

    def _gauge(self) -> None:
        """Pool gauges change on every call; writing them (an mmap write each in multiprocess
        mode) is batched to at most one write per GAUGE_EVERY seconds."""
        if self.gauge_call is None:
            self.gauge_call = self.reactor.callLater(GAUGE_EVERY_S, self._write_gauges)

    def _write_gauges(self) -> None:
        self.gauge_call = None
        ready = [c for c in self.conns if c.ready and not c.closed]
        busy = sum(1 for c in ready if c.inflight)
        name = self.spec.name
        metrics.backend_pool_connections.labels(name, "idle").set(len(ready) - busy)
        metrics.backend_pool_connections.labels(name, "busy").set(busy)
        metrics.backend_pool_connections.labels(name, "connecting").set(self.connecting)
        metrics.backend_up.labels(name).set(1 if self.ready else 0)

    # -- connections -----------------------------------------------------------------------
    def _connect(self) -> defer.Deferred[Any]:
        self.connecting += 1
        if self.loop is not None:
            d = defer.Deferred.fromFuture(self.loop.create_task(self._aio_connect()))
        else:
            d = self.endpoint.connect(self.factory)

        def connected(conn: LegacyConnection) -> Any:
            self.conns.append(conn)
            return conn.ready_deferred

        def ready(conn: LegacyConnection) -> LegacyConnection:
            self.connecting -= 1
            if self.down:
                log.info("backend_up", backend=self.spec.name)
            self.down = False
            self._dispatch_to(conn)
            if self.spec.mode == "per-call" and not conn.inflight and not conn.closed:
                # its caller gave up while it was connecting: nobody will ever use it
                conn.closed = True
                conn._t().loseConnection()
            self._gauge()
            return conn

        def failed(f: Failure) -> None:
            self.connecting -= 1
            if self.stopping:
                return
            why = self._connect_error(f.value)
            if not self.down and time.monotonic() < self.grace_until and self.spec.mode == "pooled":
                # A live connection was just lost: most likely the server is restarting.
                # Calls wait (at most the connect timeout) while we retry, instead of failing.
                self._schedule_reconnect(GRACE_RETRY_S)
                return
            if not self.down:
                log.warning("backend_down", backend=self.spec.name, reason=why)
            self.down = True
            self.down_reason = why
            if self.reconnect_call is None or not self.reconnect_call.active():
                self.failures += 1  # once per round, however many connections failed in it
            if not any(c.ready for c in self.conns) and self.connecting == 0:
                err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name} is unavailable: {why}")
                for call in list(self.waiting):
                    self.record(call, err)
                    call.fail(err)
                self.waiting.clear()
            self._schedule_reconnect()
            self._gauge()

        d.addCallback(connected)
        d.addCallbacks(ready, failed)
        return d

    async def _aio_connect(self) -> LegacyConnection:
        """Connect with asyncio's own transport (the loop asyncioreactor runs on).

        Measured against Twisted's transport on the same loop, the gRPC worker served ~10%
        more calls: no dispatch through the reactor per read, no registering for writability
        per write, and uvloop reads and writes without releasing the GIL, which grpc's
        poller thread otherwise takes at every socket call. Errors are the same as
        HostnameEndpoint's, every address of a name tried in turn within connect_timeout."""
        loop = self.loop
        conn = LegacyConnection(self)
        address = self.spec.address
        bridge = _AioProtocol(conn, tcp=not address.startswith("unix:"))

        async def attempt() -> None:
            if address.startswith("unix:"):
                await loop.create_unix_connection(lambda: bridge, address[5:])
                return
            host, _, port_text = address.rpartition(":")
            host, port = host.strip("[]"), int(port_text)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise DNSLookupError(str(e)) from None
            errors: list[OSError] = []
            for family, _, _, _, sockaddr in infos:
                try:
                    await loop.create_connection(
                        lambda: bridge, sockaddr[0], sockaddr[1], family=family
                    )
                    return
                except OSError as e:
                    errors.append(e)
            if errors and all(isinstance(e, ConnectionRefusedError) for e in errors):
                raise TxConnectionRefusedError()
            raise errors[-1] if errors else OSError(f"no address for {host}")

        try:
            await asyncio.wait_for(attempt(), self.spec.connect_timeout)
        except TimeoutError:
            raise TxTimeoutError() from None
        except ConnectionRefusedError:
            raise TxConnectionRefusedError() from None
        return conn

    def _connect_error(self, err: BaseException | None) -> str:
        """Why a connect (or login) failed, in words a user can act on."""
        where = self.spec.address
        if isinstance(err, CallError):
            return err.message
        if isinstance(err, TxConnectionRefusedError):
            return f"connection to {where} refused"
        if isinstance(err, TxTimeoutError):
            return f"no connection to {where} within connect_timeout ({self.spec.connect_timeout:g}s)"
        if isinstance(err, DNSLookupError):
            return f"cannot resolve the host of {where}"
        if isinstance(err, OSError) and err.strerror:
            return f"cannot connect to {where}: {err.strerror}"
        return f"cannot connect to {where}: {str(err) or type(err).__name__}"

    def _schedule_reconnect(self, delay: float | None = None) -> None:
        if self.stopping or self.spec.mode != "pooled":
            return
        if self.reconnect_call is not None and self.reconnect_call.active():
            return
        if delay is None:
            delay = min(5.0, 0.05 * (2 ** min(self.failures, 7))) * (0.5 + random.random() / 2)
        self.reconnect_call = self.reactor.callLater(delay, self._refill)

    def _slots_used(self) -> int:
        """Connections being made (TCP or login) plus live ones. A connection in its login is
        both in `conns` and in `connecting`: counting it twice would leave a slot unfilled."""
        return self.connecting + sum(1 for c in self.conns if c.ready and not c.closed and not c.retiring)

    def _refill(self) -> None:
        if self.stopping:
            return
        if self.spec.mode == "per-call":
            # each connection being made will take one waiting call
            wanted = min(len(self.waiting) - self.connecting, self.spec.pool_size - self._slots_used())
        else:
            wanted = self.spec.pool_size - self._slots_used()
        for _ in range(max(0, wanted)):
            self._connect()

    def connection_lost(self, conn: LegacyConnection, calls: list[Call]) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        live = conn.ready and not self.stopping and self.spec.mode == "pooled"
        young = (conn.replies == 0 and not conn.retiring
                 and time.monotonic() - conn.born < YOUNG_CONNECTION_S)
        if live and not young:
            self.failures = 0
            self.grace_until = time.monotonic() + self.spec.connect_timeout
        for call in calls:
            if call.idempotent and not call.got_bytes and not call.retried:
                call.retried = True
                call.conn = None
                self._submit(call)
            else:
                err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name} closed the connection before replying")
                self.record(call, err)
                call.fail(err)
        self._gauge()
        if self.spec.mode == "per-call" and self.waiting and not self.stopping:
            self._refill()  # a slot is free: connect for the next waiting call
        if not live:
            return
        if young:
            # Logged in, then lost before a single reply: count it as a failed connect, so
            # a server that hangs up on every session is retried with backoff, not in a loop.
            self.failures += 1
            self._schedule_reconnect()
        else:
            # A proven connection dropped: replace it at once (the backend is probably fine).
            self.reactor.callLater(0, self._refill)

    def connection_free(self, conn: LegacyConnection) -> None:
        if self.spec.mode == "per-call":
            if not conn.inflight and conn.transport is not None:
                conn.closed = True
                conn._t().loseConnection()
            return
        if self._recycles or conn.retiring:
            self._recycle_if_old(conn)
        if self.waiting and not conn.closed:
            self._dispatch_to(conn)
        if self.gauge_call is None:
            self._gauge()

    def _recycle_if_old(self, conn: LegacyConnection) -> None:
        spec = self.spec
        if conn.retiring and not conn.inflight:
            conn.abort("restart requested", "restart")
            return
        if conn.inflight or conn.closed or not self._recycles:
            return
        now = time.monotonic()
        if spec.max_age is not None and now - conn.born > spec.max_age:
            conn.abort("max_age reached", "max-age")
        elif spec.idle_timeout is not None and now - conn.last_used > spec.idle_timeout:
            conn.abort("idle_timeout reached", "idle-timeout")

    def _dispatch_to(self, conn: LegacyConnection) -> None:
        while (self.waiting and not conn.closed and conn.ready and not conn.retiring
               and len(conn.inflight) < self.spec.pipeline):
            call = self.waiting.popleft()
            if call.finished:
                continue
            conn.send(call)
            if self.spec.mode == "per-call":
                break

    # -- calls -----------------------------------------------------------------------------
    def call(self, data: bytes, reader: Reader, timeout: float, idempotent: bool) -> defer.Deferred[Any]:
        call = Call(data, reader, idempotent)
        self._start(call, timeout)
        return call.deferred

    def call_cb(self, data: bytes, reader: Reader, timeout: float, idempotent: bool, on_done: Done) -> Call:
        """`call` without a Deferred: `on_done(result, None)` or `on_done(None, error)` runs
        exactly once, possibly before this returns (a backend that is down fails at once).
        `Call.cancel()` gives up on it."""
        call = Call(data, reader, idempotent, on_done)
        self._start(call, timeout)
        return call

    def _start(self, call: Call, timeout: float) -> None:
        if self.probe_ok is False and self.spec.probe is not None:
            # the backend answers, but its health probe says it must not be used
            err = CallError(Code.UNAVAILABLE, f"backend {self.spec.name} is unavailable: {self.probe_reason}")
            self.record(call, err)
            call.fail(err)
            return
        call.deadline = call.started + (timeout if timeout > 0.0 else 0.0)
        if call.deadline < self.sweep_at:
            self._arm(call.deadline)
        self._submit(call)

    # -- deadlines -------------------------------------------------------------------------
    def _arm(self, deadline: float) -> None:
        """Make the sweep run no later than `deadline`. Calls mostly share one timeout, so a
        new call's deadline is almost always later than the one already armed: no timer work."""
        if self.sweep_call is not None and self.sweep_call.active():
            self.sweep_call.cancel()
        self.sweep_at = deadline
        self.sweep_call = self.reactor.callLater(max(0.0, deadline - time.monotonic()), self._sweep)

    def _sweep(self) -> None:
        """Time out every outstanding call whose deadline has passed, then sleep until the
        earliest deadline still ahead. Outstanding calls are all in flight on a connection or
        waiting for one (at most pool.size × pipeline + max_waiting), and this runs about once
        per timeout period under steady load, not once per call."""
        self.sweep_call = None
        self.sweep_at = float("inf")
        now = time.monotonic()
        expired: list[Call] = []
        nearest = float("inf")
        for conn in self.conns:
            for call in conn.inflight:
                if call.deadline <= now:
                    expired.append(call)
                elif call.deadline < nearest:
                    nearest = call.deadline
        for call in self.waiting:
            if call.deadline <= now:
                expired.append(call)
            elif call.deadline < nearest:
                nearest = call.deadline
        for call in expired:
            self._timeout(call)
        if nearest < float("inf"):  # also while stopping: calls still out keep their deadlines
            self._arm(nearest)

    def _submit(self, call: Call) -> None:
        if self.stopping:
            call.fail(CallError(Code.UNAVAILABLE, "sidecar shutting down"))
            return
        if self.spec.mode == "per-call":
            # at most pool.size connections at once; the rest wait, boundedly (the calls whose
            # connection is being made are not waiting for a slot)
            if len(self.waiting) - self.connecting >= self.spec.max_waiting:
                err = CallError(Code.RESOURCE_EXHAUSTED, f"backend {self.spec.name}: too many calls waiting")
                self.record(call, err)
                call.fail(err)
                return
            self.waiting.append(call)
            if self._slots_used() < self.spec.pool_size:
                self._connect()
            return
        best: LegacyConnection | None = None
        for conn in self.conns:
            if (conn.ready and not conn.closed and not conn.retiring
                    and len(conn.inflight) < self.spec.pipeline):
                if self._recycles:
                    self._recycle_if_old(conn)
                    if conn.closed:
                        continue
                if best is None or len(conn.inflight) < len(best.inflight):
                    best = conn
                    if not conn.inflight:
                        break
        if best is not None:
            best.send(call)
            if self.gauge_call is None:
                self._gauge()
            return
        if self.down and not any(c.ready for c in self.conns):
            err = CallError(
                Code.UNAVAILABLE, f"backend {self.spec.name} is unavailable: {self.down_reason}"
            )
            self.record(call, err)
            call.fail(err)
            return
        if len(self.waiting) >= self.spec.max_waiting:
            err = CallError(Code.RESOURCE_EXHAUSTED, f"backend {self.spec.name}: too many calls waiting")
            self.record(call, err)
            call.fail(err)
            return
        self.waiting.append(call)
        if self._slots_used() < self.spec.pool_size:
            self._connect()

    def _timeout(self, call: Call) -> None:
        err = CallError(Code.DEADLINE_EXCEEDED, f"backend {self.spec.name} did not answer in time")
        self.record(call, err)
        if call in self.waiting:
            self.waiting.remove(call)
            call.fail(err)
            return
        conn = call.conn
        call.fail(err)
        if conn is not None and not conn.closed:
            if call in conn.inflight:
                conn.inflight.remove(call)
            conn.abort("call timed out; its late reply must not reach another caller", "timeout")

    def record(self, call: Call, err: CallError | None) -> None:
        if err is None:
            outcome = "ok"
        elif err.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED):
            outcome = err.code.name.lower()
        elif err.reusable:
            outcome = "legacy_error"
        else:
            outcome = "protocol_error"
        metrics.recorder.backend_call(self.spec.name, outcome, time.monotonic() - call.started)

    # -- probe -----------------------------------------------------------------------------
    def _probe(self) -> None:
        """Send the probe on an idle connection. It never queues behind callers' calls: a
        probe timing out in a busy queue would call a healthy backend down. When every
        connection is busy, their replies are the evidence, and the probe waits a round."""
        probe = self.spec.probe
        assert probe is not None
        if self.stopping:
            return
        call = Call(probe.send, ExpectReader(probe.expect, self.spec.encoding, "probe"), True)
        idle = None
        if self.spec.mode == "pooled":
            usable = [c for c in self.conns if c.ready and not c.closed]
            idle = next((c for c in usable if not c.inflight), None)
            if idle is None and usable:
                self._next_probe()
                return
        timeout = probe.timeout if probe.timeout is not None else self.spec.timeout
        call.deadline = call.started + timeout
        if call.deadline < self.sweep_at:
            self._arm(call.deadline)
        if idle is not None:
            idle.send(call)
        else:
            self._submit(call)  # waits for a connection being made, or fails fast when down

        def ok(_: Any) -> None:
            if self.probe_ok is not True:
                log.info("backend_probe_ok", backend=self.spec.name)
            self.probe_ok = True
            self.probe_reason = ""

        def bad(f: Failure) -> None:
            why = f.value.message if isinstance(f.value, CallError) else str(f.value)
            reason = why if why.startswith("probe") else f"probe: {why}"
            if self.probe_ok is not False or reason != self.probe_reason:
                log.warning("backend_probe_failed", backend=self.spec.name, reason=reason)
            self.probe_ok = False
            self.probe_reason = reason

        call.deferred.addCallbacks(ok, bad)
        call.deferred.addBoth(lambda _: self._next_probe())

    def _next_probe(self) -> None:
        self._gauge()
        probe = self.spec.probe
        if not self.stopping and probe is not None:
            every = probe.every if self.probe_ok else min(probe.every, PROBE_RETRY_S)
            self.probe_call = self.reactor.callLater(every, self._probe)


def frame_text(spec: LineSpec, text: str) -> bytes:
    """Frame a constant handshake/probe line once at config load."""
    return encode_frame(spec.framing, text.encode(spec.encoding))
