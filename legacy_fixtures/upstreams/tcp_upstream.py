"""A TCP upstream: greets with `<name>\\n`, then echoes; records what each connection sent."""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class TcpUpstream:
    name: str
    port: int = 0
    received: list[bytes] = field(default_factory=list)
    """One entry per connection: every byte that connection sent, once it closed."""
    connections: int = 0
    _server: socketserver.ThreadingTCPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpUpstream:
        up = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with up._lock:
                    up.connections += 1
                self.request.sendall(up.name.encode() + b"\n")
                got = b""
                while True:
                    try:
                        data = self.request.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    got += data
                    self.request.sendall(data)
                with up._lock:
                    up.received.append(got)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
