"""Where the time goes: py-spy profiles of the sidecar's workers and of the floors, under the
benchmark's own saturating loads.

    python benchmarks/profile.py [--only json,grpc,json-floor,grpc-floor] [--duration 8]
                                 [--out benchmarks/profiles]

Starts memcached, the sidecar and the floors exactly as `make bench` does, then for one
subject at a time runs its load and records the process that serves it (the JSON or gRPC
worker, not the supervisor) with `py-spy record --nonblocking` (the subject is never paused):
`<subject>.svg`, a flamegraph, and `<subject>.txt`, the collapsed stacks of a second run,
summarised in `<subject>.summary.txt` as microseconds per request (samples × sampling period
÷ requests served meanwhile), per function, inclusive. Compare a worker with its floor to see
what adaptercar adds. Needs py-spy (`.venv/bin/py-spy`).

Read the figures as shares, not absolutes: sampling without pausing misses some frames, and
the load generator shares the machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402
from benchmarks.bench import Bench, Settings  # noqa: E402
from benchmarks.procs import BenchError, process_tree  # noqa: E402

RATE = 250  # samples per second
SUBJECTS = ("json", "grpc", "json-floor", "grpc-floor")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pid(root: int, role: str) -> int:
    """The sidecar's worker process for `role` (http or grpc)."""
    for pid in process_tree(root)[1:]:
        if f"--role {role}" in _cmdline(pid):
            return pid
    raise BenchError(f"no {role} worker under pid {root}")


def record(py_spy: str, pid: int, seconds: int, fmt: str, out: Path,
           run_load: Callable[[int], load.Measure]) -> load.Measure:
    """py-spy on `pid` for `seconds` while the load runs a little longer on both sides."""
    extra = ["--threads"] if fmt == "raw" else []
    spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", str(RATE),
                            "--nonblocking", *extra, "-f", fmt, "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        measure = run_load(seconds + 2)
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed on pid {pid}: {err.decode(errors='replace')[-400:]}")
    return measure


def summarise(raw: Path, rps: float, seconds: int, top: int = 45) -> str:
    """Inclusive µs per request of each function on the main thread (the event loop, where
    every call is served; grpc's poller thread is left out)."""
    per_sample_us = 1e6 / RATE / (rps * seconds)
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit() or not stack.startswith("thread") \
                or "MainThread" not in stack.split(";", 1)[0]:
            continue
        n = int(n_text)
        total += n
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]}
        for f in frames:
            inclusive[re.sub(r"\(/\S*?/(site-packages|main)/", "(", f)] += n
    lines = [f"{rps:,.0f} req/s; main thread: {total} samples in {seconds} s = "
             f"{total * per_sample_us:.1f} µs per request",
             "µs/request (inclusive)  function"]
    lines += [f"{n * per_sample_us:10.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SUBJECTS))
    p.add_argument("--duration", type=int, default=8, help="seconds recorded per profile")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "profiles"))
    p.add_argument("--rate", type=int, default=0,
                   help="profile at this fixed rate (the fixed-rate scenario's load: where CPU per "
                        "request is measured) instead of saturating; files get a -rate suffix")
    args = p.parse_args()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SUBJECTS))
    if unknown:
        print(f"profile.py: unknown subjects {unknown} (known: {', '.join(SUBJECTS)})", file=sys.stderr)
        return 2
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("profile.py: py-spy is not installed (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adaptercar-profile-") as tmp:
        bench = Bench(Settings(duration=args.duration, rate=args.rate or 1000), Path(tmp))
        suffix = "-rate" if args.rate else ""
        try:
            for subject in wanted:
                if subject == "json":
                    sc = bench.sidecar()
                    pid, port = worker_pid(sc.started.pid, "http"), sc.http
                elif subject == "grpc":
                    sc = bench.sidecar()
                    pid, port = worker_pid(sc.started.pid, "grpc"), sc.grpc
                elif subject == "json-floor":
                    started, port = bench.twisted_floor()
                    pid = started.pid
                else:
                    started, port = bench.grpc_floor()
                    pid = started.pid

                def run_load(seconds: int, subject: str = subject, port: int = port) -> load.Measure:
                    json = subject.startswith("json")
                    if args.rate:
                        cmd = bench.json_at_rate(port, seconds) if json else bench.grpc_at_rate(port, seconds)
                    else:
                        cmd = bench.json_load(port, seconds) if json else bench.grpc_load(port, seconds)
                    return load.run_one(cmd)

                run_load(2)  # warm up
                name = subject + suffix
                record(py_spy, pid, args.duration, "flamegraph", out / f"{name}.svg", run_load)
                raw = out / f"{name}.txt"
                m = record(py_spy, pid, args.duration, "raw", raw, run_load)
                (out / f"{name}.summary.txt").write_text(summarise(raw, m.rps, args.duration))
                print(f"{name}: {m.rps:,.0f} req/s -> {out / name}.svg, .summary.txt", flush=True)
                time.sleep(1)
        finally:
            bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
