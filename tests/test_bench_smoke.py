"""`make bench` cannot rot: run the real harness with one-second runs and check what it wrote.

The numbers are not judged here (a loaded CI machine says nothing about performance); what is
checked is that every scenario ran against real servers, produced figures, wrote the JSON, the
SVG and a history line, and stopped every process it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"
DEBS = {"wrk": "wrk", "h2load": "nghttp2-client", "nghttp": "nghttp2-client", "memcached": "memcached",
        "nginx": "nginx", "haproxy": "haproxy"}
SCENARIOS = {"json-line", "grpc-line", "mixed", "fixed-rate", "idle-memory", "soap", "grpc-stdio",
             "ambassador"}


def _require_tools() -> None:
    missing = [t for t in DEBS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"benchmark tools missing ({', '.join(missing)}): "
                    f"sudo apt-get install -y {' '.join(sorted({DEBS[t] for t in missing}))}")


def _alive_with(tag: str) -> list[int]:
    """Pids of live processes whose environment holds `tag` (every child inherits it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if tag.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat[stat.rindex(")") + 2] != "Z":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.timeout(360)  # every scenario, one 1-second run per subject, servers started once
def test_every_scenario_runs_and_writes_results(tmp_path: Path) -> None:
    _require_tools()
    tag = f"BENCH_SMOKE_TAG={uuid.uuid4().hex}"
    t0 = time.monotonic()
    p = _bench("--repeat", "1", "--warmup", "0", "--out", str(tmp_path),
               env={"BENCH_DURATION": "0.5", tag.split("=")[0]: tag.split("=")[1]}, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert time.monotonic() - t0 < 240

    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["errors"] == []
    assert doc["settings"]["duration_s"] == 1  # 0.5 is rounded up to wrk's whole second
    by = {(r["scenario"], r["subject"]): r for r in doc["rows"]}
    assert {s for s, _ in by} == SCENARIOS
    for (scenario, subject), row in by.items():
        if scenario == "idle-memory":
            assert 5 < row["extra"]["pss_mib"] < 2000, row
            assert 5 < row["extra"]["pss_alone_mib"] < 2000, row
            continue
        m = row["measure"]
        assert m["requests"] > 0 and m["errors"] == 0, (subject, m)
        assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"], (subject, m)
    sidecar = [r for r in doc["rows"] if r["subject"].startswith("adaptercar") and r["baseline"]]
    assert sidecar and all(r["ratio"] > 0 for r in sidecar)
    fixed = [r for r in doc["rows"] if r["scenario"] == "fixed-rate" and "vcpu_per_krps" in r["extra"]]
    assert len(fixed) == 4 and all(r["extra"]["vcpu_per_krps"] > 0 for r in fixed)
    targets = {c["target"] for c in doc["checks"]}
    assert len(targets) == 16 and any("0.8 × Twisted floor" in t for t in targets)
    assert sum("added latency" in t and "(vs direct)" in t for t in targets) == 4
    mixed = {r["subject"]: r for r in doc["rows"] if r["scenario"] == "mixed"}
    at_rate = [r for r in mixed.values() if "with the other front @" in r["subject"]]
    assert len(mixed) == 6 and len(at_rate) == 2
    for r in at_rate:  # judged against the same front alone at the same rate, from this run
        assert r["baseline"] in mixed and r["extra"]["p99_vs_alone"] > 0
    assert sum(" ≤ 2 × alone" in t for t in targets) == 2
    soap = by[("soap", "adaptercar, JSON → SOAP (wrk -c32)")]
    assert soap["baseline"].startswith("FastAPI + zeep") and soap["extra"]["cpu_ms_per_call"] > 0
    assert {s for sc, s in by if sc == "soap"} >= {"direct: canned SOAP reply (nginx, wrk -c32 POST)",
                                                  "floor: twisted.web + Agent, envelope template, lxml",
                                                  "FastAPI + zeep AsyncClient (uvicorn)"}
    stdio = [r for r in doc["rows"] if r["scenario"] == "grpc-stdio"]
    assert len(stdio) == 3 and stdio[0]["baseline"] == stdio[1]["subject"].strip()
    assert stdio[0]["extra"]["cpu_ms_per_call"] > 0
    amb = {r["subject"]: r for r in doc["rows"] if r["scenario"] == "ambassador"}
    assert len(amb) == 6 and amb["adaptercar ambassador, SRV discovery (wrk -c32)"]["baseline"].startswith("HAProxy")
    assert all(r["extra"]["vcpu_per_krps"] > 0 for r in amb.values() if "vcpu_per_krps" in r["extra"])

    svg = ET.parse(tmp_path / "latest.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall("{http://www.w3.org/2000/svg}rect")) > 10
    assert "| json-line |" in (tmp_path / "latest.md").read_text()
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["checks"]
    assert "PASS" in p.stdout or "MISS" in p.stdout
    assert _alive_with(tag) == [], "the harness left processes running"


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--only", "json-line,nope"], {}, "unknown scenario(s) nope"),
    ([], {"BENCH_DURATION": "fast"}, "BENCH_DURATION must be a number"),
    (["--repeat", "-1"], {}, "--repeat/BENCH_REPEAT must be between"),
])
def test_bad_settings_are_refused_clearly(args: list[str], env: dict[str, str], message: str,
                                          tmp_path: Path) -> None:
    p = _bench(*args, "--out", str(tmp_path), env=env, timeout=30)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "latest.json").exists()


def test_grpc_errors_under_load_are_not_counted_as_throughput(tmp_path: Path) -> None:
    """h2load calls any HTTP 200 a success, and a gRPC error is an HTTP 200: the harness must
    still see that the calls failed (here: NOT_FOUND for a key memcached does not have)."""
    _require_tools()
    from benchmarks import load
    from benchmarks.bench import GRPC_PATH, Bench, Settings, _kv_messages

    b = Bench(Settings(duration=1, repeat=1, warmup=0, out=tmp_path), tmp_path)
    try:
        _, port = b.grpc_floor()
        missing = tmp_path / "missing.grpc"
        missing.write_bytes(load.grpc_frame(_kv_messages().GetRequest(key="absent").SerializeToString()))
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
        runs = {}
        for name, request in (("hit", b.grpc_request), ("miss", missing)):
            runs[name] = load.run_one(load.h2load(url, 1, tmp_path / f"{name}.log", clients=1, streams=4,
                                                  data=request, headers=load.GRPC_HEADERS,
                                                  body_bytes=b.grpc_reply_bytes))
    finally:
        b.stop()
    assert runs["hit"].requests > 0 and runs["hit"].errors == 0
    assert runs["miss"].errors >= runs["miss"].requests > 0
