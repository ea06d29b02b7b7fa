"""The gRPC → stdio floor: what grpc.aio itself can do for `echo.v1.Echo/Say` → a pool of
programs on stdin/stdout.

A minimal hand-written grpc.aio server on uvloop (the loop adaptercar's gRPC worker runs on),
with stubs generated from benchmarks/stdio's proto at start-up, that starts `--children`
copies of the program and gives each one call at a time, as the sidecar's pooled process
backend does: write the request line, read the answer line. No adaptercar code.

    python benchmarks/floors/grpcaio_stdio.py --port 0 --children 4 -- cat

prints `LISTENING 127.0.0.1:<port>` once it accepts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

PROTOS = Path(__file__).resolve().parent.parent / "stdio" / "protos"
sys.path.insert(0, str(PROTOS))
echo_pb2, echo_pb2_grpc = grpc.protos_and_services("echo/v1/echo.proto")  # type: ignore[attr-defined]


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    async def ask(self, line: bytes) -> bytes:
        self.stdin.write(line + b"\n")
        return (await self.stdout.readuntil(b"\n"))[:-1]


class Pool:
    """Idle children in a queue: a call takes one, uses it, and puts it back."""

    def __init__(self, children: list[Child]) -> None:
        self.idle: asyncio.Queue[Child] = asyncio.Queue()
        for c in children:
            self.idle.put_nowait(c)

    async def ask(self, line: bytes) -> bytes:
        child = await self.idle.get()
        try:
            return await child.ask(line)
        finally:
            self.idle.put_nowait(child)


class Echo(echo_pb2_grpc.EchoServicer):  # type: ignore[misc,name-defined]
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def Say(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        try:
            answer = await self.pool.ask(request.text.encode())
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the program went away: {e}")
        return echo_pb2.SayReply(text=answer.decode())


async def serve(args: argparse.Namespace) -> None:
    children = [Child(await asyncio.create_subprocess_exec(*args.program, stdin=asyncio.subprocess.PIPE,
                                                           stdout=asyncio.subprocess.PIPE))
                for _ in range(args.children)]
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(Pool(children)), server)
    bound = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"LISTENING 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    for c in children:
        c.proc.kill()
        await c.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--children", type=int, default=4)
    p.add_argument("program", nargs="+")
    uvloop.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
