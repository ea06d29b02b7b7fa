"""The gRPC floor: what grpc.aio itself can do for `kv.v1.Cache/Get` → memcached `get`.

A minimal hand-written grpc.aio server on uvloop (the loop adaptercar's gRPC worker runs on),
with stubs generated from benchmarks/kv's proto at start-up, doing the same backend exchange
over a small pipelined pool of asyncio stream connections. No adaptercar code.

    python benchmarks/floors/grpcaio_memcached.py --port 0 --memcached 127.0.0.1:11211

prints `LISTENING 127.0.0.1:<port>` once it accepts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any

import grpc
import uvloop

PROTOS = Path(__file__).resolve().parent.parent / "kv" / "protos"
sys.path.insert(0, str(PROTOS))
kv_pb2, kv_pb2_grpc = grpc.protos_and_services("kv/v1/kv.proto")  # type: ignore[attr-defined]

Reply = tuple[int, bytes] | None


class Memcached:
    """One connection: requests are written in order, one reader task resolves them in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: deque[asyncio.Future[Reply]] = deque()
        self.task = asyncio.get_running_loop().create_task(self._read())

    def get(self, key: bytes) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.writer.write(b"get " + key + b"\r\n")
        return fut

    async def _read(self) -> None:
        found: Reply = None
        try:
            while True:
                line = (await self.reader.readuntil(b"\r\n"))[:-2]
                if line.startswith(b"VALUE "):
                    _, _, flags, n = line.split(b" ")
                    data = await self.reader.readexactly(int(n) + 2)
                    found = (int(flags), data[:-2])
                elif line == b"END":
                    fut = self.waiting.popleft()
                    if not fut.done():
                        fut.set_result(found)
                    found = None
                else:
                    fut = self.waiting.popleft()
                    if not fut.done():
                        fut.set_exception(RuntimeError(line.decode("latin-1")))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            while self.waiting:
                f = self.waiting.popleft()
                if not f.done():
                    f.set_exception(RuntimeError(f"memcached connection lost: {e}"))


class Pool:
    """`size` connections with up to `pipeline` requests each; beyond that callers wait."""

    def __init__(self, conns: list[Memcached], pipeline: int) -> None:
        self.conns = conns
        self.pipeline = pipeline
        self.slots = asyncio.Semaphore(len(conns) * pipeline)

    async def get(self, key: bytes) -> Reply:
        async with self.slots:
            c = min(self.conns, key=lambda c: len(c.waiting))
            return await c.get(key)


class Cache(kv_pb2_grpc.CacheServicer):  # type: ignore[misc,name-defined]
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def Get(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        try:
            found = await self.pool.get(request.key.encode())
        except RuntimeError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no value for key {request.key}")
        assert found is not None  # abort() raises
        flags, value = found
        return kv_pb2.GetReply(key=request.key, flags=flags, value=value.decode())


async def serve(args: argparse.Namespace) -> None:
    host, port = args.memcached.rsplit(":", 1)
    conns = [Memcached(*await asyncio.open_connection(host, int(port))) for _ in range(args.pool)]
    server = grpc.aio.server()
    kv_pb2_grpc.add_CacheServicer_to_server(Cache(Pool(conns, args.pipeline)), server)
    bound = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"LISTENING 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--memcached", required=True, help="host:port")
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--pipeline", type=int, default=16)
    uvloop.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
