"""Load generators as commands: wrk (HTTP/1.1, saturating), h2load (gRPC over h2c, or HTTP/1.1
at a fixed rate with --rps), and the direct memcached client. Each yields a `Measure`.

A `LoadCommand` is built first and run after, so two of them can run at once (the mixed
scenario) through the same code that runs one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from .direct_memcached import percentile
from .procs import ROOT, BenchError

HERE = Path(__file__).resolve().parent
_FINISHED = re.compile(r"finished in ([0-9.]+)(ms|s)")


@dataclass(frozen=True)
class Measure:
    """One load run: requests that succeeded, over the measured seconds, and their latency."""

    tool: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_seconds: float | None = None  # of the server under test, over this run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def vcpu_per_krps(self) -> float | None:
        """CPU seconds per 1000 requests: the share of one CPU that 1000 req/s keep busy."""
        if self.cpu_seconds is None or self.requests == 0:
            return None
        return self.cpu_seconds * 1000 / self.requests

    def as_dict(self) -> dict[str, Any]:
        v = self.vcpu_per_krps
        return {**asdict(self), "rps": round(self.rps, 1), "vcpu_per_krps": None if v is None else round(v, 4)}


def median_of(runs: Sequence[Measure]) -> Measure:
    """The median of each figure over repeated runs (each figure on its own)."""
    return Measure(
        tool=runs[0].tool,
        requests=int(median(r.requests for r in runs)),
        errors=sum(r.errors for r in runs),
        seconds=median(r.seconds for r in runs),
        p50_ms=median(r.p50_ms for r in runs),
        p90_ms=median(r.p90_ms for r in runs),
        p99_ms=median(r.p99_ms for r in runs),
        cpu_seconds=None if any(r.cpu_seconds is None for r in runs) else median(r.cpu_seconds or 0.0 for r in runs),
    )


@dataclass
class LoadCommand:
    name: str
    argv: list[str]
    parse: Callable[[str], Measure]
    timeout: float


def run_together(cmds: Sequence[LoadCommand]) -> list[Measure]:
    """Start every command, wait for all; a command that fails or hangs is an error."""
    procs = [subprocess.Popen(c.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) for c in cmds]
    outs: list[tuple[str, str]] = []
    try:
        for c, p in zip(cmds, procs, strict=True):
            try:
                out, err = p.communicate(timeout=c.timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{c.name} did not finish within {c.timeout:.0f}s") from None
            if p.returncode != 0:
                raise BenchError(f"{c.name} exited {p.returncode}: {err.decode(errors='replace')[-800:]}")
            outs.append((out.decode(errors="replace"), err.decode(errors="replace")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [c.parse(out) for c, (out, _) in zip(cmds, outs, strict=True)]


def run_one(cmd: LoadCommand) -> Measure:
    return run_together([cmd])[0]


# -- wrk ----------------------------------------------------------------------------------------
def wrk(url: str, duration: int, connections: int = 32, threads: int = 1, post: Path | None = None,
        content_type: str = "application/json") -> LoadCommand:
    """`post`: a file whose bytes every request POSTs (wrk_report.lua reads it once)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
            "-s", str(HERE / "wrk_report.lua"), url]
    if post is not None:
        argv += ["--", str(post), content_type]
    return LoadCommand("wrk", argv, parse_wrk, duration + 30)


def parse_wrk(out: str) -> Measure:
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON "):])
            errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
            return Measure("wrk", d["requests"] - d["status"], errors, d["duration_us"] / 1e6,
                           d["p50_us"] / 1e3, d["p90_us"] / 1e3, d["p99_us"] / 1e3)
    raise BenchError(f"wrk printed no report (is wrk built with Lua?):\n{out[-800:]}")


# -- h2load -------------------------------------------------------------------------------------
def h2load(url: str, duration: float, log_file: Path, *, clients: int, streams: int = 1,
           data: Path | None = None, headers: Sequence[str] = (), h1: bool = False,
           rps_per_client: float | None = None, body_bytes: int | None = None) -> LoadCommand:
    """h2load with a per-request log: it prints no percentiles, the log has every latency.

    `body_bytes`: the exact size of a correct response body. A gRPC error is an HTTP 200 with
    no body (the status is in the trailers), so h2load counts it a success; the body bytes it
    received, divided by this size, say how many calls really answered a message."""
    log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    argv = ["h2load", f"-c{clients}", f"-m{streams}", f"-D{int(duration * 1000)}ms", f"--log-file={log_file}"]
    if h1:
        argv.append("--h1")
    if rps_per_client is not None:
        argv.append(f"--rps={rps_per_client:g}")
    if data is not None:
        argv += ["-d", str(data)]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    return LoadCommand("h2load", argv, lambda out: parse_h2load(out, log_file, body_bytes), duration + 30)


_DATA = re.compile(r"\((\d+)\) data")


def parse_h2load(out: str, log_file: Path, body_bytes: int | None = None) -> Measure:
    m = _FINISHED.search(out)
    if m is None:
        raise BenchError(f"h2load printed no result:\n{out[-800:]}")
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    ok: list[int] = []
    errors = 0
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            ok.append(int(parts[2]))
        else:
            errors += 1
    ok.sort()
    succeeded = re.search(r"(\d+) succeeded", out)
    if succeeded is not None and int(succeeded.group(1)) != len(ok):
        # a 2xx other than 200, or a log that lost lines: either way the figures are not trusted
        errors += abs(int(succeeded.group(1)) - len(ok))
    data = _DATA.search(out)
    if body_bytes is not None and succeeded is not None:
        if data is None:
            raise BenchError(f"h2load printed no traffic line:\n{out[-800:]}")
        n, got = int(succeeded.group(1)), int(data.group(1))
        if got != n * body_bytes:
            errors += max(1, n - got // body_bytes)
    return Measure("h2load", len(ok), errors, seconds, percentile(ok, 50) / 1e3, percentile(ok, 90) / 1e3,
                   percentile(ok, 99) / 1e3)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


# -- the direct client ----------------------------------------------------------------------------
def direct(port: int, key: str, value_len: int, flags: int, duration: float, *,
           conns: int = 4, depth: int = 8, rate: float | None = None) -> LoadCommand:
    argv = [sys.executable, str(HERE / "direct_memcached.py"), "--port", str(port), "--key", key,
            "--value-len", str(value_len), "--flags", str(flags), "--duration", str(duration),
            "--conns", str(conns), "--depth", str(depth)]
    if rate is not None:
        argv += ["--rate", str(rate)]
    return LoadCommand("direct", argv, parse_direct, duration + 30)


def direct_stdio(line: str, program: Sequence[str], children: int, duration: float) -> LoadCommand:
    argv = [sys.executable, str(HERE / "direct_stdio.py"), "--line", line, "--children", str(children),
            "--duration", str(duration), "--", *program]
    return LoadCommand("direct-stdio", argv, parse_direct, duration + 30)


def parse_direct(out: str) -> Measure:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"direct client printed no result:\n{out[-800:]}")
    d = json.loads(lines[-1])
    return Measure("python-asyncio", d["requests"], d["errors"], d["seconds"], d["p50_us"] / 1e3,
                   d["p90_us"] / 1e3, d["p99_us"] / 1e3)


def settle(seconds: float = 0.3) -> None:
    """A short pause between runs so one run's tail does not load the next one's start."""
    time.sleep(seconds)
