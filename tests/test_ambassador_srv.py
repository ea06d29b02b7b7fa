"""SRV discovery through a real DNS server on loopback (twisted.names), real upstreams."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legacy_fixtures.upstreams.http_upstream import HttpUpstream
from tests.harness import ROOT, env_with_root, free_port

SRV = "_pay._tcp.svc.test"


class Dns:
    def __init__(self, tmp: Path) -> None:
        self.zone = tmp / "zone.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def set(self, records: list[tuple[int, int, HttpUpstream]], ttl: int = 1) -> None:
        zone = {"srv": {SRV: {"ttl": ttl, "records": [[p, w, up.port, f"{up.name}.svc.test"]
                                                      for p, w, up in records]}},
                "a": {f"{up.name}.svc.test": {"ttl": ttl, "addresses": ["127.0.0.1"]}
                      for _, _, up in records}}
        tmp = self.zone.with_suffix(".tmp")
        tmp.write_text(json.dumps(zone))
        tmp.replace(self.zone)

    def set_a(self, name: str, addresses: list[str], ttl: int = 1) -> None:
        self.zone.write_text(json.dumps({"a": {name: {"ttl": ttl, "addresses": addresses}}}))

    def start(self) -> Dns:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "legacy_fixtures.upstreams.dns_server", "--zone", str(self.zone),
             "--port", str(self.port)], stdout=subprocess.PIPE, env=env_with_root(), cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("LISTENING"), line
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[Dns]:
    d = Dns(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def upstreams() -> Iterator[Any]:
    made: list[HttpUpstream] = []

    def make(name: str, port: int = 0) -> HttpUpstream:
        up = HttpUpstream(name, port).start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()


def srv_config(dns: Dns, **route: Any) -> tuple[dict[str, Any], int]:
    port = free_port()
    r = {"name": "pay", "listen": f"127.0.0.1:{port}", "upstream": {"srv": SRV},
         "resolver": {"nameservers": [f"127.0.0.1:{dns.port}"], "min_ttl": "1s", "max_ttl": "5s",
                      "timeout": "300ms"},
         "timeout": "3s", "retry": {"attempts": 3, "backoff": {"base": "5ms", "max": "20ms"},
                                    "budget": {"ratio": 1.0, "min_per_second": 100}}}
    r.update(route)
    return {"admin": {}, "ambassador": [r]}, port


class Caller:
    """One keep-alive connection to the route, as a legacy app would hold."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str = "/") -> tuple[int, bytes]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def wait_for(pred: Any, timeout: float = 8.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_weighted_spread_and_priority(sidecars: Any, upstreams: Any, dns_server: Dns) -> None:
    a, b, c = upstreams("a"), upstreams("b"), upstreams("c")
    dns_server.set([(10, 75, a), (10, 25, b), (20, 100, c)])
    dns_server.start()
    cfg, port = srv_config(dns_server)
    sidecars(cfg, single_process=True)
    caller = Caller(port)
    wait_for(lambda: caller.get()[0] == 200)
    a.received.clear()
    b.received.clear()
    n = 1200
    for _ in range(n):
        assert caller.get()[0] == 200
    # 75/25 inside priority 10; priority 20 is never used while 10 is up (HAProxy gets 33/33/33)
    assert c.count() == 0
    assert a.count() + b.count() == n
    sd = (n * 0.75 * 0.25) ** 0.5
    assert abs(a.count() - 0.75 * n) <= 5 * sd, (a.count(), b.count())


def test_record_change_after_ttl_and_resolver_down(sidecars: Any, upstreams: Any,
                                                   dns_server: Dns) -> None:
    a, b = upstreams("a"), upstreams("b")
    dns_server.set([(10, 1, a)])
    dns_server.start()
    cfg, port = srv_config(dns_server)
    sc = sidecars(cfg, single_process=True)
    caller = Caller(port)
    wait_for(lambda: caller.get() == (200, b"a"))
    # answers are cached for their TTL (1 s), not looked up per call: over 2 s of steady calls
    # the route refreshes about twice, whatever the number of calls
    refreshed = sc.metric_value("adaptercar_discovery_refreshes_total", route="pay", outcome="ok")
    calls, end = 0, time.monotonic() + 2.0
    while time.monotonic() < end:
        assert caller.get() == (200, b"a")
        calls += 1
    time.sleep(0.6)  # metrics reach /metrics within 0.5 s
    lookups = sc.metric_value("adaptercar_discovery_refreshes_total", route="pay",
                              outcome="ok") - refreshed
    assert calls >= 40 and 1 <= lookups <= 5, (calls, lookups)
    dns_server.set([(10, 1, b)])
    wait_for(lambda: caller.get() == (200, b"b"))  # TTL is 1 s
    dns_server.stop()
    before = b.count()
    end = time.monotonic() + 3.0  # three TTLs with the resolver down: the last good set is used
    while time.monotonic() < end:
        assert caller.get() == (200, b"b")
        time.sleep(0.02)
    assert b.count() > before
    assert sc.metric_value("adaptercar_discovery_refreshes_total", route="pay", outcome="error") >= 1
    _, body = sc.admin("/ambassador")
    route = body["routes"][0]
    assert route["endpoints"] == [{"address": f"127.0.0.1:{b.port}", "priority": 10, "weight": 1,
                                   "breaker": "closed"}]


def test_priority_failover_and_return(sidecars: Any, upstreams: Any, dns_server: Dns) -> None:
    a, b = upstreams("a"), upstreams("b")
    dns_server.set([(10, 1, a), (20, 1, b)])
    dns_server.start()
    cfg, port = srv_config(dns_server, circuit_breaker={"failures": 2, "reset": "1s"})
    sc = sidecars(cfg, single_process=True)
    caller = Caller(port)
    wait_for(lambda: caller.get() == (200, b"a"))
    a_port = a.port
    a.stop()
    for _ in range(10):  # connect refused on a: retried on b, then a's breaker opens
        assert caller.get() == (200, b"b")
    assert sc.metric_value("adaptercar_circuit_state", route="pay", endpoint=f"127.0.0.1:{a_port}") == 2
    assert sc.metric_value("adaptercar_ambassador_retries_total", route="pay",
                           reason="connect-failure") == 2  # then the open breaker skips a
    a2 = upstreams("a", port=a_port)
    wait_for(lambda: caller.get() == (200, b"a"), timeout=5)  # half-open trial after 1 s, closes
    assert a2.count() >= 1
    before = b.count()
    for _ in range(20):
        assert caller.get() == (200, b"a")
    assert b.count() == before
    assert sc.metric_value("adaptercar_circuit_state", route="pay", endpoint=f"127.0.0.1:{a_port}") == 0


def test_dns_upstream_and_no_endpoints(sidecars: Any, upstreams: Any, dns_server: Dns) -> None:
    a = upstreams("a")
    dns_server.set_a("plain.svc.test", ["127.0.0.1"])
    dns_server.start()
    cfg, port = srv_config(dns_server, upstream={"dns": f"plain.svc.test:{a.port}"})
    nx_port = free_port()
    cfg["ambassador"].append({**cfg["ambassador"][0], "name": "nx", "listen": f"127.0.0.1:{nx_port}",
                              "upstream": {"srv": "_none._tcp.svc.test"}})
    sc = sidecars(cfg, single_process=True)
    caller = Caller(port)
    wait_for(lambda: caller.get() == (200, b"a"))
    assert a.received[-1].method == "GET"
    wait_for(lambda: sc.metric_value("adaptercar_discovery_refreshes_total", route="nx",
                                     outcome="empty") >= 1)
    conn = http.client.HTTPConnection("127.0.0.1", nx_port, timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 503 and resp.getheader("x-adaptercar-reason") == "no-endpoints"
    assert b"no-endpoints" in resp.read()


def test_nxdomain_after_a_good_answer_is_held_for_one_ttl(sidecars: Any, upstreams: Any,
                                                        dns_server: Dns) -> None:
    a = upstreams("a")
    dns_server.set([(10, 1, a)], ttl=3)
    dns_server.start()
    cfg, port = srv_config(dns_server)  # min_ttl 1 s: while held, the name is asked every second
    sc = sidecars(cfg, single_process=True)
    caller = Caller(port)
    wait_for(lambda: caller.get() == (200, b"a"))

    def outcome() -> str:
        return str(sc.admin("/ambassador")[1]["routes"][0]["last_outcome"])

    dns_server.zone.write_text(json.dumps({"srv": {}, "a": {}}))  # the SRV name is now NXDOMAIN
    wait_for(lambda: outcome() == "empty-held")
    held_at = time.monotonic()
    while time.monotonic() < held_at + 1.5:  # the last good set keeps answering
        assert caller.get() == (200, b"a")
        time.sleep(0.05)
    wait_for(lambda: caller.get()[0] == 503, timeout=6)  # one TTL (3 s) after the first NXDOMAIN
    assert time.monotonic() - held_at < 3 + 1.5
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("x-adaptercar-reason")) == (503, "no-endpoints")
    assert sc.metric_value("adaptercar_discovery_refreshes_total", route="pay", outcome="empty-held") >= 2
    assert sc.metric_value("adaptercar_discovery_refreshes_total", route="pay", outcome="empty") >= 1
    dns_server.set([(10, 1, a)], ttl=3)  # back: picked up at the next refresh (1 s)
    wait_for(lambda: caller.get() == (200, b"a"), timeout=4)
