"""A burst of 10× a backend's capacity, over gRPC and JSON at once, against the real sidecar
(supervisor + workers) and the real ledger fixture's SLOW command.

Health checks keep answering fast, excess calls are shed fast with RESOURCE_EXHAUSTED / 429,
every call gets an answer, and the sidecar's RSS stays bounded. The figures are printed.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adaptercar.protos import compile_protos
from tests.harness import Ledger, ledger_backend

CAPACITY = 3  # max_concurrency per worker
QUEUE = 6
SLOW_MS = 300
BURST = 10 * CAPACITY  # concurrent callers per front
SECONDS = 3.0

PROTO = """\
syntax = "proto3";
package burst.v1;
import "google/api/annotations.proto";

service Burst {
  rpc Slow(SlowRequest) returns (SlowReply) {
    option (google.api.http) = {post: "/v1/slow" body: "*"};
  }
}
message SlowRequest { int32 ms = 1; }
message SlowReply { string status = 1; }
"""

MAPPING = """\
service: burst.v1.Burst
backend: ledger
methods:
  Slow:
    request: "SLOW {ms} PING"
    response:
      - match: '^PONG$'
        fields: {status: "pong"}
"""


def _write_service(tmp: Path) -> tuple[Path, Path]:
    protos = tmp / "protos"
    protos.mkdir()
    (protos / "burst.proto").write_text(PROTO)
    mapping = tmp / "burst.yaml"
    mapping.write_text(MAPPING)
    return protos, mapping


def _tree_rss_kib(pid: int) -> int:
    """VmRSS of a process and all its descendants, from /proc."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _load(kind: str, port: int, seconds: float) -> list[tuple[str, float]]:
    """BURST callers looping for `seconds` (in a child process); each call's outcome and time."""
    lock = threading.Lock()
    results: list[tuple[str, float]] = []
    stop_at = time.monotonic() + seconds

    def grpc_caller(stub: Any) -> None:
        request = b"\x08" + _varint(SLOW_MS)  # burst.v1.SlowRequest{ms: SLOW_MS}
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                stub(request, timeout=10)
                outcome = "OK"
            except grpc.RpcError as e:
                outcome = e.code().name
            except Exception as e:  # noqa: BLE001 - every call must get an answer
                outcome = f"error {e!r}"
            with lock:
                results.append((outcome, time.monotonic() - t0))

    def http_caller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"ms": SLOW_MS})
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v1/slow", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                payload = json.loads(r.read())
                outcome = str(r.status)
                if r.status == 429 and payload.get("code") != 8:
                    outcome = f"429 with {payload}"
            except Exception as e:  # noqa: BLE001 - every call must get an answer
                outcome = f"error {e!r}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            with lock:
                results.append((outcome, time.monotonic() - t0))
        conn.close()

    channel = None
    if kind == "grpc":
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = channel.unary_unary("/burst.v1.Burst/Slow")
        threads = [threading.Thread(target=grpc_caller, args=(stub,)) for _ in range(BURST)]
    else:
        threads = [threading.Thread(target=http_caller) for _ in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if channel is not None:
        channel.close()
    if any(t.is_alive() for t in threads):
        results.append(("error: a caller hung", 60.0))
    return results


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def test_burst_of_ten_times_capacity_is_shed_fast_and_health_keeps_answering(
        tmp_path: Path, ledger: Ledger, sidecars: Any) -> None:
    protos, mapping = _write_service(tmp_path)
    backend = ledger_backend(ledger.address, pool={"size": CAPACITY}, timeout="2s",
                             max_concurrency=CAPACITY, queue=QUEUE)
    sc = sidecars({
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(protos)], "mappings": [str(mapping)],
        "log": {"level": "warning"},
        "backends": {"ledger": backend},
        "shutdown": {"drain_timeout": "5s"},
    })
    assert sc.proc is not None
    pid = sc.proc.pid
    ps = compile_protos([protos])
    md = ps.services()["burst.v1.Burst"].methods_by_name["Slow"]
    req_cls, resp_cls = ps.message_class(md.input_type), ps.message_class(md.output_type)
    channel = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}")
    stub = channel.unary_unary("/burst.v1.Burst/Slow", request_serializer=req_cls.SerializeToString,
                               response_deserializer=resp_cls.FromString)
    health = health_pb2_grpc.HealthStub(channel)
    # warm up: one call each way, so the service-time average is known and connections exist
    assert stub(req_cls(ms=SLOW_MS), timeout=5).status == "pong"
    assert sc.http("POST", "/v1/slow", {"ms": SLOW_MS})[0] == 200
    time.sleep(1.0)
    rss_before = _tree_rss_kib(pid)

    health_ms: dict[str, list[float]] = {"healthz": [], "readyz": [], "grpc_health": []}
    errors: list[str] = []
    rss_peak = [rss_before]
    # The callers run in two other processes: their threads' fight for a GIL must not count
    # against the health checks measured here.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        loads = [pool.apply_async(_load, ("grpc", sc.ports["grpc"], SECONDS)),
                 pool.apply_async(_load, ("http", sc.ports["http"], SECONDS))]
        stop_at = time.monotonic() + SECONDS + 5.0  # spawning takes a moment: watch on
        admin = http.client.HTTPConnection("127.0.0.1", sc.ports["admin"], timeout=5)
        while time.monotonic() < stop_at and not all(r.ready() for r in loads):
            for path in ("/healthz", "/readyz"):
                t0 = time.monotonic()
                try:
                    admin.request("GET", path)
                    r = admin.getresponse()
                    r.read()
                    if r.status != 200:
                        errors.append(f"{path}: {r.status}")
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{path}: {e!r}")
                    admin.close()
                    admin = http.client.HTTPConnection("127.0.0.1", sc.ports["admin"], timeout=5)
                health_ms[path[1:]].append((time.monotonic() - t0) * 1000)
            t0 = time.monotonic()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                if status != health_pb2.HealthCheckResponse.SERVING:
                    errors.append(f"grpc health: {status}")
            except grpc.RpcError as e:
                errors.append(f"grpc health: {e.code()}")
            health_ms["grpc_health"].append((time.monotonic() - t0) * 1000)
            rss_peak[0] = max(rss_peak[0], _tree_rss_kib(pid))
            time.sleep(0.1)
        admin.close()
        results = {"grpc": loads[0].get(timeout=60), "http": loads[1].get(timeout=60)}
    time.sleep(1.0)
    rss_after = _tree_rss_kib(pid)
    channel.close()

    g, h = results["grpc"], results["http"]
    g_ok = [d for o, d in g if o == "OK"]
    g_shed = [d for o, d in g if o == "RESOURCE_EXHAUSTED"]
    h_ok = [d for o, d in h if o == "200"]
    h_shed = [d for o, d in h if o == "429"]
    other = [o for o, _ in g + h if o not in ("OK", "RESOURCE_EXHAUSTED", "200", "429")]
    figures = {
        "grpc": {"calls": len(g), "ok": len(g_ok), "shed": len(g_shed),
                 "p99_shed_ms": round(_p99(g_shed) * 1000, 1), "p99_ok_ms": round(_p99(g_ok) * 1000, 1)},
        "http": {"calls": len(h), "ok": len(h_ok), "shed": len(h_shed),
                 "p99_shed_ms": round(_p99(h_shed) * 1000, 1), "p99_ok_ms": round(_p99(h_ok) * 1000, 1)},
        "other_outcomes": sorted(set(other)),
        "health_max_ms": {k: round(max(v), 1) for k, v in health_ms.items() if v},
        "health_checks": {k: len(v) for k, v in health_ms.items()},
        "rss_mib": {"before": round(rss_before / 1024, 1), "peak": round(rss_peak[0] / 1024, 1),
                    "after": round(rss_after / 1024, 1)},
    }
    print("\nburst figures:", json.dumps(figures, indent=1))
    assert not errors, errors[:5]
    # every call got an answer: served, or shed; nothing else (no timeouts, no resets)
    assert not other, other[:5]
    for front in (figures["grpc"], figures["http"]):
        assert front["ok"] >= 2 and front["shed"] > front["ok"], figures
        assert front["p99_shed_ms"] < 1000, figures  # shed fast, not after a wait
    # health kept answering fast all along (generous bound: 2 cores shared with the callers)
    assert all(v < 1000 for v in figures["health_max_ms"].values()), figures
    assert all(n >= 5 for n in figures["health_checks"].values()), figures
    # memory bounded: a burst may not grow the sidecar by more than a few dozen MiB
    assert rss_peak[0] - rss_before < 64 * 1024, figures
    shed_metric = sc.metric_value("adaptercar_backend_shed_total", backend="ledger")
    assert shed_metric >= len(g_shed) + len(h_shed), (shed_metric, figures)
