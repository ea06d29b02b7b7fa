"""Reload under continuous load: no call fails because of a reload (issue: production readiness)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.harness import ROOT, Ledger, demo_like_config

MAPPING = (ROOT / "mappings" / "ledger.yaml").read_text()


def _mapping(status: str) -> str:
    """The ledger mapping with Ping answering `status` (a visible change per reload)."""
    out = MAPPING.replace("fields: {status: PONG}", f"fields: {{status: {status}}}")
    out = out.replace("expect: {status: PONG}", f"expect: {{status: {status}}}")
    assert out != MAPPING
    return out


def test_reloads_under_load_fail_no_call(ledger: Ledger, sidecars: Any, tmp_path: Path) -> None:
    mapping = tmp_path / "ledger.yaml"
    mapping.write_text(_mapping("GEN1"))
    cfg = demo_like_config(ledger.address)
    cfg["mappings"] = [str(mapping)]
    sc = sidecars(cfg)
    client = sc.grpc_client()
    stop = threading.Event()
    failures: list[str] = []
    counts = {"calls": 0}
    spans: list[tuple[float, float]] = []  # (start, end) of every call

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.monotonic()
            try:
                if i % 2:
                    status, body, _ = sc.http("GET", "/v1/accounts/1001/balance")
                    if status != 200 or body.get("currency") != "EUR":
                        failures.append(f"http {status} {body}")
                else:
                    reply = client.call("ledger.v1.Ledger.GetBalance", account_id="1001", timeout=10)
                    if reply.currency != "EUR":
                        failures.append(f"grpc {reply}")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                failures.append(f"{type(e).__name__}: {e}")
            spans.append((t0, time.monotonic()))
            counts["calls"] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    reloads: list[tuple[float, float]] = []  # (request sent, answer received) of each reload

    def reload() -> tuple[int, Any]:
        t0 = time.monotonic()
        answer = sc.admin("/reload", method="POST")
        reloads.append((t0, time.monotonic()))
        return answer

    try:
        seen = []
        for gen in ("GEN2", "BROKEN", "GEN3", "GEN4", "GEN5"):
            time.sleep(0.8)
            if gen == "BROKEN":
                mapping.write_text(_mapping("GEN2").replace("response:", "respnose:", 1))
                status, body = reload()
                assert status == 400 and not body["ok"], body
                assert any("respnose" in e for e in body["errors"]), body
                mapping.write_text(_mapping("GEN2"))
                continue
            mapping.write_text(_mapping(gen))
            status, body = reload()
            assert status == 200 and body["ok"], body
            # the new mapping answers on both fronts right after the reload returned
            s, ping, _ = sc.http("GET", "/v1/ping")
            assert (s, ping) == (200, {"status": gen})
            assert client.call("ledger.v1.Ledger.Ping").status == gen
            seen.append(gen)
        # go on to 2,000 calls in all, and a good few after the last reload
        end = time.monotonic() + 60
        while (counts["calls"] < 2000 or sum(1 for _, t in spans if t > reloads[-1][1]) < 200) \
                and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        client.close()
    assert seen == ["GEN2", "GEN3", "GEN4", "GEN5"]
    assert failures == [], failures[:5]
    assert counts["calls"] >= 2000
    # the load ran all along: calls completed before the first reload, between each two, after
    # the last, and calls were in flight during each reload (started before its answer, ended
    # after its request)
    edges = [float("-inf")] + [x for r in reloads for x in r] + [float("inf")]
    between = [sum(1 for _, end in spans if lo < end < hi) for lo, hi in zip(edges[::2], edges[1::2], strict=True)]
    during = [sum(1 for start, end in spans if start < r1 and end > r0) for r0, r1 in reloads]
    print(f"{counts['calls']} calls; completed before, between and after the {len(reloads)} reloads: {between}; "
          f"in flight during each: {during}")
    assert len(reloads) == 5 and len(between) == 6
    assert all(n >= 20 for n in between[:-1]) and between[-1] >= 200, between
    assert all(n >= 1 for n in during), during
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="error") == 1
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="ok") == 4
    assert sc.stop() == 0
