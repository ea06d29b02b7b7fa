"""The JSON floor: what twisted.web itself can do for `GET /v1/cache/{key}` → memcached `get`.

A minimal hand-written server on the same stack as adaptercar's JSON worker (asyncioreactor on
uvloop, twisted.web with no access log) doing the same backend exchange over a small pipelined
pool of Twisted connections, and answering the same JSON. No adaptercar code: the gap between
this and the sidecar is what adaptercar's generality costs.

    python benchmarks/floors/twisted_memcached.py --port 0 --memcached 127.0.0.1:11211

prints `LISTENING 127.0.0.1:<port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from typing import Any

import uvloop

loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install(loop)

from twisted.internet import defer, protocol  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.web import resource, server  # noqa: E402

reactor: Any = _reactor

Reply = tuple[int, bytes] | None  # (flags, value) or a miss


class Memcached(protocol.Protocol):
    """One connection; replies come back in request order, so a FIFO of Deferreds suffices."""

    transport: Any

    def __init__(self) -> None:
        self.waiting: deque[defer.Deferred[Reply]] = deque()
        self.buf = b""
        self.value: tuple[int, int] | None = None  # (flags, byte count) of a VALUE being read
        self.found: Reply = None

    def get(self, key: bytes) -> defer.Deferred[Reply]:
        d: defer.Deferred[Reply] = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(b"get " + key + b"\r\n")
        return d

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.value is not None:
                flags, n = self.value
                if len(self.buf) < n + 2:
                    return
                self.found, self.buf, self.value = (flags, self.buf[:n]), self.buf[n + 2:], None
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            if line.startswith(b"VALUE "):
                _, _, flags_text, size_text = line.split(b" ")
                self.value = (int(flags_text), int(size_text))
            elif line == b"END":
                found, self.found = self.found, None
                self.waiting.popleft().callback(found)
            else:
                self.waiting.popleft().errback(RuntimeError(line.decode("latin-1")))

    def connectionLost(self, reason: Any = None) -> None:
        while self.waiting:
            self.waiting.popleft().errback(RuntimeError("memcached connection lost"))


class Pool:
    """`size` connections with up to `pipeline` requests each; beyond that callers queue."""

    def __init__(self, conns: list[Memcached], pipeline: int) -> None:
        self.conns = conns
        self.pipeline = pipeline
        self.queue: deque[tuple[bytes, defer.Deferred[Reply]]] = deque()

    def get(self, key: bytes) -> defer.Deferred[Reply]:
        c = min(self.conns, key=lambda c: len(c.waiting))
        if len(c.waiting) < self.pipeline:
            return c.get(key).addBoth(self._next)
        d: defer.Deferred[Reply] = defer.Deferred()
        self.queue.append((key, d))
        return d

    def _next(self, result: Any) -> Any:
        if self.queue:
            key, d = self.queue.popleft()
            self.get(key).chainDeferred(d)
        return result


class Cache(resource.Resource):
    isLeaf = True

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool

    def render_GET(self, request: Any) -> Any:
        if len(request.postpath) != 3 or request.postpath[:2] != [b"v1", b"cache"]:
            request.setResponseCode(404)
            return b'{"code": 5, "message": "not found", "details": []}'
        key = request.postpath[2]
        d = self.pool.get(key)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request, key), errbackArgs=(request,))
        return server.NOT_DONE_YET

    @staticmethod
    def _write(request: Any, status: int, body: bytes) -> None:
        if request._disconnected:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def _answer(self, found: Reply, request: Any, key: bytes) -> None:
        k = key.decode()
        if found is None:
            body = {"code": 5, "message": f"no value for key {k}", "details": []}
            self._write(request, 404, json.dumps(body).encode())
            return
        flags, value = found
        self._write(request, 200, json.dumps({"key": k, "flags": flags, "value": value.decode()}).encode())

    def _failed(self, failure: Any, request: Any) -> None:
        body = {"code": 14, "message": str(failure.value), "details": []}
        self._write(request, 503, json.dumps(body).encode())


class QuietSite(server.Site):
    def log(self, request: Any) -> None:  # the default access log costs a quarter of throughput
        pass


@defer.inlineCallbacks
def start(args: argparse.Namespace) -> Any:
    host, port = args.memcached.rsplit(":", 1)
    creator = protocol.ClientCreator(reactor, Memcached)
    conns = []
    for _ in range(args.pool):
        c = yield creator.connectTCP(host, int(port))
        conns.append(c)
    listener = reactor.listenTCP(args.port, QuietSite(Cache(Pool(conns, args.pipeline))), interface="127.0.0.1")
    print(f"LISTENING 127.0.0.1:{listener.getHost().port}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--memcached", required=True, help="host:port")
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--pipeline", type=int, default=16)
    args = p.parse_args()

    def failed(f: Any) -> None:
        print(f"twisted_memcached: {f.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: start(args).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
