"""`on_change: {restart}` of a process backend whose children need a start-up handshake (a
banner that takes a while): the old children serve until a replacement has passed it, so the
backend stays ready and calls keep being answered throughout the restart."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Sidecar, until
from tests.test_companion_restart import _children, _config, _set

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX children and signals")

BANNER_PROGRAM = """\
import sys, time
price = int(open(sys.argv[1]).read().split()[1])  # 'WIDGET <cents>', read once at start
time.sleep(3)  # a slow start-up: the banner comes late
print("RATEQUOTE READY", flush=True)
for line in sys.stdin:
    print(f"OK {price:012d}{price:014d}EUREU  ", flush=True)
"""


def _price(sc: Sidecar) -> tuple[int, int | None]:
    status, body, _ = sc.http("POST", "/v1/quotes", {"product": "WIDGET", "quantity": 1, "region": "EU"})
    return status, (int(body["unitPriceCents"]) if status == 200 else None)


def test_old_children_serve_until_the_new_ones_pass_their_banner(
        sidecars: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg["backends"]["ratequote"]["process"].update(
        command=[sys.executable, "-c", BANNER_PROGRAM, str(tmp_path / "rates.txt")],
        pool={"size": 1}, timeout="10s", banner="^RATEQUOTE READY$")
    sc: Sidecar = sidecars(cfg, single_process=True)
    assert _price(sc) == (200, 1250)
    [old] = _children(sc)
    readiness: list[tuple[int, Any]] = []
    prices: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            readiness.append(sc.admin("/readyz"))
            prices.append(_price(sc))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        _set(tmp_path / "values", "widget", "2000")
        until(lambda: any(r.get("event") == "backend_restart" for r in sc.log_records()),
               what="the restart")
        # the new child is in its 3 s start-up: the old one still answers, with the old price
        assert _price(sc) == (200, 1250)
        until(lambda: _price(sc) == (200, 2000), what="the new child answering")
        until(lambda: (c := _children(sc)) and old not in c and len(c) == 1,
               what="the old child ended once the new one was ready")
        until(lambda: prices and prices[-1] == (200, 2000), what="the watcher served anew")
    finally:
        stop.set()
        watcher.join(10)
    unready = [(status, body) for status, body in readiness
               if status != 200 or not all(w["backends"]["ratequote"]["ready"]
                                           for w in body["workers"].values())]
    assert unready == [] and len(readiness) > 10, unready
    assert all(status == 200 for status, _ in prices), prices
    seen = [p for _, p in prices]
    assert seen[0] == 1250 and seen[-1] == 2000, seen
    assert 1250 not in seen[seen.index(2000):], seen  # once new, never old again


PICKY_PROGRAM = """\
import sys
price = int(open(sys.argv[1]).read().split()[1])
print("RATEQUOTE READY" if price < 5000 else "RATEQUOTE CANNOT START", flush=True)
for line in sys.stdin:
    print(f"OK {price:012d}{price:014d}EUREU  ", flush=True)
"""


def test_when_the_new_children_fail_their_banner_the_old_one_keeps_answering(
        sidecars: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg["backends"]["ratequote"]["process"].update(
        command=[sys.executable, "-c", PICKY_PROGRAM, str(tmp_path / "rates.txt")],
        pool={"size": 1}, timeout="5s", banner="^RATEQUOTE READY$",
        restart={"base": "100ms", "max": "1s"})
    sc: Sidecar = sidecars(cfg, single_process=True)
    assert _price(sc) == (200, 1250)
    [old] = _children(sc)
    _set(tmp_path / "values", "widget", "9000")  # a config the program refuses to start with
    failed = lambda: sum(r.get("event") == "backend_child_start_failed"  # noqa: E731
                         for r in sc.log_records())
    until(lambda: failed() >= 3, what="the new children failing their banner")
    before = failed()
    calls_until = time.monotonic() + 2
    while time.monotonic() < calls_until:  # calls keep being answered by the old child, and
        assert _price(sc) == (200, 1250)  # do not reset the new ones' backoff (no spawn loop)
    # the backoff goes on growing (0.4 s, 0.8 s, 1 s: 2 or 3 starts in 2 s); were it reset by
    # each answer of the old child, a start would follow every 0.1 s (about 10 in 2 s)
    assert failed() - before <= 5, failed() - before
    assert old in _children(sc)
    status, body = sc.admin("/readyz")  # the backend still serves: the sidecar stays ready
    assert status == 200 and body["workers"]["single"]["backends"]["ratequote"]["ready"], body
    _set(tmp_path / "values", "widget", "3000")  # fixed: the next restart replaces the old child
    until(lambda: _price(sc) == (200, 3000), what="the fixed config served")
    until(lambda: old not in _children(sc), what="the old child ended")
    until(lambda: sc.admin("/readyz")[0] == 200, what="ready again")
