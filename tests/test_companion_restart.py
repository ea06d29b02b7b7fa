"""`on_change: {restart: BACKEND}` with the real sidecar: a process backend whose children read
their config file (the ratequote fixture's `--rates` price table) only when they start.

The companion renders the table from a values folder; a values change rewrites it and restarts
the backend's children in every worker that owns them (through the supervisor when the
companion runs in its own worker), so the next calls see the new price, and calls made during
the restart do not fail.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, Ledger, Sidecar, demo_like_config, until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX children and signals")




def _set(folder: Path, key: str, value: str) -> None:
    """Change a value atomically, as a ConfigMap update does: a poll never sees it half-written."""
    (folder / f".{key}.tmp").write_text(value + "\n")
    os.replace(folder / f".{key}.tmp", folder / key)


def _config(tmp: Path) -> dict[str, Any]:
    (tmp / "values").mkdir()
    (tmp / "values" / "widget").write_text("1250\n")
    (tmp / "rates.tpl").write_text("WIDGET {widget}\nGADGET 9999\n")
    (tmp / "rates.txt").write_text("WIDGET 1250\nGADGET 9999\n")  # what the first render writes
    return {
        "grpc": {},
        "http": {},
        "admin": {},
        "protos": [str(ROOT / "protos")],
        "mappings": [str(ROOT / "mappings" / "ratequote.yaml")],
        "backends": {"ratequote": {"process": {
            "command": [sys.executable, "-m", "legacy_fixtures.ratequote", "--rates", str(tmp / "rates.txt")],
            "cwd": str(ROOT), "framing": {"delimiter": "\n"}, "pool": {"size": 2}, "timeout": "5s",
            "env": {"PYTHONPATH": str(ROOT)},
        }}},
        "companion": {"config": [{"template": str(tmp / "rates.tpl"), "values": [str(tmp / "values")],
                                  "output": str(tmp / "rates.txt"), "on_change": {"restart": "ratequote"}}]},
        "shutdown": {"drain_timeout": "2s"},
    }


def _unit(sc: Sidecar) -> int:
    status, body, _ = sc.http("POST", "/v1/quotes", {"product": "WIDGET", "quantity": 1, "region": "EU"})
    assert status == 200, (status, body)
    return int(body["unitPriceCents"])


def _children(sc: Sidecar) -> set[int]:
    _, body = sc.admin("/readyz")
    return {pid for w in body["workers"].values()
            for pid in w.get("backends", {}).get("ratequote", {}).get("children", [])}


@pytest.mark.parametrize("single_process", [True, False], ids=["single", "supervised"])
def test_a_values_change_restarts_the_children_and_the_next_calls_see_it(
        sidecars: Any, tmp_path: Path, single_process: bool) -> None:
    sc: Sidecar = sidecars(_config(tmp_path), single_process=single_process)
    assert _unit(sc) == 1250
    before = until(lambda: (c := _children(sc)) and len(c) == (2 if single_process else 4) and c,
                    what="every worker's children reported")
    failures: list[str] = []
    stop = threading.Event()

    def steady_calls() -> None:  # calls going on during the restart must not fail
        while not stop.is_set():
            try:
                _unit(sc)
            except AssertionError as e:
                failures.append(str(e))

    caller = threading.Thread(target=steady_calls)
    caller.start()
    try:
        _set(tmp_path / "values", "widget", "2000")
        until(lambda: _unit(sc) == 2000, what="the new price served")
        # an old child busy at the restart answers its call, then goes: soon every call is new
        until(lambda: all(_unit(sc) == 2000 for _ in range(8)), what="only new children answer")
    finally:
        stop.set()
        caller.join(10)
    assert failures == []
    assert (tmp_path / "rates.txt").read_text() == "WIDGET 2000\nGADGET 9999\n"
    # every worker's children were replaced (the gRPC worker's too, which served no call here)
    until(lambda: (c := _children(sc)) and len(c) == len(before) and not c & before,
           what=f"children {before} all replaced")
    restarts = [r for r in sc.log_records() if r.get("event") == "backend_restart"]
    assert restarts and all(r["backend"] == "ratequote" for r in restarts)
    # calls are counted once per worker: HTTP calls all ran in one worker, so one restart per
    # pool that owns the backend (the http and grpc workers, or the single process)
    assert len(restarts) == (1 if single_process else 2), restarts



def test_restarting_a_line_backend_reconnects_its_pool(ledger: Ledger, sidecars: Any, tmp_path: Path) -> None:
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "limit").write_text("10\n")
    (tmp_path / "app.tpl").write_text("limit={limit}\n")
    (tmp_path / "app.conf").write_text("limit=10\n")  # as rendered: no restart at start
    cfg = demo_like_config(ledger.address)
    cfg["companion"] = {"config": [{"template": str(tmp_path / "app.tpl"), "values": [str(tmp_path / "values")],
                                    "output": str(tmp_path / "app.conf"), "on_change": {"restart": "ledger"}}]}
    sc: Sidecar = sidecars(cfg, single_process=True)
    logins = lambda: sum(1 for line in ledger.journal_lines() if "LOGIN" in line)  # noqa: E731
    until(lambda: logins() == 2, what="the pool's two logins")
    assert sc.http("GET", "/v1/accounts/1001/balance")[0] == 200
    _set(tmp_path / "values", "limit", "20")
    until(lambda: logins() == 4, what="two new connections logged in")
    assert sc.http("GET", "/v1/accounts/1001/balance")[0] == 200
    assert sc.metric_value("adaptercar_backend_restarts_total", backend="ledger", reason="restart") == 2, \
        [m for m in sc.metrics().splitlines() if "restarts" in m]
    time.sleep(0.5)
    assert logins() == 4  # replaced once, not in a loop


SLOW_PROGRAM = """\
import sys, time
price = int(open(sys.argv[1]).read().split()[1])  # 'WIDGET <cents>', read once at start
for line in sys.stdin:
    if line[:10].strip() == "SLOW":
        time.sleep(6)
    print(f"OK {price:012d}{price:014d}EUREU  ", flush=True)
"""


def test_a_busy_child_finishes_its_call_while_new_calls_go_to_a_new_child(
        sidecars: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg["backends"]["ratequote"]["process"].update(
        command=[sys.executable, "-c", SLOW_PROGRAM, str(tmp_path / "rates.txt")], pool={"size": 1},
        timeout="10s")
    sc: Sidecar = sidecars(cfg, single_process=True)
    [old] = _children(sc)
    slow: list[Any] = []

    def slow_call() -> None:
        slow.append(sc.http("POST", "/v1/quotes", {"product": "SLOW", "quantity": 1, "region": "EU"}))

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)  # the slow call is in the only child now
    _set(tmp_path / "values", "widget", "2000")
    started = time.monotonic()
    until(lambda: _unit(sc) == 2000, what="a new child answering")
    answered_new_in = time.monotonic() - started
    caller.join(15)
    [(status, body, _)] = slow
    assert status == 200 and body["unitPriceCents"] == "1250", body  # the old child, not killed
    assert answered_new_in < 5, answered_new_in  # not queued behind the 6 s call
    until(lambda: (c := _children(sc)) and old not in c, what="the old child gone after its call")
