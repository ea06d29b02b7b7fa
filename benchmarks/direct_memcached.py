"""The "direct" baseline: memcached called with no sidecar in between.

Debian has no memcached load generator with latency percentiles (memtier-benchmark is not
packaged), so this is a small pipelined asyncio client on uvloop. It is Python, so at
saturation it, not memcached, is the limit: its figures show that the backend has headroom,
not what memcached can do. Every reply is compared byte for byte with the expected one.

    python benchmarks/direct_memcached.py --port P --key K --value-len N --flags F \
        --duration S [--conns 4 --depth 8 | --rate 1000]

With --rate it is the fixed-rate scenario's "direct": the request the sidecar sends for the
benchmark's call (`get bench`), at the rate each front gets, on one connection, each latency
from the request's write to its whole reply.

prints one JSON line: requests, errors, seconds, p50_us, p90_us, p99_us.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from typing import Any


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[k])


class Conn(asyncio.Protocol):
    def __init__(self, run: Run) -> None:
        self.run = run
        self.sent: deque[int] = deque()
        self.buf = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, n: int = 1) -> None:
        now = time.perf_counter_ns()
        self.sent.extend([now] * n)
        self.transport.write(self.run.request * n)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        want, size, i, done = self.run.reply, len(self.run.reply), 0, 0
        now = time.perf_counter_ns()
        while len(buf) - i >= size:
            if buf[i:i + size] != want:
                self.run.fail(f"unexpected reply {buf[i:i + size]!r}")
                return
            self.run.record(now - self.sent.popleft())
            i += size
            done += 1
        self.buf = buf[i:]
        if done and self.run.closed_loop and self.run.sending:
            self.send(done)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.sending:
            self.run.fail(f"memcached closed the connection: {exc}")


class Run:
    def __init__(self, key: str, value_len: int, flags: int, closed_loop: bool) -> None:
        self.request = f"get {key}\r\n".encode()
        self.reply = f"VALUE {key} {flags} {value_len}\r\n".encode() + b"v" * value_len + b"\r\nEND\r\n"
        self.closed_loop = closed_loop
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
    run = Run(a.key, a.value_len, a.flags, closed_loop=a.rate is None)
    conns: list[Conn] = []
    for _ in range(a.conns):
        _, c = await loop.create_connection(lambda: Conn(run), "127.0.0.1", a.port)
        conns.append(c)
    start = time.monotonic()
    if a.rate is None:
        for c in conns:
            c.send(a.depth)
        await asyncio.sleep(a.duration)
    else:
        # Paced as h2load --rps paces the sidecar's load: request k is due at start + k/rate,
        # and between requests the loop sleeps in epoll until the next one is due (a shorter
        # sleep, such as 0.5 ms, rounds to 0 on uvloop's millisecond timers: a busy loop whose
        # always-awake client answers faster than any sleeping one, and takes a CPU).
        sent, i = 0, 0
        while (elapsed := time.monotonic() - start) < a.duration and run.sending:
            due = int(elapsed * a.rate) + 1 - sent
            for _ in range(due):
                conns[i % len(conns)].send()
                i += 1
            sent += max(due, 0)
            await asyncio.sleep(max(0.0, start + sent / a.rate - time.monotonic()))
    seconds = time.monotonic() - start
    run.sending = False
    for c in conns:
        c.transport.close()
    lat = sorted(run.latencies)
    if run.error:
        print(f"direct_memcached: {run.error}", file=sys.stderr)
    return {"requests": len(lat), "errors": 1 if run.error else 0, "seconds": seconds,
            "p50_us": percentile(lat, 50) / 1e3, "p90_us": percentile(lat, 90) / 1e3,
            "p99_us": percentile(lat, 99) / 1e3}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--value-len", type=int, required=True)
    p.add_argument("--flags", type=int, default=0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--depth", type=int, default=8, help="requests in flight per connection")
    p.add_argument("--rate", type=float, default=None, help="fixed total rate (req/s) instead of saturating")
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main(args))
    except ImportError:
        result = asyncio.run(main(args))
    print(json.dumps(result))
