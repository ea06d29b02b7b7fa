"""Where the ambassador's time goes: py-spy on its worker under the scenario's saturating load.

    python benchmarks/ambassador/profile.py [--name ambassador] [--duration 8]

Starts the upstreams, the DNS server and the sidecar as `benchmarks/run.py --only ambassador`
does, runs `wrk -t1 -c32` on the route and records the ambassador worker with py-spy
(`benchmarks/profile.py`'s `record`/`summarise`): `benchmarks/profiles/<name>.svg` and
`<name>.summary.txt` (µs per request, per function, inclusive). HAProxy is measured right
after on the same setup, so the summary's first line carries the ratio of that moment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402
from benchmarks.bench import Bench, Settings  # noqa: E402
from benchmarks.profile import record, summarise, worker_pid  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="ambassador")
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "profiles"))
    args = p.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adaptercar-ambprofile-") as tmp:
        bench = Bench(Settings(duration=args.duration), Path(tmp))
        try:
            port = bench.ambassador()
            pid = worker_pid(bench.ambassador_sidecar().started.pid, "ambassador")
            _, hport = bench.haproxy()

            def run_load(seconds: int) -> load.Measure:
                return load.run_one(bench.http_load(port, seconds))

            run_load(2)
            record(py_spy, pid, args.duration, "flamegraph", out / f"{args.name}.svg", run_load)
            raw = out / f"{args.name}.txt"
            m = record(py_spy, pid, args.duration, "raw", raw, run_load)
            plain = run_load(args.duration)  # without the profiler attached
            ha = load.run_one(bench.http_load(hport, args.duration))
            head = (f"ambassador {plain.rps:,.0f} req/s unprofiled (p99 {plain.p99_ms:.2f} ms), "
                    f"HAProxy {ha.rps:,.0f} req/s (p99 {ha.p99_ms:.2f} ms): "
                    f"{plain.rps / ha.rps:.2f} x; load average {os.getloadavg()[0]:.2f}\n")
            (out / f"{args.name}.summary.txt").write_text(
                head + summarise(raw, m.rps, args.duration))
            print(head, end="")
        finally:
            bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
