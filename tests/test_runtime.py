"""The runtime as operators meet it: supervisor and workers, admin, reload, shutdown, logs.

Every test runs `adaptercar run` as a real subprocess against the real ledger fixture on
loopback, and looks only at what an operator can see: sockets, exit status, /metrics, JSON
log lines. Bounds are generous (a loaded 2-core machine), but each test still fails when the
behaviour it names is broken: a hung shutdown, a lost in-flight call, a reset counter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.harness import (
    ROOT,
    Ledger,
    Sidecar,
    demo_like_config,
    env_with_root,
    free_port,
    refused,
    start_ledger,
    until,
)

LEDGER_MAPPING = ROOT / "mappings" / "ledger.yaml"
BALANCE = {"accountId": "1001", "balanceCents": "125000", "currency": "EUR"}


# --- helpers ------------------------------------------------------------------------------

def distinct_ports(n: int) -> list[int]:
    """n free ports, all different (sockets held open together while picking)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def config(ledger_address: str, ports: list[int] | None = None, **backend_overrides: Any) -> dict[str, Any]:
    """`demo_like_config` with its three listeners on distinct ports. (The harness's
    `free_port()` per role can hand the same port out twice: a config error, and a flake.)"""
    cfg = demo_like_config(ledger_address, **backend_overrides)
    for role, port in zip(("grpc", "http", "admin"), ports or distinct_ports(3), strict=True):
        cfg[role] = {"listen": f"127.0.0.1:{port}"}
    return cfg




def worker_pids(sc: Sidecar) -> dict[str, int | None]:
    _, body = sc.admin("/readyz")
    return {role: w.get("pid") for role, w in body["workers"].items()}




def not_found_message(sc: Sidecar) -> tuple[str, str]:
    """The NOT_FOUND message for account 9999 as each front reports it."""
    status, body, _ = sc.http("GET", "/v1/accounts/9999/balance")
    assert status == 404, body
    client = sc.grpc_client()
    try:
        with pytest.raises(grpc.RpcError) as ei:
            client.call("ledger.v1.Ledger.GetBalance", account_id="9999")
    finally:
        client.close()
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    return body["message"], ei.value.details()


def stop_promptly(sc: Sidecar) -> None:
    """SIGTERM with nothing in flight: exit 0 at once, every worker seen to stop.

    Regression: the supervisor sometimes missed a worker's exit (uvloop took the wakeup fd
    Twisted's SIGCHLD handling writes to) and waited drain_timeout + 5 s, then killed it.
    """
    t0 = time.monotonic()
    assert sc.stop() == 0
    assert time.monotonic() - t0 < 6, "shutdown waited for a timeout"
    records = sc.log_records()
    assert not [r for r in records if r.get("event") == "forced_exit"]
    if sc.single_process:
        return
    stopped = [r for r in records if r.get("event") == "worker_stopped" and r.get("reason") != "reload"]
    assert sorted(r["role"] for r in stopped) == ["grpc", "http"], stopped
    assert all(r["exit_status"] == 0 for r in stopped), stopped


def access_lines(sc: Sidecar) -> list[dict[str, Any]]:
    return [r for r in sc.log_records() if r.get("event") == "access"]


def mapping_with_not_found(path: Path, message: str) -> None:
    """The ledger mapping, with the NOT_FOUND rule (a YAML anchor shared by every method)
    answering `message` instead of the ledger's own text."""
    text = LEDGER_MAPPING.read_text()
    old = 'error: {code: NOT_FOUND, message: "{msg}"}'
    assert text.count(old) == 1
    path.write_text(text.replace(old, f'error: {{code: NOT_FOUND, message: "{message}"}}'))


# --- 1. a killed worker is replaced; metrics survive ---------------------------------------

def test_killed_http_worker_is_restarted_and_metrics_keep_counting(ledger: Ledger, sidecars: Any) -> None:
    sc = sidecars(config(ledger.address))
    old = worker_pids(sc)
    for _ in range(20):
        assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    # metrics are batched (flushed every FLUSH_EVERY s): wait until these 20 are visible
    before = until(lambda: (
        (v := sc.metric_value("adaptercar_requests_total", front="http", code="OK")) >= 20 and v),
            timeout=5, what="20 calls counted")
    ok_started: list[float] = []  # when each call that answered OK was sent
    stop = threading.Event()

    def stream() -> None:
        for _ in range(5000):  # bounded, whatever happens
            if stop.is_set():
                return
            t0 = time.monotonic()
            try:
                status, body, _ = sc.http("GET", "/v1/accounts/1001/balance", timeout=3)
                if status == 200 and body == BALANCE:
                    ok_started.append(t0)
            except OSError:
                time.sleep(0.02)  # the worker is being replaced

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        until(lambda: len(ok_started) >= 5, what="the stream of calls")
        os.kill(old["http"], signal.SIGKILL)
        until(lambda: _dead(old["http"]), every=0.01, what="the killed worker to be gone")
        dead_at = time.monotonic()
        new = until(lambda: (
            (p := worker_pids(sc))["http"] not in (None, old["http"]) and sc.admin("/readyz")[0] == 200 and p
        ), what="a new, ready http worker")
        restarted_at = time.monotonic()
        until(lambda: sum(1 for x in ok_started if x > restarted_at) >= 10, what="10 calls after the restart")
    finally:
        stop.set()
        t.join(10)
    assert new["grpc"] == old["grpc"], "only the killed worker is replaced"
    assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    # Every call sent once the old worker was dead was answered by the new one. Had the dead
    # worker's counts been dropped (or the counter reset), the total would be that number.
    # (Its last unflushed batch, up to FLUSH_EVERY s of calls, is lost: `before` excludes it.)
    served_by_new = sum(1 for x in ok_started if x > dead_at) + 1
    until(lambda: (
        sc.metric_value("adaptercar_requests_total", front="http", code="OK") >= before + served_by_new),
            timeout=10, what=f"{before} + {served_by_new} OK calls counted")
    assert sc.metric_value("adaptercar_worker_restarts_total", role="http") == 1
    assert sc.metric_value("adaptercar_worker_restarts_total", role="grpc") == 0
    died = [r for r in sc.log_records() if r.get("event") == "worker_died"]
    assert len(died) == 1, died
    assert died[0]["role"] == "http" and died[0]["pid"] == old["http"]
    assert died[0]["signal"] == signal.SIGKILL and died[0]["level"] == "error"
    stop_promptly(sc)


# --- 2. SIGTERM drains ---------------------------------------------------------------------

SLOW_MAPPING = """\
service: ledger.v1.Ledger
backend: ledger
methods:
  GetBalance:
    request: "SLOW {ms} BAL {{account_id}}"
    response:
      - match: '^OK (?P<cents>-?\\d+) (?P<currency>[A-Z]{{3}})$'
        fields: {{account_id: "{{account_id}}", balance_cents: "{{cents}}", currency: "{{currency}}"}}
"""


@pytest.mark.parametrize("single", [False, True], ids=["supervisor", "single-process"])
def test_sigterm_stops_accepting_finishes_in_flight_calls_and_exits_0(
        tmp_path: Path, ledger: Ledger, sidecars: Any, single: bool) -> None:
    mapping = tmp_path / "slow.yaml"
    mapping.write_text(SLOW_MAPPING.format(ms=3000))
    cfg = config(ledger.address, timeout="8s")
    cfg["mappings"] = [str(mapping)]
    drain_timeout = 5.0
    cfg["shutdown"] = {"drain_timeout": f"{drain_timeout:g}s"}
    sc = sidecars(cfg, single_process=single)
    results: dict[str, Any] = {}

    def http_call() -> None:
        try:
            results["http"] = sc.http("GET", "/v1/accounts/1001/balance", timeout=20)[:2]
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results["http"] = e

    def grpc_call() -> None:
        client = sc.grpc_client()
        try:
            results["grpc"] = client.call("ledger.v1.Ledger.GetBalance", account_id="1002", timeout=20)
        except Exception as e:  # noqa: BLE001
            results["grpc"] = e
        finally:
            client.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (http_call, grpc_call)]
    for t in threads:
        t.start()
    until(lambda: sum("SLOW 3000" in line for line in ledger.journal_lines()) >= 2, timeout=10,
        what="both slow calls to reach the ledger")
    assert sc.proc is not None
    t0 = time.monotonic()
    sc.proc.send_signal(signal.SIGTERM)
    until(lambda: refused(sc.ports["http"]), timeout=2.5, every=0.05,
        what="the JSON port to refuse connections")
    until(lambda: refused(sc.ports["grpc"]), timeout=2.5, every=0.05,
        what="the gRPC port to refuse connections")
    assert not results, f"the listeners closed only after the calls ended: {results}"
    for t in threads:
        t.join(drain_timeout + 5)
    assert results.get("http") == (200, {"accountId": "1001", "balanceCents": "125000", "currency": "EUR"})
    reply = results.get("grpc")
    assert not isinstance(reply, Exception) and reply is not None, reply
    assert (reply.account_id, reply.balance_cents) == ("1002", 5000)
    code = sc.proc.wait(timeout=drain_timeout + 5)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < drain_timeout + 3, f"shutdown took {elapsed:.1f}s"
    records = sc.log_records()
    assert not [r for r in records if r.get("event") == "forced_exit"], "a worker needed the forced exit"
    if not single:
        stopped = {r["role"]: r for r in records if r.get("event") == "worker_stopped"}
        assert set(stopped) == {"grpc", "http"}, records[-10:]
        assert all(r["exit_status"] == 0 for r in stopped.values()), stopped


REAP_SCRIPT = """\
import os, sys, time
from adaptercar.runtime import reactor as setup
setup.install()
from twisted.internet import protocol, reactor

ended = []

class Child(protocol.ProcessProtocol):
    def processEnded(self, reason):
        ended.append(reason.value.exitCode)
        if len(ended) == N:
            reactor.stop()

N = 5
# Each child closes its pipes, then exits a little later: Twisted's reap on pipe close comes
# too early, so only SIGCHLD handling can notice the exit.
CODE = "import os, time; os.close(0); os.close(1); os.close(2); time.sleep(0.3); os._exit(3)"

def spawn():
    for _ in range(N):
        reactor.spawnProcess(Child(), sys.executable, [sys.executable, "-c", CODE],
                             env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"})

reactor.callWhenRunning(lambda: reactor.callLater(0.1, spawn))
reactor.callLater(5, reactor.stop)
reactor.run()
print(len(ended), sorted(set(ended)))
"""


def test_children_that_exit_after_closing_their_pipes_are_noticed(tmp_path: Path) -> None:
    script = tmp_path / "reap.py"
    script.write_text(REAP_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                         env=env_with_root(), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "[3]"], out.stdout + out.stderr


# --- 3. single process ---------------------------------------------------------------------

def test_single_process_serves_grpc_json_and_admin_and_exits_0(ledger: Ledger, sidecars: Any) -> None:
    sc = sidecars(config(ledger.address), single_process=True)
    assert sc.proc is not None
    status, body = sc.admin("/readyz")
    assert status == 200 and list(body["workers"]) == ["single"]
    assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    client = sc.grpc_client()
    assert client.call("ledger.v1.Ledger.GetBalance", account_id="1002").balance_cents == 5000
    client.close()
    assert sc.admin("/healthz")[0] == 200
    until(lambda: sc.metric_value("adaptercar_requests_total", code="OK") == 2, timeout=5,
        what="2 calls counted")
    children = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == sc.proc.pid]
    assert children == [], "single-process mode started child processes"
    stop_promptly(sc)


def _dead(pid: int) -> bool:
    """Exited (a zombie not yet reaped counts: it serves nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


# --- 4. admin ------------------------------------------------------------------------------

DESIGN_METRICS = [
    "adaptercar_requests_total",
    "adaptercar_request_duration_seconds",
    "adaptercar_backend_requests_total",
    "adaptercar_backend_duration_seconds",
    "adaptercar_backend_pool_connections",
    "adaptercar_worker_restarts_total",
    "adaptercar_config_reloads_total",
]


def _has_samples(text: str, name: str) -> bool:
    return bool(re.search(rf"^{name}(_count|_total)?{{", text, re.M))


def test_admin_health_readiness_metrics_and_redacted_config(tmp_path: Path, sidecars: Any) -> None:
    secret = "s3cr3t-ledger-pw"
    led = start_ledger(tmp_path, "--password", secret)
    try:
        cfg = config(led.address,
                               on_connect=[{"send": "LOGIN {env.LEDGER_USER} {env.LEDGER_PASS}", "expect": "^OK"}])
        cfg["auth"] = {"jwt": {"secret": "jwt-s3cr3t"}, "default": "none"}
        cfg["backends"]["tool"] = {"process": {"command": ["cat"], "env": {"TOOL_TOKEN": "proc-s3cr3t"}}}
        sc = sidecars(cfg, env={"LEDGER_USER": "demo", "LEDGER_PASS": secret})
        assert sc.admin("/healthz") == (200, {"status": "ok"})
        status, ready = sc.admin("/readyz")
        assert status == 200 and ready["ready"] is True
        assert set(ready["workers"]) == {"grpc", "http"}
        for role, w in ready["workers"].items():
            assert isinstance(w["pid"], int) and w["ready"] and w["listening"], (role, w)
            assert w["backends"]["ledger"]["ready"] is True, (role, w)
        # /config: the effective config, secrets hidden, `{env.X}` templates shown as written
        status, view = sc.admin("/config")
        assert status == 200
        text = json.dumps(view)
        for leaked in (secret, "jwt-s3cr3t", "proc-s3cr3t"):
            assert leaked not in text
        line = view["config"]["backends"]["ledger"]["line"]
        assert line["on_connect"][0]["send"] == "LOGIN {env.LEDGER_USER} {env.LEDGER_PASS}"
        assert view["config"]["auth"]["jwt"]["secret"] == "***"
        assert view["config"]["backends"]["tool"]["process"]["env"] == {"TOOL_TOKEN": "***"}
        assert "/ledger.v1.Ledger/GetBalance" in view["methods"]
        # /metrics: every DESIGN.md metric that exists today, with samples
        assert sc.http("GET", "/v1/accounts/1001/balance")[0] == 200
        client = sc.grpc_client()
        client.call("ledger.v1.Ledger.GetBalance", account_id="1001")
        client.close()
        text = until(lambda: (
            (m := sc.metrics()) and all(_has_samples(m, n) for n in DESIGN_METRICS) and m),
                timeout=5, what="every metric")
        until(lambda: sc.metric_value("adaptercar_backend_requests_total", outcome="ok") == 2,
            what="2 calls counted")
        assert sc.metric_value("adaptercar_requests_total", front="grpc", code="OK") == 1
        assert sc.metric_value("adaptercar_requests_total", front="http", code="OK") == 1
        assert sc.metric_value("adaptercar_config_reloads_total") == 0
        assert 'adaptercar_worker_restarts_total{role="http"} 0.0' in text
        status, _ = sc.admin("/nope")
        assert status == 404
        stop_promptly(sc)
    finally:
        led.stop()


def test_readyz_follows_the_backend(tmp_path: Path, sidecars: Any) -> None:
    port, *listeners = distinct_ports(4)
    sc = sidecars(config(f"127.0.0.1:{port}", ports=listeners), wait_ready=False)

    def down_everywhere() -> Any:
        status, body = sc.admin("/readyz")
        backends = [w["backends"].get("ledger", {}) for w in body["workers"].values()]
        return status == 503 and all("refused" in b.get("down_reason", "") for b in backends) and body

    body = until(down_everywhere, timeout=10, what="/readyz 503 naming the refused backend")
    assert body["ready"] is False and set(body["workers"]) == {"grpc", "http"}
    for role, w in body["workers"].items():
        assert w["listening"] is True and w["ready"] is False, (role, w)
        assert w["backends"]["ledger"]["ready"] is False
    status, body, _ = sc.http("GET", "/v1/accounts/1001/balance")
    assert status == 503 and body["code"] == 14  # UNAVAILABLE, fast: the backend is known down
    led = start_ledger(tmp_path, port=port)
    try:
        until(lambda: sc.admin("/readyz")[0] == 200, timeout=20, what="/readyz 200 once the ledger is up")
        assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
        stop_promptly(sc)
    finally:
        led.stop()


# --- 5. reload -----------------------------------------------------------------------------

def test_reload_by_post_and_sighup_and_a_broken_reload_keeps_the_old_config(
        tmp_path: Path, ledger: Ledger, sidecars: Any) -> None:
    mapping = tmp_path / "ledger.yaml"
    mapping_with_not_found(mapping, "v1: {msg}")
    cfg = config(ledger.address)
    cfg["mappings"] = [str(mapping)]
    sc = sidecars(cfg)
    pids = worker_pids(sc)
    assert not_found_message(sc) == ("v1: no such account 9999",) * 2

    mapping_with_not_found(mapping, "v2: {msg}")
    status, body = sc.admin("/reload", method="POST")
    assert status == 200 and body["ok"] is True, body
    assert not_found_message(sc) == ("v2: no such account 9999",) * 2
    assert worker_pids(sc) == pids

    mapping_with_not_found(mapping, "v3: {msg}")
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGHUP)
    until(lambda: not_found_message(sc) == ("v3: no such account 9999",) * 2, what="the SIGHUP reload")
    assert worker_pids(sc) == pids
    until(lambda: sc.metric_value("adaptercar_config_reloads_total", outcome="ok") == 2,
        what="two reloads counted")

    good = mapping.read_text()
    mapping.write_text(good.replace(r"(?P<cents>-?\d+)", r"(?P<cents>-?\d+", 1))
    status, body = sc.admin("/reload", method="POST")
    assert status == 400 and body["ok"] is False, body
    assert any(re.match(rf"^{re.escape(str(mapping))}:\d+: methods\.GetBalance\.response\[0\]\.match: ", e)
               for e in body["errors"]), body
    assert not_found_message(sc) == ("v3: no such account 9999",) * 2
    assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    assert worker_pids(sc) == pids
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="error") == 1
    assert sc.metric_value("adaptercar_config_reloads_total", outcome="ok") == 2
    failed = [r for r in sc.log_records() if r.get("event") == "config_reload_failed"]
    assert failed and "does not compile" in json.dumps(failed[-1])
    stop_promptly(sc)


def test_a_reload_that_moves_the_json_listener_replaces_only_that_worker(
        ledger: Ledger, sidecars: Any) -> None:
    sc = sidecars(config(ledger.address))
    pids = worker_pids(sc)
    old_port, new_port = sc.ports["http"], free_port()
    sc.config = {**sc.config, "http": {"listen": f"127.0.0.1:{new_port}"}}
    sc.write_config()
    status, body = sc.admin("/reload", method="POST")
    assert status == 200 and body["ok"] is True, body
    sc.ports["http"] = new_port
    until(lambda: sc.http("GET", "/v1/accounts/1001/balance")[0] == 200,
        what="the JSON front on its new port")
    assert refused(old_port)
    new = until(lambda: sc.admin("/readyz")[0] == 200 and worker_pids(sc), what="a ready http worker")
    assert new["grpc"] == pids["grpc"] and new["http"] != pids["http"]
    assert sc.metric_value("adaptercar_worker_restarts_total", role="http") == 0, "a planned move is no crash"
    records = sc.log_records()
    assert not [r for r in records if r.get("event") == "worker_died"]
    moved = [r for r in records if r.get("event") == "worker_stopped" and r.get("reason") == "reload"]
    assert [r["pid"] for r in moved] == [pids["http"]]
    stop_promptly(sc)


# --- 6. logs -------------------------------------------------------------------------------

def test_every_log_line_is_json_and_access_lines_carry_the_request_id(ledger: Ledger, sidecars: Any) -> None:
    cfg = config(ledger.address)
    cfg["log"] = {"level": "info", "fields": {"service": "billing-adapter", "team": "payments"}}
    sc = sidecars(cfg)
    assert sc.http("GET", "/v1/accounts/1001/balance", headers={"x-request-id": "rid-http-1"})[0] == 200
    assert sc.http("GET", "/v1/accounts/9999/balance", headers={"X-Request-Id": "rid-http-2"})[0] == 404
    assert sc.http("GET", "/v1/accounts/1001/balance")[0] == 200
    client = sc.grpc_client()
    client.call("ledger.v1.Ledger.GetBalance", account_id="1001", metadata=[("x-request-id", "rid-grpc-1")])
    client.close()
    by_id = until(lambda: (
        (lines := access_lines(sc)) and len(lines) >= 4 and {r["request_id"]: r for r in lines}),
            timeout=5, what="4 access lines")
    assert {"rid-http-1", "rid-http-2", "rid-grpc-1"} <= set(by_id)
    generated = [rid for rid in by_id if not rid.startswith("rid-")]
    assert len(generated) == 1 and generated[0], "a request without x-request-id gets an id of its own"
    required = {"ts", "level", "event", "request_id", "front", "method", "code", "duration_ms",
                "backend_ms", "hostname", "service", "team"}
    for rec in by_id.values():
        assert required <= set(rec), required - set(rec)
        assert rec["service"] == "billing-adapter" and rec["team"] == "payments"
        assert rec["method"] == "/ledger.v1.Ledger/GetBalance"
        assert isinstance(rec["duration_ms"], int | float) and isinstance(rec["backend_ms"], int | float)
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", rec["ts"])
    assert (by_id["rid-http-1"]["front"], by_id["rid-http-1"]["code"]) == ("http", "OK")
    assert (by_id["rid-http-2"]["front"], by_id["rid-http-2"]["code"]) == ("http", "NOT_FOUND")
    assert (by_id["rid-grpc-1"]["front"], by_id["rid-grpc-1"]["code"]) == ("grpc", "OK")
    stop_promptly(sc)
    lines = [ln for ln in sc.log_text().splitlines() if ln.strip()]
    for ln in lines:
        rec = json.loads(ln)  # raises on a line that is not JSON (a traceback, a library's print)
        assert isinstance(rec, dict) and {"ts", "level", "event", "hostname", "service"} <= set(rec), ln


# --- 7. start-up failures ------------------------------------------------------------------

@pytest.mark.parametrize("taken, single", [("admin", False), ("http", False), ("grpc", False),
                                           ("admin", True), ("http", True), ("grpc", True)])
def test_a_port_in_use_is_one_clear_line_and_a_nonzero_exit(
        tmp_path: Path, ledger: Ledger, taken: str, single: bool) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    cfg = config(ledger.address)
    cfg[taken] = {"listen": f"127.0.0.1:{port}"}
    path = tmp_path / "adaptercar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(path)] + (["--single-process"] if single else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_with_root(), cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 20 s after failing to start:\n{err.decode()[-2000:]}")
    finally:
        blocker.close()
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr + out.decode()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("adaptercar: cannot start") and f":{port}" in lines[0], lines[0]
    assert "in use" in lines[0], lines[0]
    until(lambda: not _processes_using(path), timeout=5, what="no worker left behind")


def _processes_using(config: Path) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if str(config).encode() in cmd:
                found.append(int(p))
    return found

