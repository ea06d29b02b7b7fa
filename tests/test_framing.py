"""The framing core: every framing's encoding, decoding, bounds and injection refusals."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adaptercar.mapping.framing import (
    Decoder,
    Delimited,
    FixedRecord,
    Framing,
    FramingError,
    LengthPrefixed,
    StxEtx,
    check_payload,
    encode_body,
    encode_frame,
)

# --- helpers -------------------------------------------------------------------------------


def drain(dec: Decoder) -> list[bytes]:
    frames = []
    while (frame := dec.next_frame()) is not None:
        frames.append(frame)
    return frames


def decode_chunks(framing: Framing, chunks: list[bytes], max_frame: int = 1 << 16) -> list[bytes]:
    dec = Decoder(framing, max_frame)
    frames: list[bytes] = []
    for chunk in chunks:
        dec.feed(chunk)
        frames += drain(dec)
    assert dec.pending() == 0
    return frames


def reason_of(fn: Callable[..., object], *args: object) -> str:
    with pytest.raises(FramingError) as info:
        fn(*args)
    assert str(info.value)  # always a human message, too
    return info.value.reason


def encodable(framing: Framing, payload: bytes) -> bool:
    """An oracle written independently of check_payload: does the frame decode as itself?"""
    if isinstance(framing, Delimited):
        d = framing.delimiter
        return not any((payload + d)[i : i + len(d)] == d for i in range(len(payload)))
    if isinstance(framing, LengthPrefixed):
        return len(payload) < (10**framing.size if framing.ascii else 256**framing.size)
    if isinstance(framing, FixedRecord):
        gap = framing.size - len(payload)
        return gap >= 0 and gap % len(framing.pad) == 0
    return 2 not in payload and 3 not in payload


def decoded_as(framing: Framing, payload: bytes) -> bytes:
    if isinstance(framing, FixedRecord):
        while payload.endswith(framing.pad):
            payload = payload[: -len(framing.pad)]
    return payload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# --- strategies ----------------------------------------------------------------------------

DELIMITERS = [b"\n", b"\r\n", b"\x00", b"END\n", b"aa", b"aba", b"\r\n.\r\n"]

framings = st.one_of(
    st.builds(Delimited, st.sampled_from(DELIMITERS) | st.binary(min_size=1, max_size=3)),
    st.builds(LengthPrefixed, st.sampled_from([1, 2, 4])),
    st.builds(LengthPrefixed, st.integers(1, 3), st.just(True)),
    st.sampled_from([b" ", b"\x40", b" \x00"]).flatmap(
        lambda pad: st.builds(
            FixedRecord, st.integers(1, 40).map(lambda n: n * len(pad)), st.just(pad)
        )
    ),
    st.just(StxEtx()),
)

# Payloads drawn from the bytes that framings care about, so collisions are common.
tricky = st.lists(st.sampled_from(b"ab\r\n\x00\x02\x03 \x40END.0"), max_size=60).map(bytes)
payloads = tricky | st.binary(max_size=120)


# --- unit tests: encoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "payload", "wire"),
    [
        (Delimited(b"\n"), b"BAL 42", b"BAL 42\n"),
        (Delimited(b"\r\n"), b"BAL 42", b"BAL 42\r\n"),
        (Delimited(b"\x00"), b"x", b"x\x00"),
        (Delimited(b"END\n"), b"EN", b"ENEND\n"),
        (LengthPrefixed(4, ascii=True), b"hello world!", b"0012hello world!"),
        (LengthPrefixed(1), b"hi", b"\x02hi"),
        (LengthPrefixed(2), b"hello", b"\x00\x05hello"),
        (LengthPrefixed(4), b"", b"\x00\x00\x00\x00"),
        (FixedRecord(6), b"abc", b"abc   "),
        (FixedRecord(4, pad=b"\x40"), "AB".encode("cp037"), b"\xc1\xc2\x40\x40"),
        (FixedRecord(3), b"abc", b"abc"),
        (StxEtx(), b"hello", b"\x02hello\x03"),
    ],
)
def test_encode_and_decode_known_frames(framing: Framing, payload: bytes, wire: bytes) -> None:
    assert encode_frame(framing, payload) == wire
    assert decode_chunks(framing, [wire]) == [payload]


@pytest.mark.parametrize(
    ("framing", "payload", "reason"),
    [
        (Delimited(b"\n"), b"BAL 1\nXFER 1 2 100", "delimiter-in-value"),
        (Delimited(b"\r\n"), b"a\r\nb", "delimiter-in-value"),
        # Overlap with the delimiter itself: b"a" + b"aa" would decode as b"" then garbage.
        (Delimited(b"aa"), b"a", "delimiter-in-value"),
        (Delimited(b"END\n"), b"xEND\ny", "delimiter-in-value"),
        (LengthPrefixed(1), b"x" * 256, "too-long-for-record"),
        (LengthPrefixed(2, ascii=True), b"x" * 100, "too-long-for-record"),
        (FixedRecord(4), b"abcde", "too-long-for-record"),
        (FixedRecord(4, pad=b" \x00"), b"abc", "pad-misaligned"),
        (StxEtx(), b"a\x02b", "delimiter-in-value"),
        (StxEtx(), b"a\x03b", "delimiter-in-value"),
    ],
)
def test_unencodable_payloads_are_refused(framing: Framing, payload: bytes, reason: str) -> None:
    assert reason_of(check_payload, framing, payload) == reason
    assert reason_of(encode_frame, framing, payload) == reason


def test_prefix_maximum_is_inclusive() -> None:
    assert encode_frame(LengthPrefixed(1), b"x" * 255)[:1] == b"\xff"
    assert encode_frame(LengthPrefixed(2, ascii=True), b"x" * 99)[:2] == b"99"


def test_body_may_contain_the_delimiter_but_a_frame_may_not() -> None:
    framing = Delimited(b"\r\n")
    assert encode_body(framing, b"two\r\nlines") == b"two\r\nlines\r\n"
    assert reason_of(encode_frame, framing, b"two\r\nlines") == "delimiter-in-value"
    # Other framings carry their own length: a body is a frame and keeps its checks.
    assert encode_body(LengthPrefixed(2), b"a\nb") == b"\x00\x03a\nb"
    assert reason_of(encode_body, StxEtx(), b"\x03") == "delimiter-in-value"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Delimited(b""),
        lambda: LengthPrefixed(3),
        lambda: LengthPrefixed(0, ascii=True),
        lambda: FixedRecord(0),
        lambda: FixedRecord(4, pad=b""),
        lambda: FixedRecord(5, pad=b" \x00"),
    ],
)
def test_bad_framing_config_is_a_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_decoder_config_errors() -> None:
    with pytest.raises(ValueError):
        Decoder(Delimited(b"\n"), 0)
    with pytest.raises(ValueError, match="exceed max_frame_bytes"):
        Decoder(FixedRecord(100), 80)
    with pytest.raises(ValueError):
        Decoder(Delimited(b"\n"), 10).next_body(-1)


# --- unit tests: decoding ------------------------------------------------------------------


def test_delimited_frames_across_feeds() -> None:
    dec = Decoder(Delimited(b"\r\n"), 100)
    dec.feed(b"OK 1\r")
    assert dec.next_frame() is None
    dec.feed(b"\nOK 2\r\nOK")
    assert drain(dec) == [b"OK 1", b"OK 2"]
    assert dec.pending() == 2
    dec.feed(b" 3\r\n")
    assert drain(dec) == [b"OK 3"]
    assert dec.pending() == 0


def test_delimiter_split_after_a_false_start() -> None:
    dec = Decoder(Delimited(b"END\n"), 100)
    for chunk in (b"xEN", b"EN", b"D", b"\nrest"):
        dec.feed(chunk)
    assert dec.next_frame() == b"xEN"
    assert dec.pending() == 4


def test_fixed_records_strip_padding() -> None:
    dec = Decoder(FixedRecord(5, pad=b"\x40"), 100)
    dec.feed("AB".encode("cp037") + b"\x40\x40\x40" + b"\x40" * 5 + b"\xc1")
    assert drain(dec) == ["AB".encode("cp037"), b""]
    assert dec.pending() == 1


def test_fixed_records_strip_whole_pad_units_only() -> None:
    framing = FixedRecord(6, pad=" ".encode("utf-16-le"))
    assert encode_frame(framing, "a".encode("utf-16-le")) == b"a\x00 \x00 \x00"
    # "a\u2000" ends in the byte 0x20 but not in a whole pad unit: nothing is stripped.
    record = "a\u2000 ".encode("utf-16-le")
    assert record == b"a\x00\x00\x20\x20\x00"
    assert decode_chunks(framing, [record, b"a\x00 \x00 \x00"]) == [b"a\x00\x00\x20", b"a\x00"]


def test_ascii_prefix_rejects_anything_but_digits_early() -> None:
    dec = Decoder(LengthPrefixed(4, ascii=True), 100)
    dec.feed(b"00")
    assert dec.next_frame() is None
    dec.feed(b"x")  # the prefix is not even complete yet
    assert reason_of(dec.next_frame) == "bad-prefix"


@pytest.mark.parametrize("prefix", [b" 012", b"+012", b"0_12", b"-012", b"\xd9\xa123"])
def test_ascii_prefix_int_would_accept_but_we_do_not(prefix: bytes) -> None:
    dec = Decoder(LengthPrefixed(4, ascii=True), 100)
    dec.feed(prefix + b"x" * 20)
    assert reason_of(dec.next_frame) == "bad-prefix"


def test_prefixed_oversize_is_detected_from_the_prefix_alone() -> None:
    dec = Decoder(LengthPrefixed(4), 1000)
    dec.feed((1001).to_bytes(4, "big"))
    assert reason_of(dec.next_frame) == "oversize"
    dec = Decoder(LengthPrefixed(4, ascii=True), 1000)
    dec.feed(b"1000" + b"x" * 1000)
    assert dec.next_frame() == b"x" * 1000


def test_stx_etx_garbage() -> None:
    dec = Decoder(StxEtx(), 100)
    dec.feed(b"\x02ok\x03\r\n\x02next\x03")
    assert dec.next_frame() == b"ok"
    assert reason_of(dec.next_frame) == "garbage"
    dec = Decoder(StxEtx(), 100)
    dec.feed(b"\x02a\x02b")  # a second STX before the first frame ended
    assert reason_of(dec.next_frame) == "garbage"


def test_errors_are_sticky() -> None:
    dec = Decoder(StxEtx(), 100)
    dec.feed(b"junk")
    assert reason_of(dec.next_frame) == "garbage"
    dec.feed(b"\x02fine\x03")
    assert reason_of(dec.next_frame) == "garbage"
    assert reason_of(dec.next_body, 4) == "garbage"


@pytest.mark.parametrize(
    ("framing", "fails_at"),
    [(Delimited(b"\n"), 0), (Delimited(b"\r\n.\r\n"), 0), (StxEtx(), 1)],
)
def test_oversize_fires_at_the_first_byte_past_the_bound(framing: Framing, fails_at: int) -> None:
    limit = 50
    # A frame of exactly the maximum is fine...
    assert decode_chunks(framing, [encode_frame(framing, b"x" * limit)], limit) == [b"x" * limit]
    # ...and the byte after the maximum, when it cannot begin the delimiter, fails at once.
    dec = Decoder(framing, limit)
    stream = encode_frame(framing, b"x" * (limit + 1))
    for i in range(limit + fails_at):
        dec.feed(stream[i : i + 1])
        assert dec.next_frame() is None
    dec.feed(stream[limit + fails_at : limit + fails_at + 1])
    assert reason_of(dec.next_frame) == "oversize"


def test_a_delimiter_begun_at_the_bound_may_still_end_the_frame() -> None:
    framing = Delimited(b"\r\n")
    dec = Decoder(framing, 5)
    dec.feed(b"xxxxx\r")
    assert dec.next_frame() is None
    dec.feed(b"\n")
    assert dec.next_frame() == b"xxxxx"
    dec.feed(b"xxxxx\r")
    assert dec.next_frame() is None
    dec.feed(b"\r")
    assert reason_of(dec.next_frame) == "oversize"


def test_oversize_without_delimiter_in_one_big_feed() -> None:
    dec = Decoder(Delimited(b"\n"), 1000)
    dec.feed(b"x" * 100_000)
    assert reason_of(dec.next_frame) == "oversize"


# --- unit tests: byte-counted bodies -------------------------------------------------------


def test_memcached_style_body() -> None:
    dec = Decoder(Delimited(b"\r\n"), 100)
    dec.feed(b"VALUE k 0 7\r\nab\r\n")
    assert dec.next_frame() == b"VALUE k 0 7"
    assert dec.next_body(7) is None
    dec.feed(b"cd\r")
    assert dec.next_body(7) is None
    dec.feed(b"\r\nEND\r\n")
    assert dec.next_body(7) == b"ab\r\ncd\r"
    assert dec.next_frame() == b"END"


def test_body_delimiter_fails_on_the_first_wrong_byte() -> None:
    dec = Decoder(Delimited(b"\r\n"), 100)
    dec.feed(b"abc\rX")
    assert reason_of(dec.next_body, 3) == "body-delimiter"
    dec = Decoder(Delimited(b"\r\n"), 100)
    dec.feed(b"abcd")  # the body is one byte longer than announced
    assert reason_of(dec.next_body, 3) == "body-delimiter"


def test_delimited_body_is_not_bounded_by_the_line_limit() -> None:
    dec = Decoder(Delimited(b"\n"), 10)
    dec.feed(b"y" * 1000 + b"\n")
    assert dec.next_body(1000) == b"y" * 1000


def test_body_length_mismatch_in_other_framings() -> None:
    dec = Decoder(LengthPrefixed(2), 100)
    dec.feed(b"\x00\x05")  # the prefix alone tells it is not 4 bytes
    assert reason_of(dec.next_body, 4) == "body-length"
    dec = Decoder(StxEtx(), 100)
    dec.feed(b"\x02abc\x03")
    assert reason_of(dec.next_body, 4) == "body-length"
    dec = Decoder(FixedRecord(4), 100)
    dec.feed(b"ab c")
    assert reason_of(dec.next_body, 2) == "body-length"  # what follows the 2 bytes is not padding


def test_fixed_bodies_span_as_many_records_as_they_need() -> None:
    framing = FixedRecord(4)
    body = b"0123456789"  # 10 bytes: three records, the last padded
    wire = encode_body(framing, body)
    assert wire == b"0123456789  "
    dec = Decoder(framing, 100)
    dec.feed(wire[:8])
    assert dec.next_body(10) is None  # waits for the whole last record
    dec.feed(wire[8:] + b"OK  ")
    assert dec.next_body(10) == body
    assert dec.next_frame() == b"OK"


def test_fixed_body_keeps_its_trailing_spaces() -> None:
    framing = FixedRecord(8)
    dec = Decoder(framing, 100)
    dec.feed(encode_body(framing, b"ab  "))
    assert dec.next_body(4) == b"ab  "


# --- properties ----------------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(framings, payloads)
def test_round_trip_or_refusal(framing: Framing, payload: bytes) -> None:
    if not encodable(framing, payload):
        reason_of(encode_frame, framing, payload)
        return
    wire = encode_frame(framing, payload)
    assert decode_chunks(framing, [wire]) == [decoded_as(framing, payload)]


@FAST
@given(framings, st.lists(payloads, max_size=5), st.lists(st.integers(0, 10_000), max_size=12))
def test_chunking_never_changes_the_frames(
    framing: Framing, items: list[bytes], cuts: list[int]
) -> None:
    items = [p for p in items if encodable(framing, p)]
    stream = b"".join(encode_frame(framing, p) for p in items)
    expected = [decoded_as(framing, p) for p in items]
    assert decode_chunks(framing, split(stream, cuts)) == expected
    for i in range(len(stream) + 1):  # every single split point
        assert decode_chunks(framing, [stream[:i], stream[i:]]) == expected


@FAST
@given(framings, st.lists(payloads, max_size=4))
def test_one_byte_at_a_time(framing: Framing, items: list[bytes]) -> None:
    items = [p for p in items if encodable(framing, p)]
    stream = b"".join(encode_frame(framing, p) for p in items)
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert decode_chunks(framing, chunks) == [decoded_as(framing, p) for p in items]


@FAST
@given(
    framings,
    tricky,
    st.lists(st.integers(0, 10_000), max_size=8),
)
def test_bodies_round_trip_between_frames(framing: Framing, body: bytes, cuts: list[int]) -> None:
    if not isinstance(framing, Delimited | FixedRecord) and not encodable(framing, body):
        reason_of(encode_body, framing, body)
        return
    if isinstance(framing, FixedRecord) and len(framing.pad) > 1:
        return  # multi-byte pads: covered by the record tests
    head = b"NOTE %d" % len(body)
    if not encodable(framing, head) or not encodable(framing, b"OK"):
        return
    stream = encode_frame(framing, head) + encode_body(framing, body) + encode_frame(framing, b"OK")
    dec = Decoder(framing, 1 << 16)
    got: list[bytes] = []
    stage = 0
    for chunk in split(stream, cuts):
        dec.feed(chunk)
        while stage < 3:
            item = dec.next_body(len(body)) if stage == 1 else dec.next_frame()
            if item is None:
                break
            got.append(item)
            stage += 1
    assert got == [decoded_as(framing, head), body, b"OK"]
    assert dec.pending() == 0


def _overhead(framing: Framing) -> int:
    if isinstance(framing, Delimited):
        return len(framing.delimiter)
    if isinstance(framing, LengthPrefixed):
        return framing.size
    return 2 if isinstance(framing, StxEtx) else 0


@settings(max_examples=300, deadline=None)
@given(
    framings,
    st.integers(40, 200),
    st.lists(tricky | st.binary(min_size=50, max_size=400), min_size=1, max_size=8),
)
def test_arbitrary_input_is_bounded(framing: Framing, limit: int, chunks: list[bytes]) -> None:
    """Whatever the peer sends: no frame beyond the max, and at most max + overhead buffered."""
    assume(not isinstance(framing, FixedRecord) or framing.size <= limit)
    dec = Decoder(framing, limit)
    for chunk in chunks:
        dec.feed(chunk)
        try:
            while (frame := dec.next_frame()) is not None:
                assert len(frame) <= limit
        except FramingError as e:
            assert e.reason in {"oversize", "garbage", "bad-prefix"}
            return
        assert dec.pending() < limit + _overhead(framing)


@FAST
@given(framings, st.integers(1, 100), st.integers(1, 50))
def test_oversize_detected_before_the_frame_ends(framing: Framing, limit: int, extra: int) -> None:
    assume(not isinstance(framing, FixedRecord))  # its size is its bound, checked up front
    fill = b"q" if not isinstance(framing, Delimited) or b"q" not in framing.delimiter else b"z"
    assume(fill not in getattr(framing, "delimiter", b""))
    payload = fill * (limit + extra)
    assume(encodable(framing, payload))
    wire = encode_frame(framing, payload)
    dec = Decoder(framing, limit)
    # Delimited and STX/ETX: all but the last byte of the terminator; a prefix: the prefix alone.
    dec.feed(wire[: framing.size] if isinstance(framing, LengthPrefixed) else wire[:-1])
    assert reason_of(dec.next_frame) == "oversize"


# --- performance ---------------------------------------------------------------------------


@pytest.mark.parametrize("framing", [Delimited(b"\r\n"), StxEtx()])
def test_one_megabyte_fed_byte_by_byte_is_linear(framing: Framing) -> None:
    payload = b"x" * (1 << 20)
    stream = encode_frame(framing, payload)
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    dec = Decoder(framing, 2 << 20)
    frames = []
    started = time.perf_counter()
    for chunk in chunks:
        dec.feed(chunk)
        frame = dec.next_frame()
        if frame is not None:
            frames.append(frame)
    elapsed = time.perf_counter() - started
    assert frames == [payload]
    assert elapsed < 5.0, f"{elapsed:.2f}s: the decoder rescans its buffer"
