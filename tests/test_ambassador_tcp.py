"""A `tcp` ambassador route: connect failover, then a byte-exact splice."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from legacy_fixtures.upstreams.tcp_upstream import TcpUpstream
from tests.harness import free_port, refused, until


@pytest.fixture
def tcp_up() -> Iterator[TcpUpstream]:
    up = TcpUpstream("live").start()
    yield up
    up.stop()


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_tcp_route_fails_over_on_connect_refusal(sidecars: Any, tcp_up: TcpUpstream) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    cfg = {"admin": {}, "ambassador": [{
        "name": "legacy", "listen": f"127.0.0.1:{port}", "protocol": "tcp",
        "upstream": {"static": [dead, tcp_up.address]}, "timeout": "3s",
        "retry": {"attempts": 2, "backoff": {"base": "1ms", "max": "5ms"},
                  "budget": {"ratio": 1.0, "min_per_second": 100}},
        "circuit_breaker": {"failures": 1000, "reset": "30s"}}]}
    sc = sidecars(cfg, single_process=True)
    payload = bytes(range(256)) * 100  # 25 kB, every byte value
    for _ in range(20):  # P(no connect tried the dead one first) = 2**-20
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert recv_exact(s, 5) == b"live\n"
            s.sendall(payload)
            assert recv_exact(s, len(payload)) == payload
    sc_retries = sc.metric_value("adaptercar_ambassador_retries_total", route="legacy",
                                 reason="connect-failure")
    assert tcp_up.connections == 20
    assert sc_retries >= 1  # some connects went to the dead endpoint first and failed over
    assert sc.metric_value("adaptercar_ambassador_requests_total", route="legacy", code="connected") == 20


def test_tcp_route_closes_when_nothing_connects(sidecars: Any) -> None:
    port = free_port()
    cfg = {"admin": {}, "ambassador": [{
        "name": "legacy", "listen": f"127.0.0.1:{port}", "protocol": "tcp",
        "upstream": {"static": [f"127.0.0.1:{free_port()}"]}, "timeout": "2s",
        "retry": {"attempts": 2, "backoff": {"base": "1ms", "max": "5ms"}}}]}
    sidecars(cfg, single_process=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(10) == b""  # closed, not hung


def test_a_spliced_connection_open_at_sigterm_goes_on_until_it_closes(
        sidecars: Any, tcp_up: TcpUpstream) -> None:
    """SIGTERM: the route stops listening at once, and a connection already spliced keeps
    working (within the drain timeout) until its client closes it; then the exit is 0."""
    port = free_port()
    cfg = {"admin": {}, "shutdown": {"drain_timeout": "8s"}, "ambassador": [{
        "name": "legacy", "listen": f"127.0.0.1:{port}", "protocol": "tcp",
        "upstream": {"static": [tcp_up.address]}, "timeout": "3s"}]}
    sc = sidecars(cfg, single_process=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert recv_exact(s, 5) == b"live\n"
        assert sc.proc is not None
        sc.proc.send_signal(signal.SIGTERM)
        until(lambda: refused(port), 3, "the route refusing new connections")
        s.sendall(b"after the signal")
        assert recv_exact(s, 16) == b"after the signal"
        assert sc.proc.poll() is None  # still draining: the connection is open
    assert sc.proc.wait(10) == 0
