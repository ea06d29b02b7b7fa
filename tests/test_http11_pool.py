"""The SOAP backend's HTTP/1.1 pool (backends/http_pool.py) against real loopback servers:
keep-alive reuse, an idle close seen before reuse, timeouts and oversized replies closing the
connection, the stale-connection retry, and connect failures."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adaptercar.backends.http_pool import ConnectFailed, HttpPool, NoReply, Timeout
from adaptercar.mapping.http11 import HttpError, Reply, ReplyTooLarge, request_bytes
from tests.harness import free_port

Handler = Callable[[int, int, bytes], Awaitable[bytes | None]]
"""(connection number, request number on it, body) → the reply bytes, or None: close."""


class Server:
    def __init__(self, handler: Handler, close_after_reply: bool = False) -> None:
        self.handler = handler
        self.close_after_reply = close_after_reply
        self.connections = 0
        self.server: Any = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/svc"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        conn, n = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                n += 1
                reply = await self.handler(conn, n, body)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after_reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stop(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def run(test: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(test(loop), 20))
    finally:
        loop.close()


def pool_for(loop: asyncio.AbstractEventLoop, url: str, **kw: Any) -> HttpPool:
    opts: dict[str, Any] = {"size": 4, "connect_timeout": 1.0, "max_reply_bytes": 1000, **kw}
    return HttpPool(url, reactor=types.SimpleNamespace(_asyncioEventloop=loop), **opts)


async def call(pool: HttpPool, body: bytes = b"<x/>", timeout: float = 2.0,
               retry_stale: bool = False) -> tuple[Reply | None, BaseException | None]:
    fut: asyncio.Future[tuple[Reply | None, BaseException | None]] = \
        asyncio.get_running_loop().create_future()
    data = request_bytes(pool.prefix, [("Content-Type", "text/xml")], body)
    pool.request(data, timeout, retry_stale, lambda r, e: fut.set_result((r, e)))
    return await fut


def test_keep_alive_reuse_and_an_idle_close_seen_before_reuse() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def echo(conn: int, n: int, body: bytes) -> bytes | None:
            return ok(b"%d:%d:" % (conn, n) + body)

        srv = Server(echo)
        pool = pool_for(loop, await srv.start())
        for n in (1, 2, 3):
            reply, err = await call(pool, b"<a/>")
            assert err is None and reply is not None
            assert (reply.status, reply.body) == (200, b"1:%d:<a/>" % n)
        assert srv.connections == 1
        for w in srv.writers:  # the server closes its idle connection
            w.close()
        await asyncio.sleep(0.3)
        assert not pool.idle  # seen at once: dropped from the pool
        reply, err = await call(pool)  # not retryable, and yet fine: a fresh connection
        assert err is None and reply is not None and reply.body == b"2:1:<x/>"
        pool.stop()
        await srv.stop()

    run(test)


def test_a_timeout_closes_the_connection_and_the_late_reply_is_never_read() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def slow(conn: int, n: int, body: bytes) -> bytes | None:
            if body == b"slow":
                await asyncio.sleep(0.8)
                return ok(b"late")
            return ok(b"conn %d" % conn)

        srv = Server(slow)
        pool = pool_for(loop, await srv.start())
        assert (await call(pool))[0] is not None
        reply, err = await call(pool, b"slow", timeout=0.3)
        assert reply is None and isinstance(err, Timeout)
        reply, err = await call(pool)
        assert reply is not None and reply.body == b"conn 2"  # a new connection
        await asyncio.sleep(0.8)
        reply, err = await call(pool)
        assert reply is not None and reply.body == b"conn 2"
        pool.stop()
        await srv.stop()

    run(test)


def test_a_stale_connection_is_retried_only_when_asked() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def drop_second(conn: int, n: int, body: bytes) -> bytes | None:
            return None if n == 2 else ok(b"conn %d" % conn)

        srv = Server(drop_second)
        pool = pool_for(loop, await srv.start())
        assert (await call(pool))[0] is not None
        reply, err = await call(pool, retry_stale=False)  # 2nd request on conn 1: dropped
        assert reply is None and isinstance(err, NoReply) and err.stale and not err.retried
        assert (await call(pool))[0] is not None  # conn 2, request 1
        reply, err = await call(pool, retry_stale=True)  # conn 2, request 2: dropped, resent
        assert err is None and reply is not None and reply.body == b"conn 3"
        pool.stop()
        await srv.stop()

    run(test)


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_other_framings_and_the_reply_bound(framing: str) -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def answer(conn: int, n: int, body: bytes) -> bytes | None:
            size = int(body)
            if framing == "chunked":
                half = b"y" * (size // 2)
                return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"%x\r\n%s\r\n" % (len(half), half) * 2 + b"0\r\n\r\n")
            return b"HTTP/1.0 200 OK\r\n\r\n" + b"y" * size

        srv = Server(answer, close_after_reply=framing == "close")
        pool = pool_for(loop, await srv.start())
        reply, err = await call(pool, b"600")
        assert err is None and reply is not None and reply.body == b"y" * 600
        reply, err = await call(pool, b"1200")
        assert reply is None and isinstance(err, ReplyTooLarge)
        await asyncio.sleep(0.1)
        assert not pool.idle  # the oversized reply's connection was closed
        reply, err = await call(pool, b"10")
        assert reply is not None and reply.body == b"y" * 10
        pool.stop()
        await srv.stop()

    run(test)


def test_garbage_is_an_http_error() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def garbage(conn: int, n: int, body: bytes) -> bytes | None:
            return b"SSH-2.0-OpenSSH_9.2\r\n\r\n"

        srv = Server(garbage)
        pool = pool_for(loop, await srv.start())
        reply, err = await call(pool)
        assert reply is None and isinstance(err, HttpError)
        pool.stop()
        await srv.stop()

    run(test)


def test_a_refused_connection_fails_at_once() -> None:
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        pool = pool_for(loop, f"http://127.0.0.1:{free_port()}/svc")
        t0 = loop.time()
        reply, err = await call(pool, timeout=5.0)
        assert reply is None and isinstance(err, ConnectFailed)
        assert "ConnectionRefusedError" in str(err)
        assert loop.time() - t0 < 1.0

    run(test)


TWISTED_SCRIPT = r'''
import http.server, threading
from twisted.internet import reactor
from adaptercar.backends.http_pool import HttpPool
from adaptercar.mapping.http11 import request_bytes

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = b"port %d: " % self.client_address[1] + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
pool = HttpPool(f"http://127.0.0.1:{srv.server_address[1]}/svc", 2, 1.0, 1000, reactor)
got = []
def go(n):
    def done(reply, err):
        got.append(reply.body.split(b": ")[1] if reply else repr(err))
        ports.add(reply.body.split(b":")[0] if reply else None)
        go(n + 1) if n < 3 else reactor.stop()
    pool.request(request_bytes(pool.prefix, [], b"call %d" % n), 2.0, False, done)
ports = set()
reactor.callWhenRunning(go, 1)
reactor.run()
print(got, len(ports))
'''


def test_the_pool_works_on_a_reactor_that_is_not_asyncio_based() -> None:
    import subprocess
    import sys

    from tests.harness import ROOT

    out = subprocess.run([sys.executable, "-c", TWISTED_SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[b'call 1', b'call 2', b'call 3'] 1"  # one kept-alive connection


def test_a_connection_lost_as_soon_as_it_opens_fails_the_call_at_once() -> None:
    """However the close races the send (lost before it: ConnectFailed; after: NoReply), the
    call fails at once, not at its timeout. (Lost before the send is the race a TLS server
    refusing the client's certificate makes likely: tests/test_tls_upstreams.py.)"""
    async def test(loop: asyncio.AbstractEventLoop) -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        pool = pool_for(loop, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/svc")
        for _ in range(20):
            t0 = loop.time()
            reply, err = await call(pool, timeout=5.0)
            assert reply is None and isinstance(err, (ConnectFailed, NoReply)), err
            assert loop.time() - t0 < 1.0
        server.close()

    run(test)
