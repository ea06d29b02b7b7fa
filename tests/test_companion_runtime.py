"""Companion duties hosted by the real sidecar: in --single-process and in its own worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Ledger, Sidecar, demo_like_config, until


def _config(ledger: Ledger, logfile: Path) -> dict[str, Any]:
    cfg = demo_like_config(ledger.address)
    cfg["companion"] = {
        "logs": [{"path": str(logfile), "parse": r"^(?P<level>[A-Z]+) (?P<msg>.*)$",
                  "fields": {"source": "legacy-app"}}],
        "stats": [{"backend": "ledger", "every": "300ms", "request": "STATS",
                   "response": {"until": r"^\.$", "each": {"match": r"^(?P<name>\w+)=(?P<value>-?[0-9.]+)$"}},
                   "include": ["accounts", "sessions", "transfers_total"]}],
        "config": [{"template": str(logfile.parent / "app.conf.tpl"), "values": [str(logfile.parent / "values")],
                    "output": str(logfile.parent / "app.conf")}],
    }
    (logfile.parent / "app.conf.tpl").write_text("port={port}\n")
    (logfile.parent / "values").mkdir(exist_ok=True)
    (logfile.parent / "values" / "port").write_text("7000\n")
    return cfg


@pytest.mark.parametrize("single_process", [True, False], ids=["single", "supervised"])
def test_stats_reach_metrics_and_log_lines_reach_stdout(ledger: Ledger, sidecars: Any, tmp_path: Path,
                                                        single_process: bool) -> None:
    logfile = tmp_path / "legacy.log"
    logfile.write_text("WARN before start: not emitted\n")
    sc: Sidecar = sidecars(_config(ledger, logfile), single_process=single_process)
    until(lambda: sc.metric_value("legacy_accounts", backend="ledger") == 3)
    assert sc.metric_value("adaptercar_companion_stats_up", backend="ledger") == 1
    assert "legacy_uptime_seconds" not in sc.metrics()  # not in include
    # a transfer through the sidecar shows in the next polls
    status, _, _ = sc.http("POST", "/v1/transfers", {"from_account": "1001", "to_account": "1002",
                                                      "amount_cents": 100})
    assert status == 200, status
    until(lambda: sc.metric_value("legacy_transfers_total", backend="ledger") >= 1)
    with logfile.open("a") as w:
        w.write("ERROR disk full\nhalf a li")
    with logfile.open("a") as w:
        w.write("ne\n")
    until(lambda: len([r for r in sc.log_records() if r.get("event") == "legacy_log"]) >= 2)
    recs = [r for r in sc.log_records() if r.get("event") == "legacy_log"]
    assert [r["msg"] for r in recs] == ["disk full", "half a line"]
    assert recs[0]["level"] == "ERROR" and recs[0]["source"] == "legacy-app" and "hostname" in recs[0]
    until(lambda: sc.metric_value("adaptercar_companion_log_lines_total", source="legacy-app",
                                   outcome="unparsed") == 1)
    out = tmp_path / "app.conf"
    until(lambda: out.exists() and out.read_text() == "port=7000\n")
    (tmp_path / "values" / "port").write_text("7001\n")
    until(lambda: out.read_text() == "port=7001\n")
    assert sc.stop() == 0


def test_a_backend_going_down_flips_up_to_zero(ledger: Ledger, sidecars: Any, tmp_path: Path) -> None:
    sc: Sidecar = sidecars(_config(ledger, tmp_path / "none.log"), single_process=True)
    until(lambda: sc.metric_value("adaptercar_companion_stats_up", backend="ledger") == 1)
    ledger.stop()
    until(lambda: sc.metric_value("adaptercar_companion_stats_up", backend="ledger") == 0)
    assert sc.metric_value("legacy_accounts", backend="ledger") == 3  # last value kept


def test_from_start_reads_what_the_file_already_holds(sidecars: Any, tmp_path: Path) -> None:
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    old.write_text("INFO written before the sidecar started\n")
    new.write_text("INFO also before, but from the end: skipped\n")
    cfg = {"admin": {}, "log": {"level": "info"},
           "companion": {"logs": [{"path": str(old), "from": "start", "fields": {"source": "old"}},
                                  {"path": str(new), "fields": {"source": "new"}}]}}
    sc: Sidecar = sidecars(cfg, single_process=True)
    with new.open("a") as w:
        w.write("INFO after start\n")
    until(lambda: len([r for r in sc.log_records() if r.get("event") == "legacy_log"]) >= 2)
    time.sleep(0.5)
    recs = [(r["source"], r["msg"]) for r in sc.log_records() if r.get("event") == "legacy_log"]
    assert recs == [("old", "INFO written before the sidecar started"), ("new", "INFO after start")]


def test_from_takes_start_or_end_only(tmp_path: Path) -> None:
    from adaptercar.compile import load_all

    path = tmp_path / "adaptercar.yaml"
    path.write_text("admin: {}\ncompanion:\n  logs:\n    - path: app.log\n      from: middle\n")
    problems = [p.format() for p in load_all(path, run_examples=False).problems]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:5:"), problems
    assert "companion.logs[0].from" in problems[0] and "'end'" in problems[0] and "'start'" in problems[0]
