"""The ledger fixture keeps its protocol promises, seen from a plain socket.

Adaptercar's own tests trust this fixture to behave like the legacy server it stands in for, so
its quirks (no `.` after an ERR ending a listing, byte-counted payloads holding CRLF, strict
in-order answers, the framings) are pinned down here against the real process. The client side
framing is written out independently below, so a bug in the server's framing cannot hide itself.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the sans-IO framing is also tested in-process
    sys.path.insert(0, str(REPO_ROOT))

from legacy_fixtures.ledger.server import FRAMINGS, framing_factory  # noqa: E402

CRLF = b"\r\n"
TIMEOUT = 5.0


# --------------------------------------------------------------------------- process + client


@dataclass
class LedgerProcess:
    proc: subprocess.Popen[str]
    port: int

    def connect(self, framing: str = "crlf") -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT), framing)


@pytest.fixture
def start_ledger() -> Iterator[Callable[..., LedgerProcess]]:
    """Start fixture processes on free ports; every one is killed when the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> LedgerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "legacy_fixtures.ledger", "--port", "0", *args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING "):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"ledger did not start: {line!r} {err}")
        return LedgerProcess(proc, int(line.rsplit(":", 1)[1]))

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate()


# Client-side framing, written independently of the server's: encode a frame, read a frame.
ENCODE: dict[str, Callable[[bytes], bytes]] = {
    "crlf": lambda p: p + b"\r\n",
    "lf": lambda p: p + b"\n",
    "lp4": lambda p: len(p).to_bytes(4, "big") + p,
    "lp2": lambda p: len(p).to_bytes(2, "big") + p,
    "lp1": lambda p: len(p).to_bytes(1, "big") + p,
    "ascii4": lambda p: b"%04d" % len(p) + p,
    "fixed80": lambda p: p.ljust(80 * max(1, -(-len(p) // 80)), b" "),
    "stxetx": lambda p: b"\x02" + p + b"\x03",
}


class Client:
    def __init__(self, sock: socket.socket, framing: str = "crlf") -> None:
        self.sock = sock
        self.framing = framing
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buf!r}")
        self.buf += data

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def until(self, delim: bytes) -> bytes:
        while (i := self.buf.find(delim)) < 0:
            self._fill()
        data, self.buf = self.buf[:i], self.buf[i + len(delim) :]
        return data

    def frame(self) -> bytes:
        kind = self.framing
        if kind in ("crlf", "lf"):
            return self.until(CRLF if kind == "crlf" else b"\n")
        if kind.startswith("lp"):
            width = int(kind[2:])
            return self.exact(int.from_bytes(self.exact(width), "big"))
        if kind == "ascii4":
            return self.exact(int(self.exact(4)))
        if kind == "fixed80":
            return self.exact(80).rstrip(b" ")
        frame = self.until(b"\x03")
        assert frame.startswith(b"\x02"), frame
        return frame[1:]

    def send(self, payload: bytes) -> None:
        self.sock.sendall(ENCODE[self.framing](payload))

    def line(self) -> str:
        return self.frame().decode("latin-1")

    def cmd(self, text: str) -> str:
        self.send(text.encode("latin-1"))
        return self.line()

    def until_dot(self) -> list[str]:
        lines = []
        while (line := self.line()) != ".":
            lines.append(line)
        return lines

    def closed(self) -> bool:
        """True when the server hung up (EOF or reset) within the timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def logged_in(ledger: LedgerProcess, framing: str = "crlf") -> Client:
    client = ledger.connect(framing)
    assert client.line() == "LEDGER READY v1.0"
    assert client.cmd("LOGIN demo demo") == "OK"
    return client


# --------------------------------------------------------------------------- protocol


def test_banner_then_login_required(start_ledger: Callable[..., LedgerProcess]) -> None:
    client = start_ledger().connect()
    assert client.line() == "LEDGER READY v1.0"
    assert client.cmd("BAL 1001") == "ERR 403 login required"
    assert client.cmd("HIST 1001 010") == "ERR 403 login required"
    assert client.cmd("PING") == "PONG"
    assert client.cmd("LOGIN demo wrong") == "ERR 401 bad credentials"
    assert client.cmd("BAL 1001") == "ERR 403 login required"
    assert client.cmd("LOGIN demo demo") == "OK"
    assert client.cmd("BAL 1001") == "OK 125000 EUR"
    assert client.cmd("") == "ERR 400 unknown command"
    assert client.cmd("FROB 1") == "ERR 400 unknown command"
    assert client.cmd("QUIT") == "BYE"
    assert client.closed()


def test_credentials_come_from_options(start_ledger: Callable[..., LedgerProcess]) -> None:
    client = start_ledger("--user", "alice", "--password", "s3cret").connect()
    client.line()
    assert client.cmd("LOGIN demo demo") == "ERR 401 bad credentials"
    assert client.cmd("LOGIN alice s3cret") == "OK"


def test_balance_and_unknown_account(start_ledger: Callable[..., LedgerProcess]) -> None:
    client = logged_in(start_ledger())
    assert client.cmd("BAL 1002") == "OK 5000 EUR"
    assert client.cmd("BAL 2001") == "OK 0 USD"
    assert client.cmd("BAL 9999") == "ERR 404 no such account 9999"
    assert client.cmd("BAL ACC-Ü") == "ERR 404 no such account ACC-Ü"


def test_transfer_moves_money_and_reports_errors(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    client = logged_in(start_ledger())
    assert client.cmd("XFER 1001 1002 12000") == "OK TX000001"
    assert client.cmd("BAL 1001") == "OK 113000 EUR"
    assert client.cmd("BAL 1002") == "OK 17000 EUR"
    assert client.cmd("XFER 1002 1001 17001") == "ERR 409 insufficient funds"
    assert client.cmd("XFER 1001 9999 1") == "ERR 404 no such account 9999"
    assert client.cmd("XFER 8888 1001 1") == "ERR 404 no such account 8888"
    for amount in ("-5", "0", "12a", "1.5"):
        assert client.cmd(f"XFER 1001 1002 {amount}") == "ERR 400 bad amount", amount
    assert client.cmd("XFER 1002 1001 17000") == "OK TX000002"
    assert client.cmd("BAL 1002") == "OK 0 EUR"


def test_hist_records_are_fixed_width(start_ledger: Callable[..., LedgerProcess]) -> None:
    client = logged_in(start_ledger())
    assert client.cmd("XFER 1001 1002 12000") == "OK TX000001"
    client.send(b"HIST 1001 010")
    raw = []
    while (frame := client.frame()) != b".":
        raw.append(frame)
    assert len(raw) == 6 and all(len(r) == 60 for r in raw)
    newest = raw[0].decode("latin-1")
    assert newest[:8] == time.strftime("%Y%m%d")
    assert newest[8:20] == "      -12000"
    assert newest[20:].rstrip() == "TRANSFER TO 1002 TX000001"
    assert b"Caf\xe9 M\xfcller" in raw[-2]  # latin-1 on the wire, not UTF-8
    assert raw[-1].decode("latin-1") == "19970103      150000" + "OPENING DEPOSIT".ljust(40)
    assert sum(int(r[8:20]) for r in raw) == 113000
    client.send(b"HIST 1001 002")
    assert len(client.until_dot()) == 2
    client.send(b"HIST 1001 0")
    assert len(client.until_dot()) == 6  # 0 means every row
    assert client.cmd("HIST 2001 010") == "."
    # An unknown account ends the reply with the ERR line alone: no "." follows it.
    assert client.cmd("HIST 9999 010") == "ERR 404 no such account 9999"
    assert client.cmd("PING") == "PONG"
    assert client.cmd("HIST 1001 ten") == "ERR 400 bad limit"


def test_note_payload_with_crlf_shows_in_statement(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    ledger = start_ledger()
    client = logged_in(ledger)
    note = "Rückruf erbeten\r\nSTMT 1001\r\n.".encode("latin-1")
    client.sock.sendall(b"NOTE 1001 %d\r\n" % len(note) + note + CRLF)
    assert client.line() == "OK"
    # An unknown account still consumes its payload: the next line is a fresh command.
    client.sock.sendall(b"NOTE 9999 6\r\nPING\r\n\r\nPING\r\n")
    assert client.line() == "ERR 404 no such account 9999"
    assert client.line() == "PONG"

    other = logged_in(ledger)  # notes are shared state, like the accounts
    header = other.cmd("STMT 1001")
    name, account, size = header.split(" ")
    assert (name, account) == ("STMT", "1001")
    body = other.exact(int(size))
    assert other.exact(2) == CRLF
    text = body.decode("latin-1")
    assert "BALANCE 125000 EUR" in text
    assert note.decode("latin-1") in text
    assert text.split("\r\n")[3] == "NOTES 1"
    empty_size = int(other.cmd("STMT 2001").removeprefix("STMT 2001 "))
    assert b"\r\nNOTES 0\r\n" in other.exact(empty_size)
    assert other.exact(2) == CRLF
    assert other.cmd("STMT 9999") == "ERR 404 no such account 9999"
    assert other.cmd("PING") == "PONG"


def test_note_payload_not_followed_by_crlf_hangs_up(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    client = logged_in(start_ledger())
    client.sock.sendall(b"NOTE 1001 3\r\nabcXY")
    assert client.line() == "ERR 400 payload not followed by line end"
    assert client.closed()


def test_stats_reports_sessions_and_transfers(start_ledger: Callable[..., LedgerProcess]) -> None:
    ledger = start_ledger()
    first = logged_in(ledger)
    second = logged_in(ledger)
    assert first.cmd("XFER 1001 1002 1") == "OK TX000001"
    second.send(b"STATS")
    stats = dict(line.split("=", 1) for line in second.until_dot())
    assert stats["accounts"] == "3"
    assert stats["sessions"] == "2"
    assert stats["transfers_total"] == "1"
    assert 0 <= float(stats["uptime_seconds"]) < 60
    assert first.cmd("QUIT") == "BYE"
    deadline = time.monotonic() + TIMEOUT
    while stats["sessions"] != "1" and time.monotonic() < deadline:  # the hang-up is async
        second.send(b"STATS")
        stats = dict(line.split("=", 1) for line in second.until_dot())
    assert stats["sessions"] == "1"


def test_pipelined_requests_are_answered_in_order(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    client = logged_in(start_ledger("--test-commands"))
    requests = ["SLOW 150 ECHO first", "ECHO second", "BAL 1001", "XFER 1001 1002 5",
                "BAL 1002", "HIST 2001 1", "PING"]
    client.sock.sendall(b"".join(r.encode() + CRLF for r in requests))
    answers = [client.line() for _ in requests]
    assert answers == ["OK first", "OK second", "OK 125000 EUR", "OK TX000001", "OK 5005 EUR",
                       ".", "PONG"]


def test_line_too_long_hangs_up(start_ledger: Callable[..., LedgerProcess]) -> None:
    ledger = start_ledger()
    client = logged_in(ledger)
    assert client.cmd("PING " + "x" * 8000) == "PONG"  # long but within 8192
    client.sock.sendall(b"PING " + b"x" * 9000)
    assert client.line() == "ERR 400 line too long"
    assert client.closed()
    assert logged_in(ledger).cmd("PING") == "PONG"  # the server itself is fine


def test_test_commands_are_off_by_default(start_ledger: Callable[..., LedgerProcess]) -> None:
    client = logged_in(start_ledger())
    for command in ("ECHO hi", "BIG 3", "SLOW 1 PING", "EXTRA PING", "SILENT"):
        assert client.cmd(command) == "ERR 400 unknown command", command


def test_failure_modes(start_ledger: Callable[..., LedgerProcess]) -> None:
    ledger = start_ledger("--test-commands")
    client = logged_in(ledger)
    assert client.cmd("ECHO  two  spaces") == "OK two  spaces"
    assert client.cmd("BIG 10000") == "OK " + "x" * 10000
    assert client.cmd("EXTRA BAL 1002") == "OK 5000 EUR"
    assert client.line() == "UNSOLICITED"
    started = time.monotonic()
    assert client.cmd("SLOW 200 PING") == "PONG"
    assert time.monotonic() - started >= 0.19
    assert client.cmd("SLOW 1 BAL 9999") == "ERR 404 no such account 9999"
    client.sock.sendall(b"SILENT\r\nPING\r\n")
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.line()
    fresh = ledger.connect()
    assert fresh.line() == "LEDGER READY v1.0"
    assert fresh.cmd("SLOW 1 PING") == "ERR 403 login required"


def test_journal_records_every_frame_and_payload(
    start_ledger: Callable[..., LedgerProcess], tmp_path: Path
) -> None:
    journal = tmp_path / "journal.log"
    client = logged_in(start_ledger("--journal", str(journal)))
    client.sock.sendall(b"NOTE 1001 4\r\na\r\nb\r\nBAL 1002\r\n")
    assert client.line() == "OK"
    assert client.line() == "OK 5000 EUR"
    lines = journal.read_text(encoding="utf-8").splitlines()
    assert lines == [repr(b"LOGIN demo demo"), repr(b"NOTE 1001 4"), repr(b"a\r\nb"),
                     repr(b"BAL 1002")]


def test_sigterm_stops_the_server_with_clients_connected(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    ledger = start_ledger("--test-commands")
    client = logged_in(ledger)
    client.sock.sendall(b"SILENT\r\n")
    time.sleep(0.1)
    ledger.proc.send_signal(signal.SIGTERM)
    assert ledger.proc.wait(timeout=5) == 0
    assert client.closed()


def test_bad_options_are_clear_errors(start_ledger: Callable[..., LedgerProcess]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for args, code, message in [
        (["--framing", "morse"], 2, "invalid choice"),
        (["--encoding", "klingon"], 2, "unusable encoding"),
        (["--port", "70000"], 2, "not a TCP port"),
        (["--port", str(start_ledger().port)], 1, "cannot listen"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "legacy_fixtures.ledger", *args], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=10,
        )
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- framings


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_framing_carries_the_protocol(
    start_ledger: Callable[..., LedgerProcess], framing: str
) -> None:
    client = logged_in(start_ledger("--framing", framing), framing)
    assert client.cmd("BAL 1001") == "OK 125000 EUR"
    assert client.cmd("BAL nope") == "ERR 404 no such account nope"
    client.send(b"HIST 1001 2")
    records = client.until_dot()
    assert [r[:20] for r in records] == ["19970228        -500", "19970214       -4500"]
    assert client.cmd("STATS").startswith("accounts=")


@pytest.mark.parametrize("framing", ["lp4", "stxetx", "fixed80"])
def test_note_and_statement_payloads_are_next_frames(
    start_ledger: Callable[..., LedgerProcess], framing: str
) -> None:
    client = logged_in(start_ledger("--framing", framing), framing)
    note = ("line one\r\nline two: " + "é" * 90).encode("latin-1")
    client.send(b"NOTE 1002 %d" % len(note))
    client.send(note)
    assert client.line() == "OK"
    header = client.cmd("STMT 1002").split(" ")
    size = int(header[2])
    body = client.exact(80 * -(-size // 80))[:size] if framing == "fixed80" else client.frame()
    assert len(body) == size
    assert note in body and b"BALANCE 5000 EUR" in body
    assert client.cmd("PING") == "PONG"


def test_length_prefixed_payload_must_match_announced_length(
    start_ledger: Callable[..., LedgerProcess],
) -> None:
    client = logged_in(start_ledger("--framing", "lp2"), "lp2")
    client.send(b"NOTE 1001 5")
    client.send(b"abc")
    assert client.line() == "ERR 400 payload length mismatch"
    assert client.cmd("PING") == "PONG"


def test_ebcdic_encoding(start_ledger: Callable[..., LedgerProcess]) -> None:
    ledger = start_ledger("--encoding", "cp037", "--framing", "lp4")
    client = ledger.connect("lp4")
    assert client.frame() == "LEDGER READY v1.0".encode("cp037")
    client.send("LOGIN demo demo".encode("cp037"))
    assert client.frame() == "OK".encode("cp037")
    client.send("BAL 1001".encode("cp037"))
    assert client.frame().decode("cp037") == "OK 125000 EUR"


# --------------------------------------------------------------------------- sans-IO framing

FORBIDDEN = {"crlf": b"\r\n", "lf": b"\n", "stxetx": b"\x03"}
LIMIT = {"lp1": 255, "fixed80": 80}


def _valid(framing: str, payload: bytes) -> bool:
    if framing in FORBIDDEN and FORBIDDEN[framing] in payload:
        return False
    if framing == "fixed80" and payload.endswith(b" "):
        return False  # trailing pad is stripped by design
    return len(payload) <= LIMIT.get(framing, 8192)


@given(
    framing=st.sampled_from(FRAMINGS),
    payloads=st.lists(st.binary(max_size=120), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_frames_survive_any_chunking(framing: str, payloads: list[bytes], cuts: list[int]) -> None:
    payloads = [p for p in payloads if _valid(framing, p)]
    stream = b"".join(ENCODE[framing](p) for p in payloads)
    decoder = framing_factory(framing, "latin-1")()
    got: list[bytes] = []
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos : pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == payloads


@given(framing=st.sampled_from(FRAMINGS), data=st.binary(max_size=300))
def test_blocks_round_trip(framing: str, data: bytes) -> None:
    if framing == "lp1":
        data = data[:255]
    if framing == "stxetx":
        data = data.replace(b"\x03", b"")
    encoder = framing_factory(framing, "latin-1")()
    decoder = framing_factory(framing, "latin-1")()
    decoder.feed(encoder.encode_block(data) + encoder.encode_frame(b"PING"))
    assert decoder.next_block(len(data)) == data
    assert decoder.next_frame() == b"PING"
