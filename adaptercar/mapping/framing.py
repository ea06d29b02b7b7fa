"""Frames on a byte stream: the sans-IO core shared by the TCP and stdio backends.

A legacy protocol is a byte stream cut into frames by a delimiter, a length prefix, fixed-size
records or STX/ETX. Encoding and decoding live here, away from sockets, so both backend shells
use one tested implementation and the property tests can drive it with arbitrary chunkings.

Two guarantees the rest of adaptercar relies on:

- Injection is impossible by construction: `check_payload` / `encode_frame` refuse any payload
  that would decode as something other than itself (a delimiter inside a value, a record that
  overflows, STX/ETX inside an STX/ETX frame), so a request value can never smuggle a second
  command to the legacy application.
- Memory stays bounded: the `Decoder` fails with "oversize" as soon as a partial frame is known to
  exceed `max_frame_bytes`, without waiting for a delimiter that may never come. As long as the
  caller drains after each `feed`, a `None` answer leaves at most `max_frame_bytes` plus the
  framing's own overhead buffered.

Frames are bytes; turning text into bytes (and refusing characters the encoding lacks) is the
template layer's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

Reason: TypeAlias = Literal[
    "oversize",  # a frame (or announced length) beyond the decoder's max_frame_bytes
    "garbage",  # bytes that cannot start or belong to a frame (STX/ETX framing)
    "delimiter-in-value",  # a payload that would not decode as itself (injection)
    "too-long-for-record",  # a payload beyond a fixed record or a length prefix's maximum
    "pad-misaligned",  # a fixed record whose padding would split a multi-byte pad unit
    "bad-prefix",  # an ASCII length prefix that is not all decimal digits
    "body-delimiter",  # the bytes after a byte-counted body are not the delimiter
    "body-length",  # a byte-counted body whose frame does not hold exactly the announced bytes
]

STX = 0x02
ETX = 0x03
_STX = b"\x02"
_ETX = b"\x03"
_BINARY_PREFIX_SIZES = (1, 2, 4)


class FramingError(Exception):
    """A frame that cannot be sent or a byte stream that cannot be trusted any more.

    `reason` is a stable machine word for metrics and error mapping; the message is for humans.
    Raised on encode, the request is INVALID_ARGUMENT and nothing was sent; raised on decode,
    the connection is in an unknown state and must be closed.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Delimited:
    """Frames end with `delimiter` (`\\n`, `\\r\\n`, `\\x00`, `END\\n`, ...)."""

    delimiter: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.delimiter, bytes) or not self.delimiter:
            raise ValueError("a delimiter must be non-empty bytes")


@dataclass(frozen=True, slots=True)
class LengthPrefixed:
    """Frames start with the payload's length (not counting the prefix itself).

    Binary: `size` bytes big-endian (1, 2 or 4). ASCII: `size` zero-padded decimal digits,
    e.g. size 4 → `0012hello world!`.
    """

    size: int
    ascii: bool = False

    def __post_init__(self) -> None:
        if self.ascii:
            if not 1 <= self.size <= 20:
                raise ValueError(f"an ASCII length prefix has 1 to 20 digits, not {self.size}")
        elif self.size not in _BINARY_PREFIX_SIZES:
            raise ValueError(f"a binary length prefix is 1, 2 or 4 bytes, not {self.size}")

    @property
    def max_payload(self) -> int:
        return 10**self.size - 1 if self.ascii else (1 << (8 * self.size)) - 1


@dataclass(frozen=True, slots=True)
class FixedRecord:
    """Records of exactly `size` bytes, padded on the right with `pad`.

    `pad` is the encoding's space (b" " for latin-1, b"\\x40" for cp037, b" \\x00" for
    utf-16-le); decoding strips trailing pad units, so a value's own trailing spaces are lost,
    as they are with any fixed-width record.
    """

    size: int
    pad: bytes = b" "

    def __post_init__(self) -> None:
        if not isinstance(self.pad, bytes) or not self.pad:
            raise ValueError("a fixed record's pad must be non-empty bytes")
        if self.size < 1:
            raise ValueError(f"a fixed record has at least 1 byte, not {self.size}")
        if self.size % len(self.pad):
            raise ValueError(
                f"a fixed record of {self.size} bytes cannot be padded with {len(self.pad)}-byte "
                f"units {self.pad!r}"
            )


@dataclass(frozen=True, slots=True)
class StxEtx:
    """Frames are 0x02 payload 0x03; anything between frames is garbage."""


Framing: TypeAlias = Delimited | LengthPrefixed | FixedRecord | StxEtx


def check_payload(framing: Framing, payload: bytes) -> None:
    """Refuse a payload that would not decode as itself; usable before anything is sent."""
    if isinstance(framing, Delimited):
        d = framing.delimiter
        # Searching payload + delimiter (not just payload) also catches a payload whose tail
        # overlaps the delimiter's head, e.g. b"a" before the delimiter b"aa".
        at = (payload + d).find(d)
        if at != len(payload):
            raise FramingError(
                "delimiter-in-value",
                f"value contains the frame delimiter {d!r} at byte {at}",
            )
    elif isinstance(framing, LengthPrefixed):
        if len(payload) > framing.max_payload:
            raise FramingError(
                "too-long-for-record",
                f"frame of {len(payload)} bytes exceeds the length prefix's maximum of "
                f"{framing.max_payload}",
            )
    elif isinstance(framing, FixedRecord):
        if len(payload) > framing.size:
            raise FramingError(
                "too-long-for-record",
                f"frame of {len(payload)} bytes does not fit a {framing.size}-byte record",
            )
        if (framing.size - len(payload)) % len(framing.pad):
            raise FramingError(
                "pad-misaligned",
                f"frame of {len(payload)} bytes cannot be padded to {framing.size} bytes with "
                f"{len(framing.pad)}-byte units {framing.pad!r}",
            )
    else:
        for byte, name in ((_STX, "STX"), (_ETX, "ETX")):
            at = payload.find(byte)
            if at >= 0:
                raise FramingError(
                    "delimiter-in-value", f"value contains {name} (0x0{byte[0]}) at byte {at}"
                )


def encode_frame(framing: Framing, payload: bytes) -> bytes:
    """One payload as one frame, or FramingError if it could be read back as anything else."""
    check_payload(framing, payload)
    return _wrap(framing, payload)


def encode_body(framing: Framing, payload: bytes) -> bytes:
    """A byte-counted body (memcached, beanstalkd, RESP bulk strings).

    With a delimiter the body may contain the delimiter: its length was announced by an earlier
    frame and the reader counts bytes instead of searching. Other framings carry their length
    themselves, so a body is just a frame.
    """
    if isinstance(framing, Delimited):
        return payload + framing.delimiter
    if isinstance(framing, FixedRecord):
        # Fixed-record hosts spread a long body over as many records as it needs (at least
        # one), the last one padded; its length was announced, so nothing is ambiguous.
        records = max(1, -(-len(payload) // framing.size))
        fill = records * framing.size - len(payload)
        if fill % len(framing.pad):
            raise FramingError("pad-misaligned", f"a {len(payload)}-byte body cannot be padded "
                               f"to whole {framing.size}-byte records with {framing.pad!r}")
        return payload + framing.pad * (fill // len(framing.pad))
    return encode_frame(framing, payload)


def _wrap(framing: Framing, payload: bytes) -> bytes:
    if isinstance(framing, Delimited):
        return payload + framing.delimiter
    if isinstance(framing, LengthPrefixed):
        n = len(payload)
        if framing.ascii:
            return b"%0*d" % (framing.size, n) + payload
        return n.to_bytes(framing.size, "big") + payload
    if isinstance(framing, FixedRecord):
        return payload + framing.pad * ((framing.size - len(payload)) // len(framing.pad))
    return _STX + payload + _ETX


class Decoder:
    """Per-connection byte buffer, pull-based: the reply state machine asks for what it expects.

    Pull, not push, because only the caller knows whether the next bytes are a frame or a
    byte-counted body. A FramingError is sticky: once the stream is untrustworthy every later
    call raises it again, so a connection cannot drift back into use.
    """

    __slots__ = (
        "_framing",
        "_max",
        "_buf",
        "_scan",
        "_error",
        "_read_frame",
        "_delim",
        "_dlen",
        "_psize",
        "_ascii",
        "_pad",
        "_size",
    )

    def __init__(self, framing: Framing, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be at least 1, not {max_frame_bytes}")
        self._framing = framing
        self._max = max_frame_bytes
        self._buf = bytearray()
        # No frame end starts before this index of _buf: each next_frame scans only new bytes,
        # so a frame trickling in one byte at a time costs O(n), not O(n²).
        self._scan = 0
        self._error: FramingError | None = None
        self._delim = b""
        self._dlen = 0
        self._psize = 0
        self._ascii = False
        self._pad = b""
        self._size = 0
        if isinstance(framing, Delimited):
            self._delim = framing.delimiter
            self._dlen = len(framing.delimiter)
            self._read_frame = self._frame_delimited
        elif isinstance(framing, LengthPrefixed):
            self._psize = framing.size
            self._ascii = framing.ascii
            self._read_frame = self._frame_prefixed
        elif isinstance(framing, FixedRecord):
            if framing.size > max_frame_bytes:
                raise ValueError(
                    f"fixed records of {framing.size} bytes exceed max_frame_bytes "
                    f"{max_frame_bytes}"
                )
            self._size = framing.size
            self._pad = framing.pad
            self._read_frame = self._frame_fixed
        else:
            self._read_frame = self._frame_stx

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        """Bytes received and not yet consumed; leftovers with no call outstanding mean close."""
        return len(self._buf)

    def take_rest(self) -> bytes:
        """At EOF: everything still buffered, as a last frame without its end. A program run
        per call may end its output without a final newline; that text is still its reply."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return rest

    def next_frame(self) -> bytes | None:
        """The next frame's payload, or None until it is complete."""
        if self._error is not None:
            raise self._error
        try:
            return self._read_frame()
        except FramingError as e:
            self._error = e
            raise

    def next_body(self, n: int) -> bytes | None:
        """Exactly n bytes announced by an earlier frame, or None until they are all here.

        Delimited: n bytes, then the delimiter (checked byte by byte as it arrives). Other
        framings: the next frame, which must hold exactly n bytes (a fixed record: n bytes, the
        rest padding), within max_frame_bytes as any frame. A delimited body is not limited by
        max_frame_bytes, since a legitimate value may be longer than any line: the caller bounds
        n (by what is left of max_reply_bytes) before asking.
        """
        if n < 0:
            raise ValueError(f"a body has a length of at least 0, not {n}")
        if self._error is not None:
            raise self._error
        try:
            return self._read_body(n)
        except FramingError as e:
            self._error = e
            raise

    # -- frames ---------------------------------------------------------------------------

    def _take(self, start: int, end: int, consumed: int) -> bytes:
        buf = self._buf
        payload = bytes(buf[start:end])
        del buf[:consumed]  # amortized O(1) at the front of a bytearray
        self._scan = 0
        return payload

    def _oversize(self, what: str) -> FramingError:
        return FramingError("oversize", f"{what} exceeds max_frame_bytes {self._max}")

    def _frame_delimited(self) -> bytes | None:
        buf = self._buf
        d = self._delim
        dlen = self._dlen
        top = self._max
        have = len(buf)
        # A frame within bounds has its delimiter starting at index <= max.
        at = buf.find(d, self._scan, top + dlen)
        if at >= 0:
            return self._take(0, at, at + dlen)
        # Rescan only where the delimiter's head may already be buffered.
        tail = max(0, have - dlen + 1)
        if have > top:
            # Past the bound, only a delimiter already begun at or before index max can still
            # end the frame in bounds (at most dlen - 1 candidates): otherwise fail right now.
            for start in range(tail, top + 1):
                if d.startswith(buf[start:have]):
                    break
            else:
                raise self._oversize(f"frame without delimiter {d!r} after {have} bytes")
        self._scan = tail
        return None

    def _announced(self) -> int | None:
        """The payload length a complete prefix announces, or None while it is incomplete."""
        buf = self._buf
        psize = self._psize
        have = len(buf)
        if self._ascii:
            head = bytes(buf[:psize])
            # bytes.isdigit is ASCII-only; int() alone would accept b" +1_2".
            if head and not head.isdigit():
                raise FramingError("bad-prefix", f"length prefix {head!r} is not decimal digits")
            if have < psize:
                return None
            n = int(head)
        else:
            if have < psize:
                return None
            n = int.from_bytes(buf[:psize], "big")
        if n > self._max:
            raise self._oversize(f"announced frame length {n}")
        return n

    def _frame_prefixed(self) -> bytes | None:
        n = self._announced()
        if n is None:
            return None
        end = self._psize + n
        if len(self._buf) < end:
            return None
        return self._take(self._psize, end, end)

    def _raw_record(self) -> bytes | None:
        size = self._size
        if len(self._buf) < size:
            return None
        return self._take(0, size, size)

    def _frame_fixed(self) -> bytes | None:
        record = self._raw_record()
        if record is None:
            return None
        pad = self._pad
        if len(pad) == 1:
            return record.rstrip(pad)
        end = len(record)
        plen = len(pad)
        while end and record.endswith(pad, 0, end):
            end -= plen
        return record[:end]

    def _frame_stx(self) -> bytes | None:
        buf = self._buf
        have = len(buf)
        if not have:
            return None
        if buf[0] != STX:
            raise FramingError("garbage", f"byte {buf[0]:#04x} where STX (0x02) was expected")
        start = self._scan or 1
        # A frame within bounds has its ETX at index <= max + 1.
        limit = self._max + 2
        at = buf.find(_ETX, start, limit)
        stop = at if at >= 0 else min(have, limit)
        nested = buf.find(_STX, start, stop)
        if nested >= 0:
            raise FramingError("garbage", f"STX inside a frame at byte {nested - 1}")
        if at >= 0:
            return self._take(1, at, at + 1)
        if have >= limit:
            raise self._oversize(f"frame without ETX after {have - 1} bytes")
        self._scan = have
        return None

    # -- byte-counted bodies --------------------------------------------------------------

    def _read_body(self, n: int) -> bytes | None:
        framing = self._framing
        if isinstance(framing, Delimited):
            return self._body_delimited(n)
        if isinstance(framing, FixedRecord):
            return self._body_fixed(n)
        if isinstance(framing, LengthPrefixed):
            # Fail as soon as the prefix disagrees, before the payload arrives.
            announced = self._announced()
            if announced is not None and announced != n:
                raise self._body_length(n, f"a frame of {announced}")
        frame = self._read_frame()
        if frame is not None and len(frame) != n:
            raise self._body_length(n, f"a frame of {len(frame)}")
        return frame

    def _body_length(self, n: int, got: str) -> FramingError:
        return FramingError("body-length", f"expected a body of {n} bytes, got {got} bytes")

    def _body_delimited(self, n: int) -> bytes | None:
        buf = self._buf
        d = self._delim
        need = n + self._dlen
        have = len(buf)
        if have > n:
            # Fail on the first wrong byte, not after a whole delimiter's worth.
            seen = bytes(buf[n:need])
            if not d.startswith(seen):
                raise FramingError(
                    "body-delimiter",
                    f"{seen!r} follows a {n}-byte body where {d!r} was expected",
                )
        if have < need:
            return None
        return self._take(0, n, need)

    def _body_fixed(self, n: int) -> bytes | None:
        size = self._size
        need = max(1, -(-n // size)) * size  # whole records, at least one
        if len(self._buf) < need:
            return None
        record = self._take(0, need, need)
        rest = len(record) - n
        pad = self._pad
        if rest % len(pad) or record[n:] != pad * (rest // len(pad)):
            raise FramingError(
                "body-length",
                f"a {n}-byte body is followed by {record[n:]!r}, not padding",
            )
        return record[:n]
