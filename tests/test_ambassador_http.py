"""An `http` ambassador route end to end: real sidecar process, real upstream sockets."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from legacy_fixtures.upstreams.http_upstream import HttpUpstream
from tests.harness import free_port, refused, until


@pytest.fixture
def upstreams() -> Iterator[Any]:
    made: list[HttpUpstream] = []

    def make(name: str) -> HttpUpstream:
        up = HttpUpstream(name).start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()


def route_config(static: list[str], **route: Any) -> tuple[dict[str, Any], int]:
    port = free_port()
    r = {"name": "pay", "listen": f"127.0.0.1:{port}", "protocol": "http",
         "upstream": {"static": static}, "timeout": "3s",
         "retry": {"attempts": 3, "backoff": {"base": "10ms", "max": "50ms"},
                   "budget": {"ratio": 1.0, "min_per_second": 100}}}
    r.update(route)
    return {"admin": {}, "ambassador": [r]}, port


def call(port: int, method: str = "GET", path: str = "/x", body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_proxies_and_spreads_across_static_upstreams(sidecars: Any, upstreams: Any) -> None:
    a, b = upstreams("a"), upstreams("b")
    cfg, port = route_config([a.address, b.address])
    sidecars(cfg, single_process=True)
    seen = set()
    for i in range(40):
        status, headers, body = call(port, path=f"/item/{i}?q=1", headers={"X-Custom": "v",
                                                                      "Connection": "keep-alive"})
        assert status == 200, body
        seen.add(body)
    assert seen == {b"a", b"b"}
    assert headers["server"].startswith("BaseHTTP") and headers["date"]  # the upstream's own
    assert a.count() + b.count() == 40
    got = a.received[0]
    assert got.path.startswith("/item/") and got.path.endswith("?q=1")
    assert got.headers["x-custom"] == "v"
    assert got.headers["x-request-id"]  # added when absent
    assert "keep-alive" not in got.headers  # hop-by-hop headers are not forwarded
    status, _, _ = call(port, "POST", "/p", body=b"x" * 1000, headers={"x-request-id": "mine"})
    assert status == 200
    posts = [r for r in a.received + b.received if r.method == "POST"]
    assert len(posts) == 1 and posts[0].body_len == 1000 and posts[0].headers["x-request-id"] == "mine"


def test_503_is_retried_on_another_endpoint(sidecars: Any, upstreams: Any) -> None:
    bad, good = upstreams("bad"), upstreams("good")
    bad.mode = "503"
    cfg, port = route_config([bad.address, good.address],
                             circuit_breaker={"failures": 1000, "reset": "30s"})
    sc = sidecars(cfg, single_process=True)
    for _ in range(20):
        status, _, body = call(port)
        assert (status, body) == (200, b"good")
    # every call that reached `bad` first was retried once on `good`, never on `bad` again
    assert good.count() == 20 and 1 <= bad.count() < 20
    assert sc.metric_value("adaptercar_ambassador_retries_total", route="pay", reason="503") == bad.count()
    assert sc.metric_value("adaptercar_ambassador_requests_total", route="pay", code="200") == 20


def test_post_reset_is_not_retried(sidecars: Any, upstreams: Any) -> None:
    a, b = upstreams("a"), upstreams("b")
    a.mode = b.mode = "reset"
    cfg, port = route_config([a.address, b.address])
    sidecars(cfg, single_process=True)
    status, headers, body = call(port, "POST", body=b"pay 10")
    assert status == 503 and headers["x-adaptercar-reason"] == "upstream-unavailable"
    assert b"upstream-unavailable" in body
    assert a.count() + b.count() == 1  # sent exactly once
    status, _, _ = call(port, "GET")  # an idempotent method is retried elsewhere
    assert status == 503
    assert a.count() + b.count() == 1 + 3


def test_all_down_says_why(sidecars: Any, upstreams: Any) -> None:
    cfg, port = route_config([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    sidecars(cfg, single_process=True)
    status, headers, body = call(port, "POST", body=b"x")
    assert status == 503 and headers["x-adaptercar-reason"] == "upstream-unavailable"
    assert headers["content-type"].startswith("text/plain")


def test_budget_exhausted_returns_the_last_response(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    a.mode = "503"
    cfg, port = route_config([a.address], retry={"attempts": 3, "budget": {"ratio": 0.2, "min_per_second": 0},
                                                  "backoff": {"base": "1ms", "max": "1ms"}},
                             circuit_breaker={"failures": 100000, "reset": "30s"})
    sidecars(cfg, single_process=True)
    reasons = []
    for _ in range(50):
        status, headers, body = call(port)
        assert status == 503
        reasons.append(headers.get("x-adaptercar-reason"))
    assert "budget-exhausted" in reasons
    assert a.count() <= 50 * 1.2 + 1  # the storm is bounded by the budget


def _worst_of(tries: int, expected: float, once: Any) -> float:
    """The largest overshoot of `expected` over a few calls, each of which must not be early:
    every timeout must be honoured within the bound, not just one of them."""
    overshoot = []
    for _ in range(tries):
        t0 = time.monotonic()
        once()
        took = time.monotonic() - t0
        assert took >= expected - 0.005, f"answered after {took:.3f} s, before {expected} s"
        overshoot.append(took - expected)
    print(f"overshoot of {expected} s: {[round(o * 1000, 1) for o in overshoot]} ms")
    return max(overshoot)


def test_per_try_and_overall_timeouts_within_100ms(sidecars: Any, upstreams: Any) -> None:
    slow, hang = upstreams("slow"), upstreams("hang")
    slow.mode, slow.delay = "slow", 2.0
    hang.mode = "hang"
    cfg, port = route_config([slow.address], timeout="3s", per_try_timeout="300ms",
                             retry={"attempts": 2, "backoff": {"base": "1ms", "max": "1ms"}},
                             circuit_breaker={"failures": 1000, "reset": "30s"})
    hport = free_port()
    cfg["ambassador"].append({"name": "hang", "listen": f"127.0.0.1:{hport}",
                              "upstream": {"static": [hang.address]}, "timeout": "500ms",
                              "retry": {"attempts": 5}})
    sidecars(cfg, single_process=True)

    def per_try() -> None:
        status, headers, body = call(port)
        # a per-try timeout is a 504 (DESIGN): every try timed out, so the answer is that 504
        assert status == 504 and headers["x-adaptercar-reason"] == "deadline", body

    def overall() -> None:
        status, headers, _ = call(hport)
        assert status == 504 and headers["x-adaptercar-reason"] == "deadline"

    assert _worst_of(3, 0.6, per_try) < 0.1  # two tries of 300 ms each
    assert slow.count() == 3 * 2
    assert _worst_of(3, 0.5, overall) < 0.1
    assert hang.count() >= 3  # the deadline cut a try that had reached the upstream


def test_supervisor_runs_an_ambassador_worker(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, port = route_config([a.address])
    sc = sidecars(cfg)
    status, _, body = call(port, "PUT", "/r", body=b"abc")
    assert (status, body) == (200, b"a")
    assert a.received[-1].method == "PUT" and a.received[-1].body_len == 3
    _, ready = sc.admin("/readyz")
    assert set(ready["workers"]) == {"ambassador"}
    end = time.monotonic() + 5
    while True:  # the worker reports its routes twice a second
        _, view = sc.admin("/ambassador")
        if view["routes"] or time.monotonic() > end:
            break
        time.sleep(0.1)
    assert view["routes"][0]["name"] == "pay"
    assert view["routes"][0]["endpoints"] == [
        {"address": a.address, "priority": 0, "weight": 1, "breaker": "closed"}]
    assert sc.metric_value("adaptercar_ambassador_requests_total", route="pay", code="200") == 1
    assert sc.metric_value("adaptercar_circuit_state", route="pay", endpoint=a.address) == 0


def test_retry_after_is_honoured_within_the_deadline(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    a.mode, a.retry_after = "503", "1"
    cfg, port = route_config([a.address], timeout="3s",
                             circuit_breaker={"failures": 1000, "reset": "30s"},
                             retry={"attempts": 2, "backoff": {"base": "1ms", "max": "1ms"},
                                    "budget": {"ratio": 1.0, "min_per_second": 100}})
    sidecars(cfg, single_process=True)
    t0 = time.monotonic()
    status, headers, _ = call(port, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    took = time.monotonic() - t0
    assert status == 503 and headers["retry-after"] == "1"  # the last upstream answer, as is
    assert a.count() == 2 and took >= 0.95  # the retry waited for Retry-After
    assert a.received[0].headers["traceparent"].startswith("00-aaaa")
    a.retry_after = "10"  # beyond the 3 s deadline: not waited for, not retried
    t0 = time.monotonic()
    status, _, _ = call(port)
    assert status == 503 and a.count() == 3 and time.monotonic() - t0 < 1.0


def test_large_body_streams_with_bounded_memory(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, port = route_config([a.address], timeout="30s")
    sc = sidecars(cfg, single_process=True)

    def hwm_kib() -> int:
        status = open(f"/proc/{sc.proc.pid}/status").read()
        return int(status.split("VmHWM:")[1].split()[0])

    before = hwm_kib()
    body = b"z" * (50 * 1024 * 1024)
    status, _, reply = call(port, "POST", "/upload", body=body, timeout=60)
    assert (status, reply) == (200, b"a")
    assert a.received[-1].body_len == len(body)
    grew = hwm_kib() - before
    assert grew < 30 * 1024, f"peak RSS grew {grew} KiB"  # the 50 MB body was never held whole


def test_circuit_open_is_said(sidecars: Any) -> None:
    cfg, port = route_config([f"127.0.0.1:{free_port()}"],
                             circuit_breaker={"failures": 2, "reset": "30s"})
    sc = sidecars(cfg, single_process=True)
    status, headers, _ = call(port)  # two connect failures open the breaker
    assert status == 503 and headers["x-adaptercar-reason"] == "upstream-unavailable"
    status, headers, body = call(port)
    assert status == 503 and headers["x-adaptercar-reason"] == "circuit-open"
    assert body.startswith(b"503 circuit-open")
    _, view = sc.admin("/ambassador")
    assert view["routes"][0]["endpoints"][0]["breaker"] == "open"


def test_large_response_to_a_slow_caller(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    a.mode, a.delay = "big", 64.0
    cfg, port = route_config([a.address], timeout="1s")  # bounds the wait for the answer, not its body
    sc = sidecars(cfg, single_process=True)

    def rss_kib() -> int:
        status = open(f"/proc/{sc.proc.pid}/status").read()
        return int(status.split("VmRSS:")[1].split()[0])

    before = rss_kib()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "http://ignored.example/big")  # absolute-form is accepted too
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-length") == str(64 << 20)
    got = len(resp.read(1 << 20))
    time.sleep(1.5)  # the caller stalls past `timeout`; the proxy must not buffer the rest
    grew = rss_kib() - before
    while chunk := resp.read(1 << 20):
        got += len(chunk)
    conn.close()
    assert got == 64 << 20
    assert a.received[-1].path == "/big"
    assert grew < 32 * 1024, f"RSS grew {grew} KiB while the caller stalled"  # 64 MiB without


def test_host_header_kept_rewritten_or_literal(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, keep = route_config([a.address])
    ports = {"keep": keep}
    for mode, static in (("upstream", f"localhost:{a.port}"), ("api.example.com", a.address)):
        ports[mode] = free_port()
        cfg["ambassador"].append({"name": mode.replace(".", "-"), "listen": f"127.0.0.1:{ports[mode]}",
                                  "upstream": {"static": [static]}, "host_header": mode})
    sidecars(cfg, single_process=True)
    seen = {}
    for mode, port in ports.items():
        status, _, _ = call(port, headers={"Host": "legacy-caller.local"})
        assert status == 200
        seen[mode] = a.received[-1].headers["host"]
    assert seen == {"keep": "legacy-caller.local",  # the default, as Envoy and HAProxy do
                    "upstream": f"localhost:{a.port}",  # the endpoint's name, not its address
                    "api.example.com": "api.example.com"}


def test_request_body_streams_before_the_caller_finished(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, port = route_config([a.address], timeout="5s")
    sidecars(cfg, single_process=True)
    size = 4 << 20
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        s.sendall(b"z" * (256 << 10))
        end = time.monotonic() + 5
        while a.bytes_in == 0 and time.monotonic() < end:
            time.sleep(0.02)
        # the caller holds back 15/16 of its body: the upstream must already have the first part
        assert 0 < a.bytes_in <= 256 << 10
        assert a.count() == 0
        s.sendall(b"z" * (size - (256 << 10)))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.endswith(b"a"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert a.received[-1].body_len == size


def test_a_body_too_big_to_replay_is_not_retried(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    a.mode = "503"
    cfg, port = route_config([a.address], circuit_breaker={"failures": 1000, "reset": "30s"})
    sidecars(cfg, single_process=True)
    status, _, body = call(port, "PUT", body=b"s" * 1000)  # small: replayed on each try
    assert status == 503 and a.count() == 3
    status, _, body = call(port, "PUT", body=b"b" * (2 << 20))  # above the 1 MiB replay buffer
    assert (status, body) == (503, b"a unavailable\n")  # the upstream's own answer, as is
    assert a.count() == 3 + 1 and a.received[-1].body_len == 2 << 20


def test_an_answer_before_the_body_ended_closes_the_connection(sidecars: Any) -> None:
    cfg, port = route_config([f"127.0.0.1:{free_port()}"],
                             circuit_breaker={"failures": 1, "reset": "30s"})
    sidecars(cfg, single_process=True)
    assert call(port)[0] == 503  # the connect failure opens the breaker
    status, headers, _ = call(port, "POST", body=b"x" * 100)  # headers and body in one packet
    assert (status, headers["x-adaptercar-reason"]) == (503, "circuit-open")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        reply = b""
        while chunk := s.recv(65536):  # the answer, then the close: the rest is never read
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 503") and b"connection: close" in reply.lower()
    assert call(port)[0] == 503  # the route still serves


def test_single_process_reload_rebuilds_routes_and_companion_duties(
        sidecars: Any, upstreams: Any, tmp_path: Any) -> None:
    a, b = upstreams("a"), upstreams("b")
    cfg, port = route_config([a.address])
    sc = sidecars(cfg, single_process=True)
    assert call(port)[2] == b"a"
    # the same listener now goes to `b`, a second route appears, and a log file is tailed
    logfile = tmp_path / "legacy.log"
    logfile.write_text("")
    cfg["ambassador"][0]["upstream"] = {"static": [b.address]}
    port2 = free_port()
    cfg["ambassador"].append({"name": "second", "listen": f"127.0.0.1:{port2}",
                              "upstream": {"static": [a.address]}})
    cfg["companion"] = {"logs": [{"path": str(logfile), "fields": {"source": "app"}}]}
    sc.config = cfg
    sc.write_config()
    status, res = sc.admin("/reload", "POST")
    assert (status, res) == (200, {"ok": True, "errors": []})
    assert [call(port)[2] for _ in range(5)] == [b"b"] * 5
    assert call(port2)[2] == b"a"
    _, view = sc.admin("/ambassador")
    assert [r["name"] for r in view["routes"]] == ["pay", "second"]
    with logfile.open("a") as w:
        w.write("hello from the legacy app\n")
    end = time.monotonic() + 10
    while time.monotonic() < end and not any(r.get("event") == "legacy_log" for r in sc.log_records()):
        time.sleep(0.1)
    [line] = [r for r in sc.log_records() if r.get("event") == "legacy_log"]
    assert line["source"] == "app" and "hello from the legacy app" in str(line)
    # removing the routes stops their listeners
    del cfg["ambassador"]
    sc.config = cfg
    sc.write_config()
    assert sc.admin("/reload", "POST")[0] == 200
    with pytest.raises(OSError):
        call(port2, timeout=2)


def test_chunked_upload_with_expect_continue(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, port = route_config([a.address])
    sidecars(cfg, single_process=True)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        reply = b""
        while not reply.endswith(b"\r\n\r\na"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    # the upstream got the body chunked, as it came (its length was not known in advance)
    got = a.received[-1]
    assert (got.method, got.headers["transfer-encoding"], got.body_len) == ("PUT", "chunked", 11)


def test_caller_leaving_mid_upload_is_no_upstream_failure(sidecars: Any, upstreams: Any) -> None:
    a = upstreams("a")
    cfg, port = route_config([a.address], circuit_breaker={"failures": 1, "reset": "30s"})
    sc = sidecars(cfg, single_process=True)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
            end = time.monotonic() + 5
            while a.bytes_in < 5000 and time.monotonic() < end:
                time.sleep(0.02)
        a.bytes_in = 0
    assert call(port)[:1] == (200,)  # one failure would have opened the breaker
    assert sc.metric_value("adaptercar_circuit_state", route="pay", endpoint=a.address) == 0
    assert not [r for r in sc.log_records() if r.get("event") == "ambassador_error"]


@pytest.mark.parametrize("single", [False, True], ids=["supervisor", "single-process"])
def test_a_call_in_flight_at_sigterm_is_answered_and_new_ones_refused(
        sidecars: Any, upstreams: Any, single: bool) -> None:
    """SIGTERM drains the routes as the fronts: the listener closes at once, the proxied call
    in flight is answered (its bytes flushed before the exit), and the exit status is 0."""
    slow = upstreams("slow")
    slow.mode, slow.delay = "slow", 1.5
    cfg, port = route_config([slow.address], timeout="5s")
    sc = sidecars(cfg, single_process=single)
    out: list[Any] = []

    def one() -> None:
        try:
            out.append(call(port)[:1])
        except Exception as e:  # noqa: BLE001 - the outcome is the finding
            out.append(repr(e))

    t = threading.Thread(target=one)
    t.start()
    until(lambda: slow.count() == 1, 5, "the call at the upstream")
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGTERM)
    until(lambda: refused(port), 3, "the route refusing new connections")
    assert sc.proc.wait(15) == 0
    t.join(10)
    assert out == [(200,)]
