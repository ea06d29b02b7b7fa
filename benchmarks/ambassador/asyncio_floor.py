"""What a Python proxy on raw uvloop protocols can do, for comparison with the Twisted stack.

    python benchmarks/ambassador/asyncio_floor.py --port P --upstream 127.0.0.1:A [--upstream ...]

Deliberately minimal, and not correct HTTP beyond the benchmark's needs: bodiless requests
passed through byte for byte, responses with a Content-Length, round robin over static
upstreams, one pooled keep-alive connection per in-flight request. No timers, retries or
header rules. Not a scenario of `make bench`; docs/performance.md (the ambassador's method)
quotes it to show how much of the ambassador's cost is the Twisted I/O stack.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
from typing import Any

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.transport: Any = None
        self.caller: Any = None
        self.buf = b""
        self.need = -1

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            self.need = end + 4 + int(head[i + 15:head.find(b"\r\n", i)] if head.find(b"\r\n", i) > 0
                                      else head[i + 15:])
        if len(self.buf) >= self.need:
            out, self.buf, self.need = self.buf, b"", -1
            caller, self.caller = self.caller, None
            self.pool.append(self)
            caller.transport.write(out)


class Caller(asyncio.Protocol):
    targets: Any = None
    pools: dict[tuple[str, int], list[Upstream]] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        req, self.buf = self.buf[:end + 4], self.buf[end + 4:]
        target = next(self.targets)
        pool = self.pools.setdefault(target, [])
        if pool:
            up = pool.pop()
            up.caller = self
            up.transport.write(req)
        else:
            asyncio.get_running_loop().create_task(self._connect(target, pool, req))

    async def _connect(self, target: tuple[str, int], pool: list[Upstream], req: bytes) -> None:
        _, up = await asyncio.get_running_loop().create_connection(
            lambda: Upstream(pool), *target)
        up.caller = self
        up.transport.write(req)


async def serve(port: int, upstreams: list[str]) -> None:
    Caller.targets = itertools.cycle([(h, int(p)) for h, _, p in
                                      (u.rpartition(":") for u in upstreams)])
    server = await asyncio.get_running_loop().create_server(Caller, "127.0.0.1", port)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    gc.freeze()
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", action="append", required=True)
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
