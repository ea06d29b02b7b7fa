"""Companion duties end to end, through `adaptercar run` as operators start it (supervised: the
duties run in the `companion` worker): a legacy log rotated while a writer process appends to it,
read back from adaptercar's stdout; and a stats backend that goes away and comes back."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.harness import Ledger, Sidecar, demo_like_config, start_ledger, until

TOTAL = 10_000
RENAME_AT = 3_000
TRUNCATE_AT = 6_500
LEVELS = ("INFO", "WARN", "ERROR")
PARSE = r"^(?P<ts>\S+) (?P<level>[A-Z]+) seq=(?P<seq>\d+) (?P<msg>.*)$"


def legacy_line(i: int) -> str:
    """Line i as the legacy app writes it; every 1000th does not fit the parse regex."""
    if i % 1000 == 999:
        return f"free text {i:05d} in no known shape"
    return f"2026-12-05T01:{i // 60 % 60:02d}:{i % 60:02d} {LEVELS[i % 3]} seq={i:05d} payload {'x' * (i % 37)}"


# The legacy app: appends TOTAL lines at ~2000 lines/s. Rotation by rename at RENAME_AT (it
# writes 10 more lines into the renamed file before it reopens, as apps do); at TRUNCATE_AT it
# prints "paused" and waits for a line on stdin before it truncates (copytruncate: what the
# copy took is what a tailer could have missed, so the test lets the tailer catch up first).
# Some lines are written in two writes, three of them with a pause longer than a poll between.
WRITER = f"""\
import os, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from tests.test_companion_e2e import legacy_line, RENAME_AT, TRUNCATE_AT, TOTAL
path = sys.argv[1]
w = open(path, "ab", buffering=0)
for i in range(TOTAL):
    if i == RENAME_AT:
        os.rename(path, path + ".1")
    if i == RENAME_AT + 10:
        w.close()
        w = open(path, "ab", buffering=0)
    if i == TRUNCATE_AT:
        print("paused", flush=True)
        assert sys.stdin.readline() == "go\\n"
        os.truncate(path, 0)
        time.sleep(0.6)
    line = (legacy_line(i) + "\\n").encode()
    if i in (1234, 5678, 8765):
        w.write(line[:20])
        time.sleep(0.6)
        w.write(line[20:])
    elif i % 97 == 0:
        w.write(line[:7])
        w.write(line[7:])
    else:
        w.write(line)
    if i % 100 == 99:
        time.sleep(0.05)
w.close()
print("done", flush=True)
"""




def _legacy_count(sc: Sidecar) -> int:
    return sc.log_text().count('"event": "legacy_log"')


def _expected(i: int) -> dict[str, Any]:
    text = legacy_line(i)
    if i % 1000 == 999:
        return {"level": "info", "msg": text}
    ts, level, seq, msg = text.split(" ", 3)
    return {"legacy_ts": ts, "level": level, "seq": seq.removeprefix("seq="), "msg": msg}


def test_ten_thousand_lines_rotated_twice_come_out_once_in_order_as_json(sidecars: Any, tmp_path: Path) -> None:
    logfile = tmp_path / "legacy.log"
    logfile.write_text("")
    cfg = {"admin": {}, "log": {"level": "info", "fields": {"service": "test"}},
           "companion": {"logs": [{"path": str(logfile), "parse": PARSE,
                                   "fields": {"source": "legacy-app", "team": "ledger"}}]}}
    sc: Sidecar = sidecars(cfg)
    t0 = time.monotonic()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(logfile)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "paused\n"
        until(lambda: _legacy_count(sc) >= TRUNCATE_AT, 20, f"the first {TRUNCATE_AT} lines on stdout")
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "done\n"
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    until(lambda: _legacy_count(sc) >= TOTAL, 20, f"{TOTAL} lines on stdout")
    time.sleep(1.0)  # and none comes twice, late
    elapsed = time.monotonic() - t0
    recs = [r for r in sc.log_records() if r.get("event") == "legacy_log"]
    print(f"{len(recs)} legacy_log lines for {TOTAL} written, in {elapsed:.1f}s")
    keys = ("legacy_ts", "level", "seq", "msg")
    got = [{k: r[k] for k in keys if k in r} for r in recs]
    want = [_expected(i) for i in range(TOTAL)]
    if got != want:
        first = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
        raise AssertionError(f"{len(got)} lines for {TOTAL}; first difference at line {first}: "
                             f"got {got[first:first + 2]}, want {want[first:first + 2]}")
    host = socket.gethostname()
    odd = [r for r in recs if (r.get("source"), r.get("team"), r.get("service"), r.get("hostname"))
           != ("legacy-app", "ledger", "test", host) or "cut" in r]
    assert not odd, odd[:2]
    unparsed = TOTAL // 1000
    assert sc.metric_value("adaptercar_companion_log_lines_total", source="legacy-app",
                           outcome="parsed") == TOTAL - unparsed
    assert sc.metric_value("adaptercar_companion_log_lines_total", source="legacy-app",
                           outcome="unparsed") == unparsed
    assert sc.stop() == 0


def test_stats_up_flips_to_zero_when_the_ledger_stops_and_back_to_one_when_it_returns(
        ledger: Ledger, sidecars: Any, tmp_path: Path) -> None:
    cfg = demo_like_config(ledger.address)
    cfg["companion"] = {"stats": [{
        "backend": "ledger", "every": "300ms", "request": "STATS",
        "response": {"until": r"^\.$", "each": {"match": r"^(?P<name>\w+)=(?P<value>-?[0-9.]+)$"}},
        "include": ["accounts", "uptime_seconds"]}]}
    sc: Sidecar = sidecars(cfg)

    def up() -> float:
        return sc.metric_value("adaptercar_companion_stats_up", backend="ledger")

    until(lambda: up() == 1 and sc.metric_value("legacy_uptime_seconds", backend="ledger") >= 1.0, 20, "stats_up 1")
    before = sc.metric_value("legacy_uptime_seconds", backend="ledger")
    port = ledger.port
    ledger.stop()
    until(lambda: up() == 0, 20, "stats_up 0 after the ledger stopped")
    assert sc.metric_value("legacy_accounts", backend="ledger") == 3  # the last value is kept
    again = start_ledger(tmp_path, port=port)
    try:
        until(lambda: up() == 1, 20, "stats_up back to 1 after the ledger returned on the same port")
        # the polls reach the new process: its uptime started again from zero
        until(lambda: sc.metric_value("legacy_uptime_seconds", backend="ledger") < before, 20, "the new ledger's uptime")
        assert sc.metric_value("legacy_accounts", backend="ledger") == 3
        assert sc.stop() == 0
    finally:
        again.stop()
