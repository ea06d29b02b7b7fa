"""What the hot-path work changed in how the sidecar talks, checked end to end.

The JSON front answers with a Content-Length (not chunked) and keeps idle connections only as
long as before; a line pool watches every call's deadline with one timer, so a short deadline
still fires while a longer call is outstanding; line connections run on asyncio's transport,
over TCP and over unix sockets, with the same error messages; a cancelled gRPC call leaves
the connection in step.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol as TxProtocol

from adaptercar.backends.line import _AioProtocol
from adaptercar.protos import compile_protos
from tests.harness import (
    ECHO_MAPPING,
    ECHO_PROTO,
    ROOT,
    Ledger,
    env_with_root,
    free_port,
    ledger_backend,
)

KV = ROOT / "benchmarks" / "kv"



def echo_config(tmp_path: Path, address: str, **line: Any) -> dict[str, Any]:
    (tmp_path / "protos").mkdir(exist_ok=True)
    (tmp_path / "protos" / "echo.proto").write_text(ECHO_PROTO)
    (tmp_path / "mappings").mkdir(exist_ok=True)
    (tmp_path / "mappings" / "echo.yaml").write_text(ECHO_MAPPING)
    return {
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(tmp_path / "protos")], "mappings": [str(tmp_path / "mappings")],
        "log": {"level": "warning"},
        "backends": {"ledger": ledger_backend(address, **line)},
    }


def grpc_call(port: int, protos: Path, method: str, timeout: float = 10.0, **fields: Any) -> Any:
    """One unary call with message classes compiled from `protos` ("pkg.Service.Method")."""
    ps = compile_protos([protos])
    service, name = method.rsplit(".", 1)
    md = ps.services()[service].methods_by_name[name]
    req_cls, resp_cls = ps.message_class(md.input_type), ps.message_class(md.output_type)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(f"/{service}/{name}", request_serializer=req_cls.SerializeToString,
                              response_deserializer=resp_cls.FromString)
        return stub(req_cls(**fields), timeout=timeout)


def kv_config(address: str) -> dict[str, Any]:
    return {
        "grpc": {}, "http": {}, "admin": {},
        "protos": [str(KV / "protos")], "mappings": [str(KV / "mappings")],
        "log": {"level": "warning"},
        "backends": {"memcached": {"line": {
            "address": address, "framing": {"delimiter": "\r\n"},
            "pool": {"size": 2, "pipeline": 16}, "timeout": "2s", "connect_timeout": "1s",
        }}},
    }


# --- the JSON front on the wire --------------------------------------------------------------

def test_json_answers_have_a_length_and_the_connection_stays_open(
    ledger: Ledger, sidecars: Any, tmp_path: Path
) -> None:
    sc = sidecars(echo_config(tmp_path, ledger.address), single_process=True)
    conn = http.client.HTTPConnection("127.0.0.1", sc.ports["http"], timeout=10)
    try:
        for i in range(3):  # one connection: keep-alive works with the cheaper idle timer
            conn.request("POST", "/v1/echo", body=f'{{"text": "hi {i}"}}',
                         headers={"content-type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200
            assert body == f'{{"text": "hi {i}"}}'.encode()
            assert r.getheader("content-length") == str(len(body))
            assert r.getheader("transfer-encoding") is None
        # errors too (answered by the resource directly, as before)
        conn.request("GET", "/nope")
        r = conn.getresponse()
        assert r.status == 404 and r.getheader("content-length") == str(len(r.read()))
    finally:
        conn.close()


IDLE_SERVER = """
import sys
from adaptercar.runtime import reactor as setup
setup.install()
from twisted.internet import reactor
from adaptercar.fronts.calls import ConfigSet, CurrentSet
from adaptercar.fronts.http_front import make_site
cs = ConfigSet(generation=1, config=None, protoset=None, methods={}, backends={})
cs.openapi = b'{"openapi": "3.0.3"}'
site = make_site(CurrentSet(cs), 1024)
site.timeOut = float(sys.argv[1])
port = reactor.listenTCP(0, site, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def _closed_within(sock: socket.socket, limit: float) -> bool:
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False


def test_idle_http_connections_are_still_closed() -> None:
    """The idle timeout moved from a timer per request to a deadline per connection: an idle
    connection is still closed, an active one is not."""
    proc = subprocess.Popen([sys.executable, "-c", IDLE_SERVER, "1.0"], stdout=subprocess.PIPE,
                            env=env_with_root(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        # never says a word: closed after the timeout
        idle = socket.create_connection(("127.0.0.1", port))
        assert _closed_within(idle, 15), "an idle connection was never closed"
        idle.close()
        # busy for longer than the timeout, each request answered on the same connection
        busy = socket.create_connection(("127.0.0.1", port))
        busy.settimeout(10)
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            busy.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b'"3.0.3"}' not in got:
                chunk = busy.recv(65536)
                assert chunk, "an active connection was closed as idle"
                got += chunk
            assert got.startswith(b"HTTP/1.1 200")
            time.sleep(0.1)
        # and once it goes quiet, it is closed too
        assert _closed_within(busy, 15), "a connection gone idle was never closed"
        busy.close()
    finally:
        proc.terminate()
        proc.wait(10)


# --- deadlines watched by one timer per pool ------------------------------------------------------

def test_a_short_deadline_fires_while_a_longer_call_is_outstanding(
    ledger: Ledger, sidecars: Any, tmp_path: Path
) -> None:
    """The pool's timer sleeps until the earliest deadline: a call arriving with a deadline
    earlier than the one it sleeps for must wake it sooner (Hang's 1s, under Slow's 5s)."""
    cfg = echo_config(tmp_path, ledger.address, timeout="5s", pool={"size": 2, "pipeline": 1})
    sc = sidecars(cfg, single_process=True)
    slow: dict[str, Any] = {}

    def call_slow() -> None:
        slow["answer"] = sc.http("POST", "/v1/slow", body={"text": "late", "ms": 4000})

    t = threading.Thread(target=call_slow)
    t.start()
    time.sleep(0.3)  # Slow is out, its 5 s deadline armed
    started = time.monotonic()
    status, body, _ = sc.http("POST", "/v1/hang", body={})
    took = time.monotonic() - started
    t.join(15)
    assert status == 504 and body["code"] == 4, body
    assert took < 3.0, f"Hang's 1 s deadline fired only after {took:.1f}s (the pool slept on)"
    assert slow["answer"][0] == 200 and slow["answer"][1] == {"text": "late"}
    # the pool is fine afterwards
    assert sc.http("POST", "/v1/echo", body={"text": "after"})[1] == {"text": "after"}


def test_grpc_deadline_mid_call_leaves_the_connection_in_step(
    ledger: Ledger, sidecars: Any, tmp_path: Path
) -> None:
    cfg = echo_config(tmp_path, ledger.address, pool={"size": 1, "pipeline": 4})
    sc = sidecars(cfg, single_process=True)
    port, protos = sc.ports["grpc"], tmp_path / "protos"
    with pytest.raises(grpc.RpcError) as ei:
        grpc_call(port, protos, "echo.v1.Echo.Slow", text="x", ms=800, timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    # the cancelled call's reply arrives later and is read and dropped: the next callers on
    # the same (only) connection get their own answers
    for i in range(5):
        assert grpc_call(port, protos, "echo.v1.Echo.Echo", text=f"n{i}").text == f"n{i}"


# --- asyncio transports: unix sockets, messages ------------------------------------------------

@pytest.fixture
def memcached_unix(tmp_path: Path) -> Any:
    exe = shutil.which("memcached")
    if exe is None:
        pytest.skip("memcached is not installed (make test-debs)")
    path = tmp_path / "mc.sock"
    argv = [exe, "-s", str(path), "-U", "0", "-t", "1", "-m", "16"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < end, "memcached did not start"
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"set bench 7 0 5\r\nhello\r\n")
        assert s.recv(100) == b"STORED\r\n"
    yield path
    proc.terminate()
    proc.wait(10)


def test_unix_socket_backend(memcached_unix: Path, sidecars: Any) -> None:
    sc = sidecars(kv_config(f"unix:{memcached_unix}"), single_process=True)
    status, body, _ = sc.http("GET", "/v1/cache/bench")
    assert (status, body) == (200, {"key": "bench", "flags": 7, "value": "hello"})
    status, body, _ = sc.http("GET", "/v1/cache/absent")
    assert status == 404 and body["message"] == "no value for key absent"
    reply = grpc_call(sc.ports["grpc"], KV / "protos", "kv.v1.Cache.Get", key="bench")
    assert (reply.key, reply.flags, reply.value) == ("bench", 7, "hello")


def test_connect_errors_read_as_before(sidecars: Any, tmp_path: Path) -> None:
    port = free_port()
    sc = sidecars(kv_config(f"127.0.0.1:{port}"), single_process=True, wait_ready=False)
    status, body, _ = sc.http("GET", "/v1/cache/bench")
    assert status == 503
    assert body["message"] == f"backend memcached is unavailable: connection to 127.0.0.1:{port} refused"
    missing = tmp_path / "nobody-listens.sock"
    sc2 = sidecars(kv_config(f"unix:{missing}"), single_process=True, wait_ready=False)
    status, body, _ = sc2.http("GET", "/v1/cache/bench")
    assert status == 503
    assert body["message"] == (
        f"backend memcached is unavailable: cannot connect to unix:{missing}: "
        "No such file or directory"
    )
    sc3 = sidecars(kv_config(f"no-such-host.invalid:{port}"), single_process=True, wait_ready=False)
    status, body, _ = sc3.http("GET", "/v1/cache/bench")
    assert status == 503
    assert body["message"] == (
        f"backend memcached is unavailable: cannot resolve the host of no-such-host.invalid:{port}"
    )


# --- the asyncio bridge under every loop and socket kind ---------------------------------------
# A full run once failed in connection_made on uvloop, whose transports are not
# asyncio.Transport instances: the bridge must ask nothing of a transport's class.

class _Recorder(TxProtocol):
    """A Twisted protocol that records what the bridge does to it."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Any = None
        self.got = asyncio.Event()
        self.gone = asyncio.Event()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.data += data
        if self.data.endswith(b"\n"):
            self.got.set()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's name
        self.lost = reason
        self.gone.set()


async def _bridge_round_trip(kind: str, tmp_path: Path) -> tuple[_Recorder, _Recorder]:
    loop = asyncio.get_running_loop()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(b"OK " + line)
                await writer.drain()
        finally:
            writer.close()

    if kind == "unix":
        path = str(tmp_path / "echo.sock")
        server = await asyncio.start_unix_server(echo, path)
    else:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    protos = []
    async with server:
        for close in ("loseConnection", "abortConnection"):
            proto = _Recorder()
            bridge = _AioProtocol(proto, tcp=kind == "tcp")  # type: ignore[arg-type]
            if kind == "unix":
                await loop.create_unix_connection(lambda b=bridge: b, path)  # type: ignore[misc]
            else:
                await loop.create_connection(lambda b=bridge: b, "127.0.0.1", port)  # type: ignore[misc]
            t: Any = proto.transport
            assert t is not None
            if kind == "tcp":
                t.setTcpKeepAlive(1)  # type: ignore[attr-defined]
            t.write(b"hello\n")
            await asyncio.wait_for(proto.got.wait(), 5)
            getattr(t, close)()
            await asyncio.wait_for(proto.gone.wait(), 5)
            protos.append(proto)
    return protos[0], protos[1]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_asyncio_bridge_works_on_every_loop_and_socket(loop_kind: str, kind: str, tmp_path: Path) -> None:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        closed, aborted = loop.run_until_complete(_bridge_round_trip(kind, tmp_path))
    finally:
        loop.close()
    for proto in (closed, aborted):
        assert proto.data == b"OK hello\n"
        assert proto.lost is not None  # a Failure, as Twisted's own transports give
    assert isinstance(closed.lost.value, ConnectionDone)
