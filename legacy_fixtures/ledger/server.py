"""The ledger fixture: an account server speaking a 1990s TCP line protocol.

It stands in for a legacy program adaptercar must not change, so it does what such programs do
and nothing kinder: one request at a time per connection, strictly in order, byte-counted
payloads that may contain the line end, an error line that ends a listing without its `.`,
and a hang-up on a line that is too long. The protocol is described in README.md.

The file has three layers so each can be read alone: framing (sans-IO: bytes in, frames out),
the session (sans-IO: one decoded request in, one `Reply` out) and a thin asyncio shell that
moves bytes between a socket and the two. Standard library only, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import dataclasses
import functools
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

BANNER = "LEDGER READY v1.0"
MAX_LINE = 8192
"""Longest request line (payload bytes, delimiter excluded) before the server hangs up."""
MAX_PAYLOAD = 1 << 20
"""Largest NOTE payload; a bigger announced length is refused and the connection closed."""
MAX_BIG = 64 << 20
FRAMINGS = ("crlf", "lf", "lp4", "lp2", "lp1", "ascii4", "fixed80", "stxetx")
STX = b"\x02"
ETX = b"\x03"
RECORD_SIZE = 80


# --------------------------------------------------------------------------- framing (sans-IO)


class FrameError(Exception):
    """The peer broke the framing: answer `reply` and hang up, as no resync is possible."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class Framing(ABC):
    """Cuts a byte stream into request frames and wraps reply frames, for one connection.

    `next_frame` reads a command; `next_block` reads a byte-counted payload announced by the
    command before it (for line framings: exactly n raw bytes plus the line end; for the others:
    the next frame). `encode_block` is the reply-side twin, used for STMT's body.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @abstractmethod
    def next_frame(self, limit: int = MAX_LINE) -> bytes | None:
        """Return the next complete frame, None if more bytes are needed."""

    def next_block(self, n: int) -> bytes | None:
        return self.next_frame(limit=MAX_PAYLOAD)

    @abstractmethod
    def encode_frame(self, payload: bytes) -> bytes: ...

    def encode_block(self, data: bytes) -> bytes:
        return self.encode_frame(data)


class DelimitedFraming(Framing):
    """Lines ended by a delimiter (CRLF or LF); payloads are raw bytes followed by it."""

    def __init__(self, delimiter: bytes) -> None:
        super().__init__()
        self._delim = delimiter

    def next_frame(self, limit: int = MAX_LINE) -> bytes | None:
        buf, dlen = self._buf, len(self._delim)
        end = buf.find(self._delim, 0, limit + dlen)
        if end < 0:
            if len(buf) >= limit + dlen:
                raise FrameError("ERR 400 line too long")
            return None
        frame = bytes(buf[:end])
        del buf[: end + dlen]
        return frame

    def next_block(self, n: int) -> bytes | None:
        buf, need = self._buf, n + len(self._delim)
        if len(buf) < need:
            return None
        if buf[n:need] != self._delim:
            raise FrameError("ERR 400 payload not followed by line end")
        block = bytes(buf[:n])
        del buf[:need]
        return block

    def encode_frame(self, payload: bytes) -> bytes:
        return payload + self._delim


class LengthPrefixFraming(Framing):
    """A big-endian binary length (1, 2 or 4 bytes) counting the payload only.

    A reply longer than the prefix can express is cut, as the original C program did.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self._width = width
        self._max = (1 << (8 * width)) - 1

    def _length(self, header: bytes) -> int:
        return int.from_bytes(header, "big")

    def next_frame(self, limit: int = MAX_LINE) -> bytes | None:
        buf, width = self._buf, self._width
        if len(buf) < width:
            return None
        n = self._length(bytes(buf[:width]))
        if n > limit:
            raise FrameError("ERR 400 line too long")
        if len(buf) < width + n:
            return None
        frame = bytes(buf[width : width + n])
        del buf[: width + n]
        return frame

    def encode_frame(self, payload: bytes) -> bytes:
        payload = payload[: self._max]
        return self._header(len(payload)) + payload

    def _header(self, n: int) -> bytes:
        return n.to_bytes(self._width, "big")


class AsciiLengthFraming(LengthPrefixFraming):
    """Four ASCII decimal digits, zero padded, counting the payload only."""

    def __init__(self) -> None:
        super().__init__(4)
        self._max = 9999

    def _length(self, header: bytes) -> int:
        if not (header.isascii() and header.isdigit()):
            raise FrameError("ERR 400 bad length header")
        return int(header)

    def _header(self, n: int) -> bytes:
        return b"%04d" % n


class FixedFraming(Framing):
    """Fixed-size records padded on the right; trailing pad is stripped from requests.

    A reply line longer than a record is cut. Payloads and bodies occupy as many whole records
    as they need (at least one); the announced byte count says where the data ends.
    """

    def __init__(self, size: int, pad: bytes) -> None:
        super().__init__()
        self._size = size
        self._pad = pad

    def _records(self, n: int) -> int:
        return max(1, -(-n // self._size))

    def next_frame(self, limit: int = MAX_LINE) -> bytes | None:
        if len(self._buf) < self._size:
            return None
        record = bytes(self._buf[: self._size])
        del self._buf[: self._size]
        return record.rstrip(self._pad)

    def next_block(self, n: int) -> bytes | None:
        need = self._records(n) * self._size
        if len(self._buf) < need:
            return None
        block = bytes(self._buf[:n])
        del self._buf[:need]
        return block

    def encode_frame(self, payload: bytes) -> bytes:
        return payload[: self._size].ljust(self._size, self._pad)

    def encode_block(self, data: bytes) -> bytes:
        return data.ljust(self._records(len(data)) * self._size, self._pad)


class StxEtxFraming(Framing):
    """STX payload ETX; line noise between frames is ignored, as serial-era programs did."""

    def next_frame(self, limit: int = MAX_LINE) -> bytes | None:
        buf = self._buf
        start = buf.find(STX)
        if start < 0:
            buf.clear()
            return None
        del buf[:start]
        end = buf.find(ETX, 1, limit + 2)
        if end < 0:
            if len(buf) >= limit + 2:
                raise FrameError("ERR 400 line too long")
            return None
        frame = bytes(buf[1:end])
        del buf[: end + 1]
        return frame

    def encode_frame(self, payload: bytes) -> bytes:
        return STX + payload + ETX


def framing_factory(name: str, encoding: str) -> Callable[[], Framing]:
    """Return a constructor of per-connection framings; delimiters and pad use `encoding`."""
    crlf, lf, space = ("\r\n".encode(encoding), "\n".encode(encoding), " ".encode(encoding))
    factories: dict[str, Callable[[], Framing]] = {
        "crlf": lambda: DelimitedFraming(crlf),
        "lf": lambda: DelimitedFraming(lf),
        "lp4": lambda: LengthPrefixFraming(4),
        "lp2": lambda: LengthPrefixFraming(2),
        "lp1": lambda: LengthPrefixFraming(1),
        "ascii4": AsciiLengthFraming,
        "fixed80": lambda: FixedFraming(RECORD_SIZE, space),
        "stxetx": StxEtxFraming,
    }
    try:
        return factories[name]
    except KeyError:
        raise ValueError(f"unknown framing {name!r} (expected one of {', '.join(FRAMINGS)})") from None


# --------------------------------------------------------------------------- ledger state


@dataclass
class Account:
    balance: int
    currency: str
    history: list[tuple[str, int, str]] = field(default_factory=list)  # oldest first
    notes: list[str] = field(default_factory=list)


def seed_accounts() -> dict[str, Account]:
    """The accounts every fresh server starts with; the history of 1001 adds up to its balance."""
    return {
        "1001": Account(
            125000,
            "EUR",
            [
                ("19970103", 150000, "OPENING DEPOSIT"),
                ("19970115", -12000, "Café Müller"),
                ("19970201", -8000, "Stadtwerke Köln STROM"),
                ("19970214", -4500, "Bücherei Lübeck"),
                ("19970228", -500, "BANK CHARGES"),
            ],
        ),
        "1002": Account(5000, "EUR", [("19970301", 5000, "OPENING DEPOSIT")]),
        "2001": Account(0, "USD"),
    }


class Ledger:
    """State shared by every connection of one server process."""

    def __init__(self, user: str, password: str, clock: Callable[[], float] = time.monotonic):
        self.user = user
        self.password = password
        self.accounts = seed_accounts()
        self.transfers_total = 0
        self.sessions = 0
        self._clock = clock
        self._started = clock()

    def uptime(self) -> float:
        return self._clock() - self._started

    def transfer(self, source: Account, target: Account, names: tuple[str, str], cents: int) -> str:
        self.transfers_total += 1
        txid = f"TX{self.transfers_total:06d}"
        today = time.strftime("%Y%m%d")
        source.balance -= cents
        target.balance += cents
        source.history.append((today, -cents, f"TRANSFER TO {names[1]} {txid}"))
        target.history.append((today, cents, f"TRANSFER FROM {names[0]} {txid}"))
        return txid


# --------------------------------------------------------------------------- session (sans-IO)


@dataclass(frozen=True)
class Reply:
    """What the shell must do after one request, in this order."""

    lines: tuple[bytes, ...] = ()
    body: bytes | None = None  # a byte-counted block sent after the lines (STMT)
    unsolicited: bool = False  # then an extra `UNSOLICITED` line (EXTRA)
    delay: float = 0.0  # seconds to wait before answering (SLOW)
    silent: bool = False  # answer nothing, ever again (SILENT)
    close: bool = False  # hang up after answering
    payload: int | None = None  # read this many payload bytes, then call `Session.payload`


def is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def hist_record(date: str, cents: int, memo: str) -> str:
    """One 60-character HIST record: date(8) + signed amount(12, right-aligned) + memo(40)."""
    return f"{date:8.8}{cents:12d}{memo:<40.40}"


OPEN_COMMANDS = frozenset({"PING", "QUIT", "LOGIN"})


class Session:
    """One connection's conversation: decoded request in, encoded `Reply` out."""

    def __init__(self, ledger: Ledger, *, encoding: str, test_commands: bool = False) -> None:
        self._ledger = ledger
        self._encoding = encoding
        self.logged_in = False
        self._pending_note: tuple[str, int] | None = None
        self._commands: dict[str, Callable[[str], Reply]] = {
            "LOGIN": self._login,
            "PING": self._ping,
            "QUIT": self._quit,
            "BAL": self._bal,
            "XFER": self._xfer,
            "HIST": self._hist,
            "NOTE": self._note,
            "STMT": self._stmt,
            "STATS": self._stats,
        }
        if test_commands:
            self._commands.update(
                SLOW=self._slow, EXTRA=self._extra, BIG=self._big, ECHO=self._echo,
                SILENT=self._silent,
            )

    def banner(self) -> bytes:
        return BANNER.encode(self._encoding)

    def handle(self, frame: bytes) -> Reply:
        return self._dispatch(frame.decode(self._encoding, "replace"))

    def payload(self, data: bytes) -> Reply:
        """Finish a NOTE whose payload the shell has just read."""
        assert self._pending_note is not None, "payload() without a NOTE"
        name, n = self._pending_note
        self._pending_note = None
        if len(data) != n:
            return self._say("ERR 400 payload length mismatch")
        account = self._ledger.accounts.get(name)
        if account is None:
            return self._no_such(name)
        account.notes.append(data.decode(self._encoding, "replace"))
        return self._say("OK")

    # -- helpers

    def _say(self, *lines: str, close: bool = False) -> Reply:
        return Reply(lines=tuple(line.encode(self._encoding, "replace") for line in lines),
                     close=close)

    def _no_such(self, name: str) -> Reply:
        return self._say(f"ERR 404 no such account {name}")

    def _dispatch(self, line: str) -> Reply:
        parts = line.split(None, 1)
        handler = self._commands.get(parts[0].upper()) if parts else None
        if handler is None:
            return self._say("ERR 400 unknown command")
        if not self.logged_in and parts[0].upper() not in OPEN_COMMANDS:
            return self._say("ERR 403 login required")
        return handler(parts[1] if len(parts) > 1 else "")

    # -- the protocol

    def _login(self, rest: str) -> Reply:
        args = rest.split()
        self.logged_in = args == [self._ledger.user, self._ledger.password]
        return self._say("OK" if self.logged_in else "ERR 401 bad credentials")

    def _ping(self, rest: str) -> Reply:
        return self._say("PONG")

    def _quit(self, rest: str) -> Reply:
        return self._say("BYE", close=True)

    def _bal(self, rest: str) -> Reply:
        args = rest.split()
        if len(args) != 1:
            return self._say("ERR 400 bad arguments")
        account = self._ledger.accounts.get(args[0])
        if account is None:
            return self._no_such(args[0])
        return self._say(f"OK {account.balance} {account.currency}")

    def _xfer(self, rest: str) -> Reply:
        args = rest.split()
        if len(args) != 3:
            return self._say("ERR 400 bad arguments")
        source_name, target_name, amount = args
        if not is_number(amount) or int(amount) == 0:
            return self._say("ERR 400 bad amount")
        accounts = self._ledger.accounts
        source, target = accounts.get(source_name), accounts.get(target_name)
        if source is None:
            return self._no_such(source_name)
        if target is None:
            return self._no_such(target_name)
        cents = int(amount)
        if source.balance < cents:
            return self._say("ERR 409 insufficient funds")
        txid = self._ledger.transfer(source, target, (source_name, target_name), cents)
        return self._say(f"OK {txid}")

    def _hist(self, rest: str) -> Reply:
        """Newest first; a limit of 0 means all rows, as the original report writer did."""
        args = rest.split()
        if len(args) != 2:
            return self._say("ERR 400 bad arguments")
        if not is_number(args[1]):
            return self._say("ERR 400 bad limit")
        account = self._ledger.accounts.get(args[0])
        if account is None:
            return self._no_such(args[0])
        limit = int(args[1]) or len(account.history)
        rows = account.history[::-1][:limit]
        return self._say(*(hist_record(*row) for row in rows), ".")

    def _note(self, rest: str) -> Reply:
        args = rest.split()
        if len(args) != 2 or not is_number(args[1]):
            return self._say("ERR 400 bad arguments")
        n = int(args[1])
        if n > MAX_PAYLOAD:
            return self._say("ERR 400 note too large", close=True)
        self._pending_note = (args[0], n)
        return Reply(payload=n)

    def _stmt(self, rest: str) -> Reply:
        args = rest.split()
        if len(args) != 1:
            return self._say("ERR 400 bad arguments")
        name = args[0]
        account = self._ledger.accounts.get(name)
        if account is None:
            return self._no_such(name)
        text = "\r\n".join(
            [
                "LEDGER STATEMENT",
                f"ACCOUNT {name}",
                f"BALANCE {account.balance} {account.currency}",
                f"NOTES {len(account.notes)}",
                *account.notes,
                "END OF STATEMENT",
            ]
        )
        body = text.encode(self._encoding, "replace")
        header = self._say(f"STMT {name} {len(body)}")
        return dataclasses.replace(header, body=body)

    def _stats(self, rest: str) -> Reply:
        ledger = self._ledger
        return self._say(
            f"accounts={len(ledger.accounts)}",
            f"sessions={ledger.sessions}",
            f"transfers_total={ledger.transfers_total}",
            f"uptime_seconds={ledger.uptime():.3f}",
            ".",
        )

    # -- failure modes, only with --test-commands

    def _slow(self, rest: str) -> Reply:
        parts = rest.split(None, 1)
        if len(parts) != 2 or not is_number(parts[0]):
            return self._say("ERR 400 bad arguments")
        inner = self._dispatch(parts[1])
        return dataclasses.replace(inner, delay=inner.delay + int(parts[0]) / 1000)

    def _extra(self, rest: str) -> Reply:
        return dataclasses.replace(self._dispatch(rest), unsolicited=True)

    def _big(self, rest: str) -> Reply:
        args = rest.split()
        if len(args) != 1 or not is_number(args[0]) or int(args[0]) > MAX_BIG:
            return self._say("ERR 400 bad size")
        return self._say("OK " + "x" * int(args[0]))

    def _echo(self, rest: str) -> Reply:
        return self._say(f"OK {rest}")

    def _silent(self, rest: str) -> Reply:
        return Reply(silent=True)


# --------------------------------------------------------------------------- asyncio shell


class Journal:
    """Every received request frame and payload, one `repr(bytes)` per line, flushed at once.

    Tests read it to prove that something never reached the legacy program.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def record(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.write(repr(data) + "\n")
            self._stream.flush()


class AppLog:
    """The server's own log file (`--log`), as a legacy server writes one: plain text lines
    `YYYY-MM-DD HH:MM:SS LEVEL message`, appended and flushed one by one. Never the request's
    arguments (a LOGIN carries a password): the command word and the reply's first line."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, level: str, message: str) -> None:
        if self._stream is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
            self._stream.write(f"{stamp} {level} {message}\n")
            self._stream.flush()

    def reply(self, frame: bytes, reply: Reply, encoding: str) -> None:
        if self._stream is None:
            return
        words = frame.decode(encoding, "replace").split(None, 1)
        command = words[0].upper()[:16] if words else "(empty)"
        answer = reply.lines[0].decode(encoding, "replace")[:80] if reply.lines else ""
        self.write("WARN" if answer.startswith("ERR") else "INFO", f"{command} -> {answer}")


@dataclass(frozen=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 7000
    user: str = "demo"
    password: str = "demo"
    framing: str = "crlf"
    encoding: str = "latin-1"
    test_commands: bool = False
    journal: str | None = None
    log: str | None = None


class LedgerServer:
    """Accepts connections and runs one in-order conversation on each."""

    def __init__(self, options: Options, journal: Journal, app_log: AppLog | None = None) -> None:
        self._options = options
        self._journal = journal
        self.app_log = app_log or AppLog(None)
        self._new_framing = framing_factory(options.framing, options.encoding)
        self.ledger = Ledger(options.user, options.password)
        self._unsolicited = "UNSOLICITED".encode(options.encoding)
        self._writers: set[asyncio.StreamWriter] = set()

    def close_all(self) -> None:
        """Hang up on every client, so shutdown never waits for a silent or idle one."""
        for writer in self._writers:
            writer.close()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ledger.sessions += 1
        self._writers.add(writer)
        self.app_log.write("INFO", f"session opened ({self.ledger.sessions} open)")
        try:
            await self._converse(reader, writer)
        except OSError:
            pass  # the peer vanished; a legacy server just forgets it
        finally:
            self.ledger.sessions -= 1
            self.app_log.write("INFO", f"session closed ({self.ledger.sessions} open)")
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framing = self._new_framing()
        session = Session(
            self.ledger, encoding=self._options.encoding,
            test_commands=self._options.test_commands,
        )
        writer.write(framing.encode_frame(session.banner()))
        await writer.drain()
        silenced = False
        while True:
            try:
                frame = await _pull(reader, framing, framing.next_frame)
                if frame is None:
                    return
                self._journal.record(frame)
                if silenced:
                    continue
                reply = session.handle(frame)
                self.app_log.reply(frame, reply, self._options.encoding)
                if reply.payload is not None:
                    take = functools.partial(framing.next_block, reply.payload)
                    data = await _pull(reader, framing, take)
                    if data is None:
                        return
                    self._journal.record(data)
                    reply = _merge(reply, session.payload(data))
            except FrameError as exc:
                writer.write(framing.encode_frame(exc.reply.encode(self._options.encoding)))
                await writer.drain()
                return
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.silent:
                silenced = True
                continue
            for line in reply.lines:
                writer.write(framing.encode_frame(line))
            if reply.body is not None:
                writer.write(framing.encode_block(reply.body))
            if reply.unsolicited:
                writer.write(framing.encode_frame(self._unsolicited))
            await writer.drain()
            if reply.close:
                return


def _merge(first: Reply, second: Reply) -> Reply:
    """Carry SLOW/EXTRA wrapped around a NOTE over to the reply sent after its payload."""
    return dataclasses.replace(
        second,
        delay=first.delay + second.delay,
        unsolicited=first.unsolicited or second.unsolicited,
    )


async def _pull(
    reader: asyncio.StreamReader, framing: Framing, take: Callable[[], bytes | None]
) -> bytes | None:
    """Read until `take` yields an item; None at end of stream."""
    while (item := take()) is None:
        data = await reader.read(65536)
        if not data:
            return None
        framing.feed(data)
    return item


# --------------------------------------------------------------------------- command line


def _encoding(name: str) -> str:
    try:
        codec = codecs.lookup(name)
        "\r\n LEDGER".encode(codec.name)
    except (LookupError, UnicodeError) as exc:
        raise argparse.ArgumentTypeError(f"unusable encoding {name!r}: {exc}") from None
    return codec.name


def _port(text: str) -> int:
    if not is_number(text) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r} (expected 0-65535)")
    return int(text)


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m legacy_fixtures.ledger",
        description="A 1990s-style TCP line-protocol account server (an adaptercar fixture).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=7000, help="0 picks a free port")
    parser.add_argument("--user", default="demo")
    parser.add_argument("--password", default="demo")
    parser.add_argument("--framing", choices=FRAMINGS, default="crlf")
    parser.add_argument("--encoding", type=_encoding, default="latin-1")
    parser.add_argument("--test-commands", action="store_true",
                        help="enable SLOW, EXTRA, BIG, ECHO and SILENT")
    parser.add_argument("--journal", metavar="PATH",
                        help="append every received frame and payload to PATH")
    parser.add_argument("--log", metavar="PATH",
                        help="append the server's own log lines (sessions, commands) to PATH")
    ns = parser.parse_args(argv)
    return Options(
        host=ns.host, port=ns.port, user=ns.user, password=ns.password, framing=ns.framing,
        encoding=ns.encoding, test_commands=ns.test_commands, journal=ns.journal, log=ns.log,
    )


def _address(sockname: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(options: Options, journal: Journal, app_log: AppLog | None = None) -> int:
    server_state = LedgerServer(options, journal, app_log)
    try:
        server = await asyncio.start_server(
            server_state.serve_connection, options.host, options.port
        )
    except OSError as exc:
        print(f"ledger: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    print(f"LISTENING {_address(server.sockets[0].getsockname())}", flush=True)
    server_state.app_log.write("INFO", f"ledger listening on {_address(server.sockets[0].getsockname())}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        server.close()
        server_state.close_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        stream = open(options.journal, "a", encoding="utf-8") if options.journal else None
    except OSError as exc:
        print(f"ledger: cannot open journal: {exc}", file=sys.stderr)
        return 1
    try:
        log_stream = open(options.log, "a", encoding="utf-8") if options.log else None
    except OSError as exc:
        print(f"ledger: cannot open log: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(serve(options, Journal(stream), AppLog(log_stream)))
    except KeyboardInterrupt:
        return 0
    finally:
        for s in (stream, log_stream):
            if s is not None:
                s.close()
