"""Requests on the wire: injection is impossible by construction, multi-frame requests and
byte-counted bodies, and offline runs of canned replies (how `check` runs `examples:`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.mapping.convert import field_setter
from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.framing import (
    Decoder,
    Delimited,
    FixedRecord,
    Framing,
    LengthPrefixed,
    StxEtx,
)
from adaptercar.mapping.operation import (
    CallContext,
    LineOperation,
    RequestItem,
    example_reply_bytes,
    line_breaks_refused,
    run_offline,
)
from adaptercar.mapping.reply import ReplySpec, Rule
from adaptercar.mapping.template import RenderContext, Scope, compile_template
from adaptercar.protos import compile_protos

PS = compile_protos([Path(__file__).parent / "check_cases" / "unit_protos"])
REQ = PS.pool.FindMessageTypeByName("unit.v1.Req")
REPLY = PS.pool.FindMessageTypeByName("unit.v1.Reply")
Req: Any = PS.message_class(REQ)
Reply: Any = PS.message_class(REPLY)
CRLF = Delimited(b"\r\n")


def make_op(items: Sequence[str | dict[str, str]], framing: Framing = CRLF, encoding: str = "latin-1",
            reply: ReplySpec | None = None) -> LineOperation:
    sc = Scope(request=REQ, encoding=encoding)
    compiled = tuple(
        RequestItem(compile_template(i, sc)) if isinstance(i, str)
        else RequestItem(compile_template(i["bytes"], sc), body=True)
        for i in items
    )
    if reply is None:
        pat = re.compile(r"OK (?P<x>.*)")
        rsc = Scope(request=REQ, groups=frozenset(pat.groupindex), encoding=encoding)
        rule = Rule(pat, ((compile_template("{x}", rsc), field_setter(REPLY, "name", encoding)),))
        reply = ReplySpec(Reply, (rule,), encoding=encoding)
    return LineOperation(service="unit.v1.Unit", method="Call", backend="b", input_class=Req,
                         output_class=Reply, items=compiled, reply=reply, framing=framing,
                         encoding=encoding)


def encode(op: LineOperation, **fields: Any) -> bytes:
    req = Req(**fields)
    return op.encode_request(op.render_context(req, CallContext()))


def refused(op: LineOperation, **fields: Any) -> CallError:
    with pytest.raises(CallError) as info:
        encode(op, **fields)
    assert info.value.code == Code.INVALID_ARGUMENT
    return info.value


# --- encoding requests ----------------------------------------------------------------------------

def test_a_single_frame() -> None:
    assert encode(make_op(["BAL {key}"]), key="1001") == b"BAL 1001\r\n"


def test_several_frames_and_a_counted_body() -> None:
    op = make_op(["NOTE {key} {text|len}", {"bytes": "{text}"}])
    text = "call back\r\nre: overdraft é"
    assert encode(op, key="1001", text=text) == \
        b"NOTE 1001 26\r\ncall back\r\nre: overdraft \xe9\r\n"
    op8 = make_op(["NOTE {key} {text|len}", {"bytes": "{text}"}], encoding="utf-8")
    assert encode(op8, key="1", text="é") == b"NOTE 1 2\r\n\xc3\xa9\r\n"


def test_resp_style_frames_with_a_literal_dollar() -> None:
    op = make_op(["*2", "$3", "GET", "${key|len}", "{key}"])
    assert encode(op, key="k1") == b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n"


@pytest.mark.parametrize("value", ["1001\r\nXFER 1 2 3", "1001\r\n", "\r\n", "a\nb", "a\rb", "\n", "x\r"])
def test_crlf_backends_refuse_cr_lf_and_crlf_in_values(value: str) -> None:
    e = refused(make_op(["BAL {key}"]), key=value)
    assert "injection" in e.message


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "\r\n"])
def test_lf_backends_refuse_line_breaks_too(value: str) -> None:
    refused(make_op(["BAL {key}"], framing=Delimited(b"\n")), key=value)


def test_a_nul_delimited_backend_refuses_nul_and_allows_line_breaks() -> None:
    op = make_op(["SET {key}"], framing=Delimited(b"\x00"))
    assert encode(op, key="a\r\nb") == b"SET a\r\nb\x00"
    refused(op, key="a\x00b")


def test_a_multi_byte_delimiter_refuses_itself_and_line_breaks() -> None:
    op = make_op(["CMD {key}"], framing=Delimited(b"\r\n.\r\n"))
    assert line_breaks_refused(op.framing, op.encoding)
    refused(op, key="x\r\n.\r\ny")
    refused(op, key="x\ny")
    assert encode(op, key="a.b") == b"CMD a.b\r\n.\r\n"


def test_an_ebcdic_delimiter_is_refused_in_its_encoding() -> None:
    op = make_op(["BAL {key}"], framing=Delimited("\r\n".encode("cp037")), encoding="cp037")
    assert encode(op, key="A1") == "BAL A1\r\n".encode("cp037")
    refused(op, key="A\nB")


def test_counted_bodies_may_hold_the_delimiter_but_not_unencodable_characters() -> None:
    op = make_op(["NOTE {text|len}", {"bytes": "{text}"}])
    assert encode(op, text="\r\n\r\n") == b"NOTE 4\r\n\r\n\r\n\r\n"
    e = refused(op, text="price €5")
    assert "'€'" in e.message and "latin-1" in e.message


def test_characters_the_encoding_lacks_are_refused() -> None:
    e = refused(make_op(["BAL {key}"]), key="10€1")
    assert "'€'" in e.message and "latin-1" in e.message
    refused(make_op(["BAL {key}"], framing=Delimited(b"\n"), encoding="ascii"), key="é")
    assert encode(make_op(["BAL {key}"], encoding="utf-8"), key="10€1") == "BAL 10€1\r\n".encode()


def test_nothing_is_produced_when_a_later_frame_fails() -> None:
    op = make_op(["FIRST {key}", "SECOND {text}"])
    refused(op, key="ok", text="bad\r\nQUIT")


def test_fixed_records_refuse_overflow_and_pad_the_rest() -> None:
    op = make_op(["Q{key}"], framing=FixedRecord(10))
    assert encode(op, key="123456789") == b"Q123456789"
    assert encode(op, key="12") == b"Q12       "
    e = refused(op, key="1234567890")
    assert "record" in e.message


def test_a_precision_truncates_on_purpose_so_the_record_fits() -> None:
    op = make_op(["Q{key:<9.9}"], framing=FixedRecord(10))
    assert encode(op, key="12345678901234") == b"Q123456789"


def test_length_prefixes_and_stx_etx() -> None:
    op = make_op(["{text}"], framing=LengthPrefixed(1))
    assert encode(op, text="abc") == b"\x03abc"
    refused(op, text="x" * 256)
    op = make_op(["{text}"], framing=StxEtx())
    assert encode(op, text="a\r\nb") == b"\x02a\r\nb\x03"
    refused(op, text="a\x03b")
    refused(op, text="a\x02b")


def test_a_bytes_field_reaches_the_backend_as_its_bytes() -> None:
    op = make_op(["SET {blob|len}", {"bytes": "{blob}"}], encoding="utf-8")
    assert encode(op, blob=b"\xff\x00\xfe") == b"SET 3\r\n\xff\x00\xfe\r\n"
    op = make_op(["SET {blob}"], encoding="utf-8")
    refused(op, blob=b"a\r\nb")


def test_a_value_a_format_spec_cannot_take_is_refused() -> None:
    op = make_op(["CHR {big:c}"])
    assert encode(op, big=65) == b"CHR A\r\n"
    refused(op, big=2**40)


def test_meta_and_claims_are_checked_like_any_value() -> None:
    op = make_op(["AS {meta.x-user} {claims.sub}"])
    rctx = RenderContext(Req(), {}, {"x-user": "bob\r\nXFER"}, {"sub": "s"})
    with pytest.raises(CallError) as info:
        op.encode_request(rctx)
    assert info.value.code == Code.INVALID_ARGUMENT
    ctx = CallContext(meta={"x-user": "bob"}, claims={"sub": "s1"})
    assert op.encode_request(op.render_context(Req(), ctx)) == b"AS bob s1\r\n"


# --- the property: never a frame boundary the template did not write -----------------------------

FRAMINGS: list[tuple[Framing, str]] = [
    (Delimited(b"\r\n"), "latin-1"), (Delimited(b"\n"), "utf-8"), (Delimited(b"\x00"), "utf-8"),
    (Delimited(b"END"), "latin-1"), (LengthPrefixed(1), "utf-8"), (LengthPrefixed(4, ascii=True), "latin-1"),
    (FixedRecord(24), "latin-1"), (StxEtx(), "cp037"),
]

_value = st.text(alphabet=st.one_of(
    st.sampled_from(["\r", "\n", "\x00", "\x02", "\x03", "E", "N", "D", "é", "€", " "]),
    st.characters(max_codepoint=0x2FF, exclude_categories=["Cs"]),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FRAMINGS), _value, _value)
def test_a_request_decodes_to_exactly_its_frames_or_is_refused(
    framing_enc: tuple[Framing, str], key: str, text: str
) -> None:
    framing, encoding = framing_enc
    op = make_op(["K {key}", "{text}|", "NOTE {text|len}", {"bytes": "{text}"}],
                 framing=framing, encoding=encoding)
    try:
        data = encode(op, key=key, text=text)
    except CallError as e:
        assert e.code == Code.INVALID_ARGUMENT
        return
    if line_breaks_refused(framing, encoding):
        assert not any(c in key + text for c in "\r\n")
    intended = [f"K {key}", f"{text}|", f"NOTE {len(text.encode(encoding))}", text]
    dec = Decoder(framing, 1 << 16)
    dec.feed(data)
    for i, want in enumerate(intended):
        payload = want.encode(encoding)
        got = dec.next_body(len(payload)) if i == 3 else dec.next_frame()
        if isinstance(framing, FixedRecord) and i != 3:
            payload = payload.rstrip(b" ")
        assert got == payload
    assert dec.pending() == 0


# --- offline runs (examples) ------------------------------------------------------------------------

def test_example_reply_text_forms() -> None:
    b = example_reply_bytes
    assert b(CRLF, "latin-1", "OK") == b"OK\r\n"
    assert b(CRLF, "latin-1", "STMT 1 4\nab\ncd") == b"STMT 1 4\r\nab\r\ncd\r\n"
    assert b(CRLF, "latin-1", "OK\n") == b"OK\r\n"  # a YAML block scalar's final newline
    assert b(CRLF, "latin-1", "STMT 1 4\r\na\r\nb\r\n") == b"STMT 1 4\r\na\r\nb\r\n"  # raw
    assert b(CRLF, "latin-1", "STMT 1 4\r\na\r\nb") == b"STMT 1 4\r\na\r\nb\r\n"
    assert b(Delimited(b"\n"), "utf-8", "a\nb") == b"a\nb\n"
    assert b(LengthPrefixed(1), "utf-8", "ab\nc") == b"\x02ab\x01c"
    assert b(CRLF, "latin-1", "") == b""


def test_run_offline_reads_a_canned_reply() -> None:
    op = make_op(["BAL {key}"])
    assert run_offline(op, Req(key="1"), "OK fine") == Reply(name="fine")
    assert run_offline(op, Req(key="1"), ["OK fine"]) == Reply(name="fine")


def test_run_offline_fails_like_a_live_call() -> None:
    op = make_op(["BAL {key}"])
    with pytest.raises(CallError) as info:
        run_offline(op, Req(key="1\r\n"), "OK fine")
    assert info.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(CallError) as info:
        run_offline(op, Req(key="1"), "WHAT")
    assert info.value.code == Code.UNKNOWN
    with pytest.raises(CallError) as info:
        run_offline(op, Req(key="1"), "")
    assert info.value.code == Code.DEADLINE_EXCEEDED and "ended before" in info.value.message
    with pytest.raises(CallError) as info:
        run_offline(op, Req(key="1"), "OK fine\nOK extra")
    assert info.value.code == Code.INTERNAL and "unread" in info.value.message
    with pytest.raises(CallError) as info:
        run_offline(op, Req(key="1"), "OK 5 €")
    assert info.value.code == Code.INVALID_ARGUMENT and "example reply" in info.value.message
