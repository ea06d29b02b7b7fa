"""The "direct" baseline of gRPC → stdio: the program driven over its own stdin/stdout.

The same children as the sidecar's pool (`--children`, the same program), each given one
request at a time as the pool does — write a line, wait for its answer line — for
`--duration` seconds, from one asyncio process on uvloop. Every answer is compared with the
expected line. What it measures is what the program, fed through pipes by a client doing
nothing else, can answer: the ceiling of any adapter in front of it.

    python benchmarks/direct_stdio.py --line TEXT --duration S [--children 4] -- PROGRAM ARGS…

prints one JSON line: requests, errors, seconds, p50_us, p90_us, p99_us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from direct_memcached import percentile  # type: ignore[import-not-found]  # run as a script


class Child(asyncio.SubprocessProtocol):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.buf = b""
        self.sent = 0
        self.stdin: Any = None

    def send(self) -> None:
        self.sent = time.perf_counter_ns()
        self.stdin.write(self.run.request)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            self.run.fail(f"the program wrote on stderr: {data[:200]!r}")
            return
        self.buf += data
        if len(self.buf) < len(self.run.request):
            return
        got, self.buf = self.buf, b""
        if got != self.run.request:
            self.run.fail(f"unexpected answer {got[:200]!r}")
            return
        self.run.record(time.perf_counter_ns() - self.sent)
        if self.run.sending:
            self.send()

    def process_exited(self) -> None:
        if self.run.sending:
            self.run.fail("the program exited")


class Run:
    def __init__(self, line: str) -> None:
        self.request = line.encode() + b"\n"  # the echo program answers the same line
        self.sending = True
        self.latencies: list[int] = []
        self.error: str | None = None

    def record(self, ns: int) -> None:
        if self.sending:
            self.latencies.append(ns)

    def fail(self, why: str) -> None:
        self.error = self.error or why
        self.sending = False


async def main(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(a.line)
    children = []
    for _ in range(a.children):
        transport, child = await loop.subprocess_exec(lambda: Child(run), *a.program)
        child.stdin = transport.get_pipe_transport(0)
        children.append((transport, child))
    start = time.monotonic()
    for _, child in children:
        child.send()
    await asyncio.sleep(a.duration)
    seconds = time.monotonic() - start
    run.sending = False
    for transport, _ in children:
        transport.close()
    lat = sorted(run.latencies)
    if run.error:
        print(f"direct_stdio: {run.error}", file=sys.stderr)
    return {"requests": len(lat), "errors": 1 if run.error else 0, "seconds": seconds,
            "p50_us": percentile(lat, 50) / 1e3, "p90_us": percentile(lat, 90) / 1e3,
            "p99_us": percentile(lat, 99) / 1e3}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--line", required=True, help="the request line; the program answers it back")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--children", type=int, default=4)
    p.add_argument("program", nargs="+")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main(args))
    except ImportError:
        result = asyncio.run(main(args))
    print(json.dumps(result))
