"""refuse_new_handshakes: on a real loopback listener, what was queued before stays acceptable,
nothing new completes afterwards, and a client caught in between is refused, not reset."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from adaptercar.runtime.handshakes import refuse_new_handshakes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters are Linux's")


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_queued_connections_stay_acceptable_and_no_new_one_completes() -> None:
    lst = _listener()
    port = lst.getsockname()[1]
    early = socket.create_connection(("127.0.0.1", port), timeout=2)
    early.sendall(b"hello")
    assert refuse_new_handshakes(lst)
    late = socket.socket()
    late.settimeout(0.3)
    with pytest.raises(TimeoutError):  # the SYN is dropped: no handshake, no queue entry
        late.connect(("127.0.0.1", port))
    late.close()
    lst.settimeout(0.2)
    conn, _ = lst.accept()  # the one queued before is still there, with its bytes
    assert conn.recv(5) == b"hello"
    with pytest.raises(TimeoutError):  # and nothing else is queued
        lst.accept()
    conn.close()
    early.close()
    lst.close()


def test_a_client_caught_while_the_listener_closes_is_refused_not_reset() -> None:
    lst = _listener()
    port = lst.getsockname()[1]
    assert refuse_new_handshakes(lst)
    outcome: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            outcome.append("connected")
        except ConnectionRefusedError:
            outcome.append("refused")
        except OSError as e:
            outcome.append(repr(e))

    t = threading.Thread(target=connect)
    started = time.monotonic()
    t.start()
    time.sleep(0.2)  # its first SYN was dropped; the listener closes before the retransmit
    lst.close()
    t.join(10)
    assert outcome == ["refused"]
    assert time.monotonic() - started < 4  # refused at the first SYN retransmit (~1 s)


_PORT_SCRIPT = r'''
import json, socket
from twisted.internet import protocol, reactor
from adaptercar.runtime.worker import _draining_port_class

accepted = []
class Counted(protocol.Protocol):
    def connectionMade(self):
        accepted.append(self)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(50)
sock.setblocking(False)
port = _draining_port_class()._fromListeningDescriptor(
    reactor, sock.fileno(), sock.family, protocol.Factory.forProtocol(Counted))
port.startListening()
sock.close()
addr = ("127.0.0.1", port.getHost().port)
early = socket.create_connection(addr, timeout=2)  # queued: the reactor has not run yet
out = {}
stopped = port.stopListening()
late = socket.socket()
late.settimeout(0.3)
try:
    late.connect(addr)
    out["during_stop"] = "connected"
except TimeoutError:
    out["during_stop"] = "no handshake"

def closed(_):
    out["accepted"] = len(accepted)
    try:
        socket.create_connection(addr, timeout=2).close()
        out["after_close"] = "connected"
    except ConnectionRefusedError:
        out["after_close"] = "refused"
    print(json.dumps(out))
    reactor.stop()

stopped.addCallback(closed)
reactor.run()
'''


def test_the_json_listener_stops_handshakes_accepts_its_queue_then_closes() -> None:
    """The Port the JSON front listens with, on Twisted's own reactor: stopListening refuses new
    handshakes at once, the connection queued before it is accepted, and then the port is
    closed (refused)."""
    proc = subprocess.run([sys.executable, "-c", _PORT_SCRIPT], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"during_stop": "no handshake", "accepted": 1,
                                       "after_close": "refused"}
