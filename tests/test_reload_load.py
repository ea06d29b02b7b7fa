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

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
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
            counts["calls"] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        seen = []
        for gen in ("GEN2", "BROKEN", "GEN3", "GEN4", "GEN5"):
            time.sleep(0.8)
            if gen == "BROKEN":
                mapping.write_text(_mapping("GEN2").replace("response:", "respnose:", 1))
                status, body = sc.admin("/reload", method="POST")
                assert status == 400 and not body["ok"], body
                assert any("respnose" in e for e in body["errors"]), body
                mapping.write_text(_mapping("GEN2"))
                continue
            mapping.write_text(_mapping(gen))
            status, body = sc.admin("/reload", method="POST")
            assert status == 200 and body["ok"], body
            # the new mapping answers on both fronts right after the reload returned
            s, ping, _ = sc.http("GET", "/v1/ping")
            assert (s, ping) == (200, {"status": gen})
            assert client.call("ledger.v1.Ledger.Ping").status == gen
            seen.append(gen)
        while counts["calls"] < 2000:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        client.close()
    assert seen == ["GEN2", "GEN3", "GEN4", "GEN5"]
    assert failures == [], failures[:5]
    assert counts["calls"] >= 2000
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="error") == 1
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="ok") == 4
    assert sc.stop() == 0
