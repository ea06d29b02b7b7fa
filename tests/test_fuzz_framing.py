"""Fuzz: the framing decoders and the reply readers with hostile bytes from a legacy backend.

Garbage, huge announced lengths, non-UTF-8 and bytes split anywhere: a decoder answers a frame,
None (need more) or a FramingError naming the problem, never another exception; it never
returns a frame over its bound; an error is sticky. A reply reader fed garbage answers a message
or a CallError. Bounded: a fixed number of examples, new random ones on every run (a failure prints its seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptercar.compile import load_all
from adaptercar.mapping import framing as fr
from adaptercar.mapping.errors import CallError
from adaptercar.mapping.operation import CallContext, LineOperation
from tests.harness import demo_like_config

FUZZ = settings(max_examples=150, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

framings = st.one_of(
    st.binary(min_size=1, max_size=3).map(fr.Delimited),
    st.sampled_from([1, 2, 4]).map(lambda n: fr.LengthPrefixed(n, False)),
    st.integers(1, 10).map(lambda n: fr.LengthPrefixed(n, True)),
    st.integers(1, 64).map(lambda n: fr.FixedRecord(n, b" ")),
    st.just(fr.StxEtx()),
)
# hostile streams: random bytes, digits (ASCII lengths), STX/ETX and CR/LF heavy, long runs
hostile = st.one_of(
    st.binary(max_size=400),
    st.text(alphabet="0123456789\x02\x03\r\n \xff", max_size=300).map(lambda s: s.encode("latin-1")),
    st.tuples(st.sampled_from([b"\xff", b"9", b"\x02", b"a"]), st.integers(0, 5000)).map(lambda t: t[0] * t[1]),
)


@FUZZ
@given(framings, st.integers(1, 256), st.lists(hostile, max_size=6), st.data())
def test_decoders_take_any_bytes(framing: Any, max_frame: int, chunks: list[bytes], data: Any) -> None:
    try:
        dec = fr.Decoder(framing, max_frame)
    except ValueError:
        return  # a fixed record over the bound: refused at config time
    error: fr.FramingError | None = None
    for chunk in chunks:
        dec.feed(chunk)
        for _ in range(50):
            want_body = data.draw(st.integers(-1, 300), label="body")
            try:
                got = dec.next_body(want_body) if want_body >= 0 else dec.next_frame()
            except fr.FramingError as e:
                assert str(e), "a framing error says what is wrong"
                if error is not None:
                    assert e is error  # sticky: the stream stays untrusted
                error = e
                break
            if got is None:
                break
            if want_body < 0:
                assert len(got) <= max_frame, (len(got), max_frame)
            else:
                assert len(got) == want_body
        assert dec.pending() >= 0


@FUZZ
@given(framings, st.binary(max_size=300))
def test_encode_frame_refuses_or_round_trips(framing: Any, payload: bytes) -> None:
    try:
        frame = fr.encode_frame(framing, payload)
    except fr.FramingError as e:
        assert str(e)
        return
    dec = fr.Decoder(framing, max(len(frame), 1) + 8)
    dec.feed(frame)
    got = dec.next_frame()
    if isinstance(framing, fr.FixedRecord):
        assert got is not None and got.rstrip(b" ") == payload.rstrip(b" ")
    else:
        assert got == payload
    assert dec.pending() == 0


# --- the ledger mapping's reply readers, fed what a broken backend might send ------------------

@pytest.fixture(scope="module")
def ledger_ops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LineOperation]:
    tmp: Path = tmp_path_factory.mktemp("fuzzops")
    cfg = {k: v for k, v in demo_like_config("127.0.0.1:1").items()
           if k not in ("grpc", "http", "admin")}
    (tmp / "adaptercar.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_all(tmp / "adaptercar.yaml", environ={}, run_examples=False)
    assert not loaded.errors, loaded.errors
    ops = {k: v for k, v in loaded.ops.items() if isinstance(v, LineOperation)}
    assert len(ops) >= 4
    return ops


@settings(max_examples=200, deadline=None, derandomize=False, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data(), st.lists(hostile, min_size=1, max_size=5))
def test_reply_readers_answer_a_message_or_a_call_error(
        ledger_ops: dict[str, LineOperation], data: Any, chunks: list[bytes]) -> None:
    path = data.draw(st.sampled_from(sorted(ledger_ops)), label="method")
    op = ledger_ops[path]
    rctx = op.render_context(op.input_class(), CallContext())
    dec = fr.Decoder(op.framing, op.reply.limits.max_reply_bytes)
    reader = op.reader(rctx)
    for chunk in chunks:
        dec.feed(chunk)
        try:
            out = reader.pump(dec)
        except CallError as e:
            assert e.message
            return
        if out is not None:
            assert isinstance(out, op.output_class)
            return
