"""A worker process: one role (gRPC front or JSON front), its own reactor and backend pools.

Also the whole sidecar in `--single-process` mode (all roles and admin on one loop).
The parts are `twisted.application` services started in order (backends, then fronts, then
the control channel) and stopped in reverse, so a drain stops accepting first and closes
backend connections last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
import weakref
from collections.abc import Generator
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from ..drain import Drain, close_channels

# How long a stopping JSON listener goes on accepting after it refuses new handshakes: those
# already under way (SYN answered, ACK not yet in) complete meanwhile; loopback and in-cluster
# round trips are far shorter
HANDSHAKE_SETTLE = 0.05


class FrontsThenBackends(service.MultiService):
    """The service tree of a worker: its first child is the backends, the others are fronts.

    Stopping: every front at once (each stops accepting at once, then drains its calls in
    flight), and the backend pools only when all fronts are done. `MultiService` would stop
    them all together: the pools closed under the draining calls, which then failed with
    UNAVAILABLE. Fronts stop together so that, in --single-process mode, the gRPC front does
    not keep accepting calls while the JSON front drains.
    """

    @defer.inlineCallbacks
    def stopService(self) -> Generator[Any, Any, None]:  # noqa: N802 - twisted's name
        from ..logs import log

        service.Service.stopService(self)
        backends, *fronts = list(self)
        stops = [defer.maybeDeferred(svc.stopService) for svc in fronts if svc.running]
        for ok, result in (yield defer.DeferredList(stops, consumeErrors=True)):
            if not ok:
                log.error("internal_error", during="stop", error=repr(result.value))
        if backends.running:
            yield defer.maybeDeferred(backends.stopService)


def bind(listen: str, shared: bool = False) -> socket.socket:
    """A socket bound to `host:port` (SO_REUSEADDR, as Twisted and grpc set it), or a clear
    CannotListenError when the port is taken.

    `shared`: with SO_REUSEPORT, for a front run by several workers. Each worker binds its own
    socket on the port and the kernel spreads new connections over them; one that is gone
    (a worker restarting) takes no connections, and the port is never closed meanwhile.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as e:
        raise CannotListenError(host, port, e) from None
    family, kind, proto, _, addr = infos[0]
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(addr)
    except OSError as e:
        s.close()
        raise CannotListenError(host, port, e) from None
    return s


def check_can_listen(listen: str, shared: bool = False) -> None:
    """Fail with a clear CannotListenError when `host:port` is taken.

    grpc reports a taken port as a RuntimeError plus a C-core log line on stderr; binding a
    socket first, as grpc will, turns that into the same one-line error twisted.web gives.
    The socket is closed at once; grpc binds right after.
    """
    if not listen.startswith("unix:"):
        bind(listen, shared).close()


class BackendsService(service.Service):
    def __init__(self, holder: Any) -> None:
        self.holder = holder
        self.unregister: Any = None

    def startService(self) -> None:
        from .control import on_restart

        super().startService()
        for b in self.holder.get().backends.values():
            b.start()
        self.unregister = on_restart(self.restart)

    def restart(self, name: str) -> None:
        """`{"cmd": "restart"}`: the pool of that name in the set serving now, if it can."""
        restart = getattr(self.holder.get().backends.get(name), "restart", None)
        if restart is not None:
            restart()

    def stopService(self) -> Any:
        """Stop every pool and wait (bounded) until it is done: a process pool's stop fires
        once each child has exited, after SIGKILL for one that ignores SIGTERM, so no child
        outlives the sidecar."""
        from twisted.internet import reactor

        super().stopService()
        if self.unregister is not None:
            self.unregister()
        stops = [defer.maybeDeferred(b.stop) for b in self.holder.get().backends.values()]
        d = defer.DeferredList(stops, consumeErrors=True)
        d.addTimeout(5.0, reactor)  # type: ignore[arg-type]
        d.addErrback(lambda _: None)
        return d


class GrpcService(service.Service):
    def __init__(self, front: Any, loop: asyncio.AbstractEventLoop, drain_timeout: float) -> None:
        self.front = front
        self.loop = loop
        self.drain_timeout = drain_timeout
        self.health_task: Any = None
        self.what = f"the gRPC front on {front.listen}"

    def startService(self) -> Any:
        super().startService()
        check_can_listen(self.front.listen, self.front.shared)
        d = defer.Deferred.fromFuture(self.loop.create_task(self.front.start()))
        d.addCallback(lambda _: self._health_loop())
        return d

    def _health_loop(self) -> None:
        from twisted.internet import task

        self.health_task = task.LoopingCall(
            lambda: defer.Deferred.fromFuture(self.loop.create_task(self.front.update_health()))
        )
        self.health_task.start(1.0, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self.health_task is not None and self.health_task.running:
            self.health_task.stop()
        return defer.Deferred.fromFuture(self.loop.create_task(self.front.stop(self.drain_timeout)))


def _draining_port_class() -> Any:
    """`tcp.Port` that closes without resetting a connection: closing a listener resets every
    connection the kernel completed but nobody accepted yet, so a client that connected a
    moment before SIGTERM would see ECONNRESET for a call the sidecar could still serve.
    At stop it refuses new handshakes (see handshakes.py), keeps accepting for a moment while
    the handshakes under way complete, then accepts what is queued and closes at once.
    Built on first use, as the other reactor-side imports here."""
    from twisted.internet import tcp

    from .handshakes import refuse_new_handshakes

    class DrainingPort(tcp.Port):  # type: ignore[misc]
        def loseConnection(self, *args: Any) -> Any:  # noqa: N802 - twisted's name
            if not refuse_new_handshakes(self.socket):
                return super().loseConnection(*args)
            return task.deferLater(self.reactor, HANDSHAKE_SETTLE, super().loseConnection, *args)

        stopListening = loseConnection  # noqa: N815 - twisted's name, bound to its own otherwise

        def connectionLost(self, reason: Any) -> None:  # noqa: N802 - twisted's name
            # each doRead accepts until EAGAIN or its batch size; bounded, so that a flood at
            # that very moment cannot hold the close back
            for _ in range(20):
                last = self.sessionno
                self.doRead()
                if self.sessionno == last:
                    break
            # closed at once, before Twisted logs (without the filter, a connection completed
            # in between would be reset); Twisted's own close is then a no-op
            self.socket.close()
            super().connectionLost(reason)

    return DrainingPort


class HttpService(service.Service):
    """The JSON front's listener, and a graceful stop for it.

    Stopping: close the listener (serving the connections it had queued), close idle keep-alive
    connections and mark busy ones to close after their response, wait (up to the drain
    timeout) for requests in flight, then close what is left gracefully: `loseConnection`
    sends buffered responses first, whereas the reactor's own shutdown would drop a response
    still in a socket buffer.
    """

    def __init__(self, site: Any, listen: str, drain: Drain, drain_timeout: float,
                 tls: Any = None, shared: bool = False) -> None:
        self.tls = tls  # tls.ReloadableServerTls, or None: plaintext
        self.shared = shared  # the port is shared with other workers (SO_REUSEPORT)
        self.site = site
        self.listen = listen
        self.port: Any = None
        self.drain = drain
        self.drain_timeout = drain_timeout
        self.what = f"the JSON front on {listen}"
        self.requests = Drain()  # requests from fully received to finished (or client gone)
        # every connection, from its accept: one closed with a request still unread in its
        # socket buffer is reset, so a drain must tell a fresh one from an idle keep-alive one
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self.used: weakref.WeakSet[Any] = weakref.WeakSet()  # those that began a request
        self._track_requests()

    def _track_requests(self) -> None:
        """Count requests from fully received to finished (or their client gone): a counter
        and a WeakSet add per request, nothing per byte."""
        svc = self
        base: Any = self.site.requestFactory
        build = self.site.buildProtocol

        def build_protocol(addr: Any) -> Any:
            channel = build(addr)
            if channel is not None:
                svc.channels.add(channel)
            return channel

        self.site.buildProtocol = build_protocol

        class Tracked(base):  # type: ignore[misc, valid-type]
            _counted = False

            def process(self) -> Any:
                svc.requests.enter()
                self._counted = True
                svc.used.add(self.channel)
                return super().process()

            def _done(self) -> None:
                if self._counted:
                    self._counted = False
                    svc.requests.leave()

            def finish(self) -> Any:
                try:
                    return super().finish()
                finally:
                    self._done()

            def connectionLost(self, reason: Any) -> Any:  # noqa: N802 - twisted's name
                try:
                    return super().connectionLost(reason)
                finally:
                    self._done()

        self.site.requestFactory = Tracked

    def startService(self) -> None:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        super().startService()
        factory = self.site
        if self.tls is not None:
            from ..tls import server_tls_factory

            factory = server_tls_factory(self.site, self.tls)
        # Bound here rather than by listenTCP, which cannot set SO_REUSEPORT; Twisted adopts a
        # copy of the listening socket (backlog 50, as listenTCP's).
        with bind(self.listen, self.shared) as sock:
            sock.listen(50)
            sock.setblocking(False)
            # reactor.adoptStreamPort, with the Port class that accepts its queue at close
            self.port = _draining_port_class()._fromListeningDescriptor(
                reactor, sock.fileno(), sock.family, factory)
            self.port.startListening()

    def _fresh(self, ch: Any) -> bool:
        """Connected, and no request begun yet."""
        return (ch.transport is not None and ch.transport.connected
                and not ch.requests and ch not in self.used)

    @defer.inlineCallbacks
    def stopService(self) -> Generator[Any, Any, None]:  # noqa: N802 - twisted's name
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor

        super().stopService()
        if self.port is None:
            return
        yield defer.maybeDeferred(self.port.stopListening)
        # connections accepted but not yet read (those accepted at close among them): let their
        # first request arrive (bounded), so that it is served instead of reset as idle
        fresh_end = time.monotonic() + 0.5
        while time.monotonic() < fresh_end and any(
                self._fresh(ch) for ch in list(self.channels)):
            yield task.deferLater(reactor, 0.01, lambda: None)
        with open("/tmp/drain-debug.log", "a") as _f:
            _f.write(f"{os.getpid()} {time.time():.6f} fresh after wait {sum(self._fresh(c) for c in list(self.channels))} of {len(self.channels)}; busy {sum(bool(c.requests) for c in list(self.channels))}\n")
        for ch in list(self.channels):
            ch.persistent = False  # busy ones close once their response is written
            if not ch.requests:
                ch.loseConnection()  # idle keep-alive, or silent past the wait above
        drained = defer.DeferredList([self.requests.idle(), self.drain.idle()])
        drained.addTimeout(self.drain_timeout, reactor)
        try:
            yield drained
        except defer.TimeoutError:
            pass  # drain_timeout passed: what is still running is cut off below
        yield close_channels(self.channels, reactor)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adaptercar-worker")
    p.add_argument("--role", required=True, choices=["grpc", "http", "ambassador"])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--shared-port", action="store_true",
                   help="other workers serve the same port: bind it with SO_REUSEPORT")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process spawned by the supervisor."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .app import run_worker

    return run_worker(args.role, args.config, args.shared_port)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C goes to it
    os.environ.setdefault("ADAPTERCAR_WORKER", "1")
    raise SystemExit(main())
