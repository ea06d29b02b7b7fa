"""`workers: {grpc: N, http: N}`: several worker processes per front, sharing its port.

Real processes on loopback: the supervisor, two workers per front, the ledger fixture. Which
worker served a call is read from its access log line (every line carries the worker's pid).
The kernel spreads connections over the workers' SO_REUSEPORT sockets by a hash of the
client's port, so each call goes out on a new connection, and enough of them are made that
all landing on one worker (2 ** -19 for 20 calls) would mean the port is not shared.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from adaptercar.compile import load_all
from tests.harness import ROOT, GrpcClient, Ledger, Sidecar, env_with_root, until
from tests.test_runtime import BALANCE, config, mapping_with_not_found

CALLS = 20


def two_each(ledger: Ledger, mapping: Path) -> dict[str, Any]:
    cfg = config(ledger.address)
    cfg["mappings"] = [str(mapping)]
    cfg["workers"] = {"grpc": 2, "http": 2}
    return cfg


def pids_by_worker(sc: Sidecar) -> dict[str, int]:
    status, body = sc.admin("/readyz")
    return {name: w["pid"] for name, w in body["workers"].items()}


def stop_promptly(sc: Sidecar) -> None:
    """SIGTERM: exit status 0 well before any drain timeout, every worker seen to stop."""
    workers = pids_by_worker(sc)
    t0 = time.monotonic()
    assert sc.stop() == 0
    assert time.monotonic() - t0 < 6, "shutdown waited for a timeout"
    records = sc.log_records()
    assert not [r for r in records if r.get("event") == "forced_exit"]
    stopped = {r["worker"]: r["pid"] for r in records
               if r.get("event") == "worker_stopped" and r.get("reason") != "reload"}
    assert stopped == workers


def fresh_grpc_client(sc: Sidecar) -> GrpcClient:
    """A client on its own TCP connection: grpc shares connections between channels to the
    same target unless the channel keeps its own subchannel pool."""
    client = sc.grpc_client()
    client.channel.close()
    client.channel = grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}",
                                           options=[("grpc.use_local_subchannel_pool", 1)])
    return client


def grpc_not_found_message(sc: Sidecar) -> str:
    client = fresh_grpc_client(sc)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            client.call("ledger.v1.Ledger.GetBalance", account_id="9999")
        return str(ei.value.details())
    finally:
        client.close()


def served_by(sc: Sidecar, front: str, request_ids: set[str]) -> set[int]:
    """The pids that wrote the access lines of these calls (waits until all are written)."""
    def lines() -> list[dict[str, Any]] | None:
        found = [r for r in sc.log_records()
                 if r.get("front") == front and r.get("request_id") in request_ids]
        return found if len(found) == len(request_ids) else None

    return {r["pid"] for r in until(lines, timeout=10, what=f"{front} access lines")}


def test_two_workers_per_front_share_the_ports_reload_together_and_survive_a_kill(
        tmp_path: Path, ledger: Ledger, sidecars: Any) -> None:
    mapping = tmp_path / "ledger.yaml"
    mapping_with_not_found(mapping, "v1: {msg}")
    sc = sidecars(two_each(ledger, mapping))
    pids = pids_by_worker(sc)
    assert set(pids) == {"grpc", "grpc.1", "http", "http.1"}
    assert len(set(pids.values())) == 4

    # both fronts are served, each by both of its workers
    ids = {f"h{i}" for i in range(CALLS)}
    for rid in ids:
        assert sc.http("GET", "/v1/accounts/1001/balance", headers={"x-request-id": rid})[:2] == (200, BALANCE)
    assert served_by(sc, "http", ids) == {pids["http"], pids["http.1"]}
    ids = {f"g{i}" for i in range(CALLS)}
    for rid in ids:
        client = fresh_grpc_client(sc)
        reply = client.call("ledger.v1.Ledger.GetBalance", account_id="1001", metadata=[("x-request-id", rid)])
        assert reply.balance_cents == 125000
        client.close()
    assert served_by(sc, "grpc", ids) == {pids["grpc"], pids["grpc.1"]}

    # a reload reaches every worker: no call, whichever worker takes it, answers the old way
    mapping_with_not_found(mapping, "v2: {msg}")
    status, body = sc.admin("/reload", method="POST")
    assert status == 200 and body["ok"] is True, body
    ids = {f"r{i}" for i in range(CALLS)}
    for rid in ids:
        status, answer, _ = sc.http("GET", "/v1/accounts/9999/balance", headers={"x-request-id": rid})
        assert (status, answer["message"]) == (404, "v2: no such account 9999")
    assert served_by(sc, "http", ids) == {pids["http"], pids["http.1"]}
    assert {grpc_not_found_message(sc) for _ in range(CALLS)} == {"v2: no such account 9999"}
    assert pids_by_worker(sc) == pids, "a reload in place restarts no worker"

    # A killed worker is restarted by itself; its sibling keeps serving meanwhile. (Connections
    # the kernel had queued on the dead worker's socket are reset with it: wait until it is gone.)
    # Metrics are flushed every 0.5 s and a SIGKILLed worker loses what it had not flushed
    # (docs/operations.md): let the counts of the calls above reach /metrics first.
    until(lambda: sc.metric_value(
        "adaptercar_requests_total", front="http", code="OK") >= CALLS, what="http calls flushed")
    os.kill(pids["http.1"], signal.SIGKILL)
    until(lambda: pids_by_worker(sc)["http.1"] != pids["http.1"], what="the supervisor to see http.1 die")
    for _ in range(CALLS):
        assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    new = until(lambda: (
        sc.admin("/readyz")[0] == 200 and (p := pids_by_worker(sc))["http.1"] not in (None, pids["http.1"])
        and p), timeout=20, what="http.1 restarted and ready")
    assert {k: v for k, v in new.items() if k != "http.1"} == {k: v for k, v in pids.items() if k != "http.1"}
    until(lambda: sc.metric_value("adaptercar_worker_restarts_total", role="http") == 1,
        what="one http restart counted")
    assert sc.metric_value("adaptercar_worker_restarts_total", role="grpc") == 0
    died = [r for r in sc.log_records() if r.get("event") == "worker_died"]
    assert [(r["worker"], r["pid"]) for r in died] == [("http.1", pids["http.1"])]
    # metrics add up over workers: every successful HTTP call above, whichever worker took it
    until(lambda: sc.metric_value(
        "adaptercar_requests_total", front="http", code="OK") >= 2 * CALLS,
            what="http calls counted over workers")

    stop_promptly(sc)


def test_a_reload_can_change_the_number_of_workers(tmp_path: Path, ledger: Ledger, sidecars: Any) -> None:
    mapping = tmp_path / "ledger.yaml"
    mapping_with_not_found(mapping, "{msg}")
    cfg = two_each(ledger, mapping)
    cfg["workers"] = {"http": 2}
    sc = sidecars(cfg)
    before = pids_by_worker(sc)
    assert set(before) == {"grpc", "http", "http.1"}
    sc.config = {**sc.config, "workers": {"http": 3}}
    sc.write_config()
    status, body = sc.admin("/reload", method="POST")
    assert status == 200 and body["ok"] is True, body
    after = until(lambda: (
        sc.admin("/readyz")[0] == 200 and len(p := pids_by_worker(sc)) == 4 and p),
            what="a third http worker")
    assert {k: after[k] for k in before} == before, "the others are reloaded in place"
    sc.config = {**sc.config, "workers": {"http": 1}}
    sc.write_config()
    status, body = sc.admin("/reload", method="POST")
    assert status == 200 and body["ok"] is True, body
    # one worker binds its port alone again (no SO_REUSEPORT): all http workers are replaced
    last = until(lambda: (
        sc.admin("/readyz")[0] == 200 and set(p := pids_by_worker(sc)) == {"grpc", "http"}
        and p["http"] not in after.values() and p), what="one http worker")
    assert last["grpc"] == before["grpc"]
    assert sc.http("GET", "/v1/accounts/1001/balance")[:2] == (200, BALANCE)
    assert sc.metric_value("adaptercar_worker_restarts_total", role="http") == 0, "planned, not crashes"
    stop_promptly(sc)


def test_a_taken_port_is_one_clear_line_with_several_workers(tmp_path: Path, ledger: Ledger) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cfg = config(ledger.address)
        cfg["http"] = {"listen": f"127.0.0.1:{port}"}
        cfg["workers"] = {"http": 2}
        path = tmp_path / "adaptercar.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([sys.executable, "-m", "adaptercar.cli", "run", "-c", str(path)],
                              capture_output=True, env=env_with_root(), cwd=ROOT, timeout=30)
    lines = [ln for ln in proc.stderr.decode().splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr.decode()
    assert lines[0].startswith(f"adaptercar: cannot start the JSON front on 127.0.0.1:{port}")
    assert "in use" in lines[0]


@pytest.mark.parametrize(("workers", "listen", "expected"), [
    ({"http": 2}, "127.0.0.1:0", "workers.http is 2: they share http.listen, which must then be a "
                                 "fixed TCP port, got '127.0.0.1:0'"),
    ({"http": 0}, "127.0.0.1:8080", "workers.http: "),
    ({"ambassador": 2}, "127.0.0.1:8080", "workers.ambassador: "),
])
def test_worker_counts_that_cannot_work_are_config_errors(
        tmp_path: Path, workers: dict[str, int], listen: str, expected: str) -> None:
    cfg = config("127.0.0.1:1")
    cfg["http"] = {"listen": listen}
    cfg["workers"] = workers
    path = tmp_path / "adaptercar.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_all(path, run_examples=False)
    errors = [p.format() for p in loaded.errors]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:"), errors
    assert expected in errors[0], errors


def test_readiness_needs_a_ready_worker_per_role_and_no_unready_listener(tmp_path: Path) -> None:
    """The rule /readyz applies, on the supervisor's model of its workers (no processes)."""
    from adaptercar.runtime.supervisor import Supervisor, WorkerProcess

    cfg = config("127.0.0.1:1")
    cfg["workers"] = {"grpc": 1, "http": 2}
    path = tmp_path / "adaptercar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sup = Supervisor(str(path), load_all(path, run_examples=False), reactor=None)

    def put(role: str, index: int, **state: bool) -> None:
        w = WorkerProcess(sup, role, index)
        w.state = state
        sup.workers[w.name] = w

    put("grpc", 0, ready=True, listening=True)
    put("http", 0, ready=True, listening=True)
    ok, detail = sup.readiness()
    assert ok and list(detail["workers"]) == ["grpc", "http", "http.1"]  # http.1 restarting
    assert detail["workers"]["http.1"]["pid"] is None
    put("http", 1, ready=False, listening=False)
    assert sup.readiness()[0], "a worker still starting takes no connections"
    put("http", 1, ready=False, listening=True)
    assert not sup.readiness()[0], "a listening worker that is not ready gets calls it fails"
    put("http", 1, ready=True, listening=True)
    del sup.workers["grpc"]
    assert not sup.readiness()[0], "no gRPC worker at all"
