"""Slow and hostile clients on real sockets, against one real sidecar (supervisor + workers).

A slowloris client (headers a byte a second) neither blocks other callers nor keeps its
connection past `http.read_timeout`; too many or too large headers get 431; a body declared
over `max_body_bytes` gets 413 before it is sent; idle connections close after
`http.idle_timeout`; gRPC connections that send nothing do not hurt other callers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Ledger, Sidecar, demo_like_config, start_ledger

READ_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0
MAX_BODY = 2048


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("slow")
    ledger: Ledger = start_ledger(tmp)
    cfg = demo_like_config(ledger.address)
    cfg["http"] = {"read_timeout": f"{READ_TIMEOUT:g}s", "idle_timeout": f"{IDLE_TIMEOUT:g}s",
                   "max_headers": 20, "max_header_bytes": 4096, "max_body_bytes": MAX_BODY}
    side = Sidecar(tmp / "sc", cfg)
    side.tmp.mkdir()
    side.start()
    yield side
    side.stop()
    ledger.stop()


def _connect(sc: Sidecar, role: str = "http") -> socket.socket:
    return socket.create_connection(("127.0.0.1", sc.ports[role]), timeout=10)


def _read_all(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything until the peer closes; and when it closed (monotonic)."""
    s.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks), time.monotonic()


def _access_lines(sc: Sidecar, needle: str) -> list[dict[str, Any]]:
    """The sidecar's access lines whose error holds `needle` (waits a moment for the log)."""
    end = time.monotonic() + 5
    while True:
        found = [r for r in sc.log_records()
                 if r.get("event") == "access" and needle in r.get("error", "")]
        if found or time.monotonic() > end:
            return found
        time.sleep(0.1)


def _balance_ok(sc: Sidecar) -> float:
    t0 = time.monotonic()
    status, body, _ = sc.http("GET", "/v1/accounts/1001/balance", timeout=5)
    assert status == 200, body
    return time.monotonic() - t0


def test_slowloris_does_not_block_others_and_is_dropped_after_the_read_timeout(sc: Sidecar) -> None:
    request = b"GET /v1/accounts/1001/balance HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    socks = [_connect(sc) for _ in range(20)]
    stop = threading.Event()
    answers: dict[int, tuple[bytes, float]] = {}
    t_open = time.monotonic()

    def drip(s: socket.socket) -> None:
        for byte in request:  # 123 bytes at 4 a second: 30 s if nobody stopped it
            if stop.is_set():
                return
            try:
                s.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.25)

    def read(i: int, s: socket.socket) -> None:
        data, closed_at = _read_all(s, READ_TIMEOUT + 8)
        answers[i] = (data, closed_at - t_open)

    threads = [threading.Thread(target=drip, args=(s,)) for s in socks]
    threads += [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    try:
        # others are served fast while 20 slow clients hold connections
        for _ in range(10):
            assert _balance_ok(sc) < 1.0
    finally:
        for t in threads[len(socks):]:
            t.join()
        stop.set()
        for t in threads[: len(socks)]:
            t.join()
        for s in socks:
            s.close()
    assert len(answers) == len(socks)
    for data, after in answers.values():
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"http.read_timeout" in data
        # dropped at the read timeout (not at the 30 s the drip would take), not before
        assert READ_TIMEOUT - 0.5 <= after < READ_TIMEOUT + 3, after
    dropped = _access_lines(sc, "http.read_timeout")
    assert len(dropped) >= len(socks) and dropped[-1]["code"] == "DEADLINE_EXCEEDED"


def test_a_request_sent_whole_is_not_cut_by_the_read_timeout_on_a_kept_alive_connection(
        sc: Sidecar) -> None:
    s = _connect(sc)
    f = s.makefile("rb")
    try:
        for _ in range(3):  # three requests, READ_TIMEOUT apart in total: each arrives whole
            s.sendall(b"GET /v1/accounts/1001/balance HTTP/1.1\r\nHost: x\r\n\r\n")
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert json.loads(f.read(length))["balanceCents"]
            time.sleep(READ_TIMEOUT / 2 + 0.2)
    finally:
        f.close()
        s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(sc: Sidecar) -> None:
    s = _connect(sc)
    t0 = time.monotonic()
    data, closed = _read_all(s, IDLE_TIMEOUT + 5)
    s.close()
    assert data == b""
    assert IDLE_TIMEOUT - 0.5 <= closed - t0 < IDLE_TIMEOUT + 3


@pytest.mark.parametrize("headers", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(25)),  # 25 fields: over max_headers (20)
    b"X-Big: " + b"b" * 3000 + b"\r\nX-Big2: " + b"b" * 3000 + b"\r\n",  # 6 kB: over 4096 bytes
    b"X-Huge: " + b"h" * 20000 + b"\r\n",  # one line longer than all headers may be
])
def test_header_limits_answer_431(sc: Sidecar, headers: bytes) -> None:
    s = _connect(sc)
    try:
        s.sendall(b"GET /v1/accounts/1001/balance HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        data, _ = _read_all(s, 5)
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == 8 and "http.max_header" in body["message"], body
    assert _balance_ok(sc) < 1.0
    lines = _access_lines(sc, "http.max_header")
    assert lines and lines[-1]["code"] == "RESOURCE_EXHAUSTED" and lines[-1]["front"] == "http"


def test_a_declared_oversized_body_gets_413_before_it_is_sent(sc: Sidecar) -> None:
    s = _connect(sc)
    try:
        # headers only: the 10 MB body is never sent, yet the answer comes at once
        s.sendall(b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10000000\r\n\r\n")
        t0 = time.monotonic()
        s.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            data += s.recv(65536)
        answered = time.monotonic() - t0
        # then the connection closes, after the read timeout at most (the body never came)
        rest, closed = _read_all(s, READ_TIMEOUT + 5)
        assert rest == b"" and closed - t0 < READ_TIMEOUT + 3
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert answered < 1.0
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == 8 and "max_body_bytes" in body["message"], body
    lines = _access_lines(sc, "request body of 10000000 bytes")
    assert lines and lines[-1]["method"] == "/v1/transfers" and lines[-1]["http_method"] == "POST"
    # a chunked body (no declared length) over the bound is still 413, read and dropped
    status, body2, _ = sc.http("POST", "/v1/transfers", raw=b"{" + b" " * (MAX_BODY * 2) + b"}",
                               headers={"Content-Type": "application/json"})
    assert status == 413 and body2["code"] == 8
    # a large body sent whole before reading (what most clients do) still gets its 413
    status, body3, _ = sc.http("POST", "/v1/transfers", raw=b"x" * (8 * 1024 * 1024),
                               headers={"Content-Type": "application/json"})
    assert status == 413 and "max_body_bytes" in body3["message"], body3
    assert _balance_ok(sc) < 1.0


def test_grpc_connections_that_send_nothing_do_not_hurt_others(sc: Sidecar) -> None:
    silent = [_connect(sc, "grpc") for _ in range(50)]
    # and some that send half of the HTTP/2 preface
    half = [_connect(sc, "grpc") for _ in range(10)]
    for s in half:
        s.sendall(b"PRI * HTTP/2.0\r\n")
    try:
        client = sc.grpc_client()
        try:
            for _ in range(10):
                t0 = time.monotonic()
                reply = client.call("ledger.v1.Ledger.GetBalance", account_id="1001", timeout=5)
                assert reply.balance_cents > 0
                assert time.monotonic() - t0 < 1.0
        finally:
            client.close()
        assert _balance_ok(sc) < 1.0
    finally:
        for s in silent + half:
            s.close()
