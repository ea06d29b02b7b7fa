"""An HTTP/1.1 upstream that answers with its own name, or misbehaves on request.

Tests flip its `mode` at run time (in-process, or via `POST /__mode?mode=...` when run as a
program) and read `received` to assert what actually reached it, so ambassador tests check
behaviour at the far end of real sockets rather than trusting the proxy's own account.

Modes: `ok` (200, body = name), `503` (with `Retry-After` when `retry_after` is set),
`reset` (read the request, then close with RST), `hang` (never answer), `slow` (answer after
`delay` seconds), `big` (200 with `delay` MiB of body).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that gave up (the proxy's timeout) is expected here: no traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body_len: int


@dataclass
class HttpUpstream:
    name: str
    port: int = 0
    mode: str = "ok"
    retry_after: str | None = None
    delay: float = 0.0
    bytes_in: int = 0
    """Request body bytes read so far, counted as they arrive (before the request is whole)."""
    received: list[Received] = field(default_factory=list)
    _server: _Server | None = None
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conns: set[socket.socket] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def start(self) -> HttpUpstream:
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out as two writes: without this, Nagle + delayed ACK
                # add 40 ms to every keep-alive call
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with up._lock:
                    up._conns.add(self.connection)

            def finish(self) -> None:
                with up._lock:
                    up._conns.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _body(self) -> int:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    total = 0
                    while size := int(self.rfile.readline().split(b";")[0] or b"0", 16):
                        total += len(self.rfile.read(size))
                        self.rfile.readline()
                        with up._lock:
                            up.bytes_in += size
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return total
                n = int(self.headers.get("Content-Length") or 0)
                left, total = n, 0
                while left > 0:
                    chunk = self.rfile.read1(min(left, 1 << 16))  # what has arrived
                    if not chunk:
                        break
                    total += len(chunk)
                    left -= len(chunk)
                    with up._lock:
                        up.bytes_in += len(chunk)
                return total

            def _handle(self) -> None:
                n = self._body()
                url = urlsplit(self.path)
                if url.path == "/__mode":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    up.mode = q.get("mode", "ok")
                    up.retry_after = q.get("retry_after")
                    up.delay = float(q.get("delay", "0"))
                    self._reply(200, b"mode set\n")
                    return
                if url.path == "/__received":
                    with up._lock:
                        data = json.dumps([r.__dict__ for r in up.received]).encode()
                    self._reply(200, data)
                    return
                with up._lock:
                    up.received.append(Received(self.command, self.path,
                                                {k.lower(): v for k, v in self.headers.items()}, n))
                mode = up.mode
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "hang":
                    up._release.wait(60)
                    self.close_connection = True
                    return
                if mode == "slow":
                    time.sleep(up.delay)
                if mode == "big":  # `delay` is the size in MiB
                    size = int(up.delay * (1 << 20))
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    chunk = b"y" * (1 << 16)
                    for _ in range(size // len(chunk)):
                        self.wfile.write(chunk)
                    return
                if mode == "503":
                    extra = {"Retry-After": up.retry_after} if up.retry_after else {}
                    self._reply(503, f"{up.name} unavailable\n".encode(), extra)
                    return
                self._reply(200, up.name.encode(), {"X-Upstream": up.name})

            def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

        server = _Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, as a crashed upstream would."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    up = HttpUpstream(args.name, args.port).start()
    print(up.address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        up.stop()


if __name__ == "__main__":
    main()
