"""`make bench`: run the scenarios, print the table and the targets, save the results.

    python benchmarks/run.py [--only json-line,grpc-line] [--duration S] [--repeat N]
                             [--warmup S] [--out DIR] [--strict] [--list]

Settings also come from the environment (flags win): BENCH_DURATION (seconds per run,
default 5), BENCH_REPEAT (A B pairs, default 2), BENCH_WARMUP (default 1), BENCH_RATE
(fixed-rate scenario, default 1000 req/s), BENCH_ONLY, BENCH_OUT (default benchmarks/results).
Exit status: 0 when every scenario ran (targets missed or not; --strict makes a MISS 1 too),
1 when a scenario failed, 2 on bad usage or missing load generators.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.bench import Bench, Settings  # noqa: E402
from benchmarks.procs import BenchError, install_hint, missing_tools  # noqa: E402
from benchmarks.scenarios import SCENARIOS  # noqa: E402


class UsageError(ValueError):
    pass


def _positive_int(name: str, text: str, minimum: int = 1) -> int:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {text!r}") from None
    if v != v or v < 0 or v > 3600:
        raise UsageError(f"{name} must be between 0 and 3600, got {text!r}")
    return max(minimum, math.ceil(v))


def parse(argv: list[str] | None, environ: dict[str, str]) -> tuple[Settings, list[str], argparse.Namespace]:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description="adaptercar benchmarks (make bench)")
    p.add_argument("--only", default=environ.get("BENCH_ONLY", ""),
                   help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})")
    p.add_argument("--duration", default=environ.get("BENCH_DURATION", "5"),
                   help="seconds per run; whole seconds, at least 1 (wrk's resolution)")
    p.add_argument("--repeat", default=environ.get("BENCH_REPEAT", "2"), help="A B pairs per scenario")
    p.add_argument("--warmup", default=environ.get("BENCH_WARMUP", "1"), help="seconds of unmeasured load first")
    p.add_argument("--rate", default=environ.get("BENCH_RATE", "1000"), help="req/s of the fixed-rate scenario")
    p.add_argument("--out", default=environ.get("BENCH_OUT", str(ROOT / "benchmarks" / "results")))
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = p.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    settings = Settings(duration=_positive_int("--duration/BENCH_DURATION", a.duration),
                        repeat=_positive_int("--repeat/BENCH_REPEAT", a.repeat),
                        warmup=_positive_int("--warmup/BENCH_WARMUP", a.warmup, minimum=0),
                        rate=_positive_int("--rate/BENCH_RATE", a.rate, minimum=10),
                        out=Path(a.out))
    return settings, only, a


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops every process


def main(argv: list[str] | None = None) -> int:
    try:
        settings, only, args = parse(argv, dict(os.environ))
    except UsageError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if args.list:
        for name, (title, _) in SCENARIOS.items():
            print(f"{name:12}  {title}")
        return 0
    missing = missing_tools()
    if missing:
        print(f"bench: {install_hint(missing)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.now(UTC)
    host = report.machine()
    workdir = Path(tempfile.mkdtemp(prefix="adaptercar-bench-"))
    print(f"bench: {', '.join(only)}; {settings.duration}s per run, {settings.repeat} × A B, "
          f"{settings.warmup}s warm-up; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    b = Bench(settings, workdir)
    try:
        for name in only:
            title, fn = SCENARIOS[name]
            print(f"== {name}: {title}", flush=True)
            t0 = time.monotonic()
            try:
                fn(b)
            except BenchError as e:
                b.errors.append(f"{name}: {e}")
                print(f"bench: {name} failed: {e}", file=sys.stderr, flush=True)
            print(f"   ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        b.stop()
    print()
    print(report.table(b.rows))
    if b.checks:
        print()
        print(report.checks_text(b.checks))
    doc = report.document(settings, b.rows, b.checks, b.errors, started, only, host)
    paths = report.write(settings.out, doc, b.rows)
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    if b.errors:
        print(f"bench: {len(b.errors)} scenario(s) failed; server logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    if args.strict and not all(c.passed for c in b.checks):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
