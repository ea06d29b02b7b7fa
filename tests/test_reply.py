"""The reply state machine over a real framing Decoder: rules, bodies, `until` replies,
listings, unknown replies, bounds, and exact consumption under any chunking."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.mapping.convert import field_setter, repeated_message_field
from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.framing import Decoder, Delimited, Framing, LengthPrefixed
from adaptercar.mapping.reply import BodySpec, EachSpec, Limits, ReplySpec, Rule
from adaptercar.mapping.template import RenderContext, Scope, compile_template
from adaptercar.protos import compile_protos

PS = compile_protos([Path(__file__).parent / "check_cases" / "unit_protos"])
REQ = PS.pool.FindMessageTypeByName("unit.v1.Req")
REPLY = PS.pool.FindMessageTypeByName("unit.v1.Reply")
Req: Any = PS.message_class(REQ)
Reply: Any = PS.message_class(REPLY)
Row: Any = PS.message_class(PS.pool.FindMessageTypeByName("unit.v1.Row"))
ENC = "latin-1"
CRLF = Delimited(b"\r\n")


def rule(pattern: str, *, fields: dict[str, str] | None = None, error: str | None = None,
         message: str | None = None, body: str | None = None, into: str | None = None) -> Rule:
    pat = re.compile(pattern)
    sc = Scope(request=REQ, groups=frozenset(pat.groupindex), encoding=ENC)
    fs = tuple((compile_template(t, sc), field_setter(REPLY, f, ENC)) for f, t in (fields or {}).items())
    err = None
    if error is not None:
        err = (Code[error], compile_template(message, sc) if message is not None else None)
    b = None
    if body is not None:
        assert into is not None
        b = BodySpec(compile_template(body, sc), field_setter(REPLY, into, ENC))
    return Rule(pat, fs, err, b)


def fixed_each(into: str, cols: dict[str, tuple[int, int]]) -> EachSpec:
    parents, fd = repeated_message_field(REPLY, into)
    el = fd.message_type
    assert el is not None
    return EachSpec(parents, fd.name, PS.message_class(el),
                    fixed=tuple((field_setter(el, f, ENC), a, b) for f, (a, b) in cols.items()))


def match_each(into: str, pattern: str, fields: dict[str, str]) -> EachSpec:
    parents, fd = repeated_message_field(REPLY, into)
    el = fd.message_type
    assert el is not None
    pat = re.compile(pattern)
    sc = Scope(request=REQ, groups=frozenset(pat.groupindex), encoding=ENC)
    return EachSpec(parents, fd.name, PS.message_class(el), pattern=pat,
                    fields=tuple((compile_template(t, sc), field_setter(el, f, ENC))
                                 for f, t in fields.items()))


def spec(rules: Sequence[Rule] = (), *, until: str | None = None, each: EachSpec | None = None,
         limits: Limits | None = None, encoding: str = ENC) -> ReplySpec:
    return ReplySpec(Reply, tuple(rules), re.compile(until) if until else None, each, encoding,
                     limits or Limits())


def run(sp: ReplySpec, data: bytes, request: Any = None, framing: Framing = CRLF,
        max_frame: int = 1 << 20) -> tuple[Any, Decoder]:
    """Feed everything at once; return (message or CallError, decoder)."""
    dec = Decoder(framing, max_frame)
    dec.feed(data)
    reader = sp.reader(RenderContext(request=request if request is not None else Req()))
    try:
        return reader.pump(dec), dec
    except CallError as e:
        return e, dec


def run_chunked(sp: ReplySpec, chunks: Sequence[bytes], request: Any = None,
                framing: Framing = CRLF) -> tuple[Any, Decoder]:
    """Feed chunk by chunk, pumping after each; the result is the first non-None answer."""
    dec = Decoder(framing, 1 << 20)
    reader = sp.reader(RenderContext(request=request if request is not None else Req()))
    result: Any = None
    done = False
    for chunk in chunks:
        dec.feed(chunk)
        if done:
            continue
        try:
            result = reader.pump(dec)
        except CallError as e:
            result, done = e, True
            continue
        done = result is not None
    return result, dec


def same(a: Any, b: Any) -> bool:
    if isinstance(a, CallError) or isinstance(b, CallError):
        return (isinstance(a, CallError) and isinstance(b, CallError) and a.code == b.code
                and a.message == b.message and a.reusable == b.reusable)
    return bool(a == b)


# --- single-frame rules -----------------------------------------------------------------------

BALANCE = spec([
    rule(r"^OK (?P<cents>-?\d+) (?P<currency>[A-Z]{3})$",
         fields={"big": "{cents}", "name": "{currency}", "key": "{key}"}),
    rule(r"^ERR 404 (?P<msg>.*)$", error="NOT_FOUND", message="{msg} (asked for {key})"),
    rule(r"^ERR 4\d\d .*$", error="INVALID_ARGUMENT"),
])


def test_a_single_rule_fills_fields_from_groups_and_request() -> None:
    msg, dec = run(BALANCE, b"OK 125000 EUR\r\n", Req(key="1001"))
    assert msg == Reply(big=125000, name="EUR", key="1001")
    assert dec.pending() == 0


def test_error_rules_render_their_message() -> None:
    err, _ = run(BALANCE, b"ERR 404 no such account\r\n", Req(key="9999"))
    assert isinstance(err, CallError)
    assert err.code == Code.NOT_FOUND and err.message == "no such account (asked for 9999)"
    assert err.reusable  # the whole reply was read: the connection is in a known state


def test_an_error_rule_without_message_quotes_the_frame() -> None:
    err, _ = run(BALANCE, b"ERR 409 insufficient funds\r\n")
    assert isinstance(err, CallError)
    assert err.code == Code.INVALID_ARGUMENT and err.message == "ERR 409 insufficient funds"


def test_first_fitting_rule_wins() -> None:
    sp = spec([rule(r"OK (?P<x>.*)", fields={"name": "first {x}"}),
               rule(r"OK (?P<x>\d+)", fields={"name": "second {x}"})])
    assert run(sp, b"OK 12\r\n")[0] == Reply(name="first 12")
    sp = spec([rule(r"OK (?P<x>\d+)", fields={"name": "second {x}"}),
               rule(r"OK (?P<x>.*)", fields={"name": "first {x}"})])
    assert run(sp, b"OK 12\r\n")[0] == Reply(name="second 12")


@pytest.mark.parametrize("frame", [b"OK 1 EURX", b"XOK 1 EUR", b"OK 1 EUR ", b"OK 1 EUR\n"])
def test_a_rule_must_fit_the_whole_frame(frame: bytes) -> None:
    sp = spec([rule(r"OK (?P<cents>\d+) (?P<c>[A-Z]{3})", fields={"big": "{cents}"})])
    err, _ = run(sp, frame + b"\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN


def test_a_rule_without_fields_gives_an_empty_reply() -> None:
    sp = spec([rule(r"^OK$")])
    assert run(sp, b"OK\r\n")[0] == Reply()


def test_a_conversion_failure_is_internal_and_names_the_field() -> None:
    sp = spec([rule(r"^OK (?P<n>\S+)$", fields={"id": "{n}"})])
    err, dec = run(sp, b"OK 12x\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL
    assert "'id'" in err.message and "int32" in err.message and "'12x'" in err.message
    assert err.reusable and dec.pending() == 0


# --- unknown replies --------------------------------------------------------------------------

def test_no_rule_fits_is_unknown_with_the_raw_frame_and_closes() -> None:
    err, _ = run(BALANCE, b"WHAT?\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN
    assert "'WHAT?'" in err.message and not err.reusable


def test_unknown_quotes_a_huge_frame_truncated() -> None:
    err, _ = run(BALANCE, b"Z" * 50_000 + b"\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN
    assert "ZZZZ" in err.message and len(err.message) < 400 and "50000" in err.message


def test_unknown_quotes_the_frames_that_led_to_it() -> None:
    rows = b"".join(b"n%03d=%d\r\n" % (i, i) for i in range(100))
    err, _ = run(STATS, rows + b"not a stat\r\n.\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN
    assert "not a stat" in err.message and "n099=99" in err.message and "n000" not in err.message
    sp = spec([rule(r"^INFO .*$")], until=r"^\.$")
    err, _ = run(sp, b"INFO x\r\n" * 60 + b"LAST\r\n.\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN
    assert "LAST" in err.message


def test_an_error_without_message_quotes_its_own_frame_in_a_long_reply() -> None:
    sp = spec([rule(r"^ERR .*$", error="UNAVAILABLE"), rule(r"^INFO .*$")], until=r"^\.$")
    err, _ = run(sp, b"INFO x\r\n" * 60 + b"ERR down\r\n" + b"INFO y\r\n" * 3 + b".\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNAVAILABLE
    assert err.message == "ERR down"


def test_a_reply_the_encoding_cannot_decode_is_internal() -> None:
    sp = spec([rule(r"^OK (?P<x>.*)$", fields={"name": "{x}"})], encoding="utf-8")
    err, _ = run(sp, b"OK \xff\xfe\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL
    assert "utf-8" in err.message and not err.reusable
    assert run(sp, "OK é\r\n".encode())[0] == Reply(name="é")


# --- bodies -----------------------------------------------------------------------------------

STMT = spec([
    rule(r"^STMT (?P<acct>\d+) (?P<n>\d+)$", body="{n}", into="text", fields={"key": "{acct}"}),
    rule(r"^ERR 404 (?P<msg>.*)$", error="NOT_FOUND", message="{msg}"),
])


def test_a_body_holding_the_delimiter_is_read_by_count() -> None:
    body = b"LINE 1\r\nLINE 2\r\nEND"
    nxt = b"OK 1 EUR\r\n"
    msg, dec = run(STMT, b"STMT 1001 %d\r\n" % len(body) + body + b"\r\n" + nxt)
    assert msg == Reply(key="1001", text=body.decode(ENC))
    assert dec.pending() == len(nxt) and dec.next_frame() == b"OK 1 EUR"


def test_an_empty_body() -> None:
    msg, _ = run(STMT, b"STMT 1 0\r\n\r\n")
    assert msg == Reply(key="1", text="")


def test_a_body_not_followed_by_the_delimiter_is_internal() -> None:
    err, _ = run(STMT, b"STMT 1 3\r\nabcdEF")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable
    assert "framing" in err.message


def test_a_body_with_an_unusable_length_is_internal() -> None:
    sp = spec([rule(r"^STMT (?P<n>\S+)$", body="{n}", into="text")])
    err, _ = run(sp, b"STMT -3\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable
    assert "'-3' is not a byte count" in err.message


def test_a_fixed_body_count_and_a_length_prefixed_backend() -> None:
    sp = spec([rule(r"^DATA$", body="5", into="blob")])
    framing = LengthPrefixed(2)
    data = b"\x00\x04DATA" + b"\x00\x05a\x00b\x03c"
    msg, dec = run(sp, data, framing=framing)
    assert msg == Reply(blob=b"a\x00b\x03c") and dec.pending() == 0


# --- until + rules (memcached get) ------------------------------------------------------------

MEMCACHED_GET = spec(
    [rule(r"^VALUE (?P<key>\S+) (?P<flags>\d+) (?P<n>\d+)$", body="{n}", into="value",
          fields={"key": "{key}", "id": "{flags}"}),
     rule(r"^END$", error="NOT_FOUND", message="no such key {key}")],
    until=r"^(END|ERROR|CLIENT_ERROR.*|SERVER_ERROR.*)$",
)

MULTI_GET = spec(
    [rule(r"^VALUE (?P<key>\S+) (?P<flags>\d+) (?P<n>\d+)$", body="{n}", into="values"),
     rule(r"^END$", error="NOT_FOUND")],
    until=r"^(END|ERROR|CLIENT_ERROR.*|SERVER_ERROR.*)$",
)


DESIGN_GET = spec(
    [rule(r"^VALUE (?P<key>\S+) (?P<flags>\d+) (?P<n>\d+)$", body="{n}", into="value"),
     rule(r"^END$", error="NOT_FOUND")],
    until=r"^(END|ERROR|CLIENT_ERROR.*|SERVER_ERROR.*)$",
)


def test_memcached_get_exactly_as_the_design_writes_it() -> None:
    # The VALUE rule has a body and no fields: its body is the result, so the END that
    # follows a hit does not turn it into NOT_FOUND.
    msg, dec = run(DESIGN_GET, b"VALUE k1 0 5\r\nhello\r\nEND\r\n")
    assert msg == Reply(value="hello") and dec.pending() == 0
    err, dec = run(DESIGN_GET, b"END\r\n")
    assert isinstance(err, CallError) and err.code == Code.NOT_FOUND and err.message == "END"
    assert err.reusable and dec.pending() == 0


def test_memcached_get_hit() -> None:
    msg, dec = run(MEMCACHED_GET, b"VALUE k1 7 5\r\nhello\r\nEND\r\n", Req(key="k1"))
    assert msg == Reply(key="k1", id=7, value="hello")
    assert dec.pending() == 0


def test_memcached_get_hit_whose_value_looks_like_the_terminator() -> None:
    msg, _ = run(MEMCACHED_GET, b"VALUE k 0 5\r\nEND\r\n\r\nEND\r\n")
    assert msg == Reply(key="k", value="END\r\n")


def test_memcached_get_miss_is_not_found() -> None:
    err, dec = run(MEMCACHED_GET, b"END\r\nVALUE next 0 1\r\n", Req(key="k9"))
    assert isinstance(err, CallError) and err.code == Code.NOT_FOUND
    assert err.message == "no such key k9" and err.reusable
    assert dec.next_frame() == b"VALUE next 0 1"


def test_memcached_server_error_with_no_fitting_rule_is_a_normal_end() -> None:
    msg, _ = run(MEMCACHED_GET, b"SERVER_ERROR out of memory\r\n")
    assert msg == Reply()


def test_multi_get_reads_every_body() -> None:
    data = b"VALUE a 0 1\r\nx\r\nVALUE b 0 4\r\ny\r\nz\r\nVALUE c 0 0\r\n\r\nEND\r\n"
    msg, dec = run(MULTI_GET, data + b"END\r\n")
    assert msg == Reply(values=["x", "y\r\nz", ""])
    assert dec.pending() == len(b"END\r\n")


def test_until_reads_past_a_deciding_frame_to_the_terminator() -> None:
    sp = spec([rule(r"^ERR (?P<m>.*)$", error="FAILED_PRECONDITION", message="{m}"),
               rule(r"^INFO .*$")], until=r"^\.$")
    err, dec = run(sp, b"INFO a\r\nERR busy\r\nINFO b\r\n.\r\nNEXT\r\n")
    assert isinstance(err, CallError) and err.code == Code.FAILED_PRECONDITION
    assert err.message == "busy" and err.reusable
    assert dec.next_frame() == b"NEXT"


def test_until_with_an_unfitting_frame_and_no_decision_is_unknown() -> None:
    sp = spec([rule(r"^INFO .*$")], until=r"^\.$")
    err, dec = run(sp, b"INFO a\r\nGARBAGE\r\n.\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN and "GARBAGE" in err.message
    assert dec.pending() == 0  # read up to the terminator all the same


def test_until_is_a_search_not_a_fullmatch() -> None:
    sp = spec([], until=r"END")
    msg, dec = run(sp, b"a\r\nthe END.\r\nb\r\n")
    assert msg == Reply() and dec.next_frame() == b"b"


# --- until + each (listings) ------------------------------------------------------------------

HIST = spec(
    [rule(r"^\.$"), rule(r"^ERR 404 (?P<msg>.*)$", error="NOT_FOUND", message="{msg}")],
    until=r"^(\.|ERR \d{3} .*)$",
    each=fixed_each("rows", {"date": (0, 8), "amount_cents": (8, 20), "memo": (20, 60)}),
)


def hist_row(date: str, cents: int, memo: str) -> bytes:
    return f"{date}{cents:>12}{memo:<40}".encode(ENC)


def test_a_fixed_width_listing() -> None:
    data = hist_row("19970228", -500, "BANK CHARGES") + b"\r\n" + \
        hist_row("19970115", -12000, "Café Müller") + b"\r\n.\r\n"
    msg, dec = run(HIST, data)
    assert msg == Reply(rows=[Row(date="19970228", amount_cents=-500, memo="BANK CHARGES"),
                              Row(date="19970115", amount_cents=-12000, memo="Café Müller")])
    assert dec.pending() == 0


def test_fixed_slices_are_right_stripped_and_short_rows_give_empty_columns() -> None:
    msg, _ = run(HIST, b"20240101           7  memo  with spaces   \r\n2024\r\n.\r\n")
    assert msg == Reply(rows=[Row(date="20240101", amount_cents=7, memo="  memo  with spaces"),
                              Row(date="2024")])


def test_an_empty_listing() -> None:
    assert run(HIST, b".\r\n")[0] == Reply()


def test_an_error_ending_a_listing_is_an_error_never_an_empty_list() -> None:
    err, dec = run(HIST, b"ERR 404 no such account 9999\r\nOK\r\n")
    assert isinstance(err, CallError) and err.code == Code.NOT_FOUND
    assert err.message == "no such account 9999" and err.reusable
    assert dec.next_frame() == b"OK"


def test_a_terminator_with_no_fitting_rule_is_a_normal_end() -> None:
    msg, _ = run(HIST, hist_row("19970228", 1, "x") + b"\r\nERR 500 oops\r\n")
    assert msg == Reply(rows=[Row(date="19970228", amount_cents=1, memo="x")])


def test_a_listing_row_that_does_not_convert_fails_and_closes() -> None:
    err, _ = run(HIST, b"19970228       12x34memo\r\n.\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL
    assert "amount_cents" in err.message and "12x34" in err.message
    assert not err.reusable  # the rest of the listing was not read


STATS = spec(
    [rule(r"^ERR (?P<code>\d+) (?P<msg>.*)$", error="UNAVAILABLE", message="{code}: {msg}")],
    until=r"^(\.|ERR .*)$",
    each=match_each("rows", r"^(?P<name>\w+)=(?P<value>-?\d+)$",
                    {"memo": "{name}", "amount_cents": "{value}", "date": "{key}"}),
)


def test_each_match_with_groups_and_request_fields() -> None:
    msg, _ = run(STATS, b"accounts=3\r\nsessions=-1\r\n.\r\n", Req(key="K"))
    assert msg == Reply(rows=[Row(memo="accounts", amount_cents=3, date="K"),
                              Row(memo="sessions", amount_cents=-1, date="K")])
    err, _ = run(STATS, b"ERR 503 maintenance\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNAVAILABLE
    assert err.message == "503: maintenance"


def test_each_match_with_an_unfitting_row_is_unknown() -> None:
    err, _ = run(STATS, b"accounts=3\r\nuptime=1.5\r\n.\r\n")
    assert isinstance(err, CallError) and err.code == Code.UNKNOWN
    assert "uptime=1.5" in err.message and not err.reusable


# --- bounds -----------------------------------------------------------------------------------

def test_max_frames_bounds_a_listing_without_terminator() -> None:
    sp = spec([rule(r"^\.$")], until=r"^\.$", limits=Limits(max_reply_bytes=1 << 20, max_frames=5),
              each=fixed_each("rows", {"date": (0, 8)}))
    ok, _ = run(sp, b"a\r\n" * 4 + b".\r\n")  # five frames, the terminator included
    assert isinstance(ok, type(Reply())) and len(ok.rows) == 4
    err, _ = run(sp, b"a\r\n" * 5 + b".\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable
    assert "max_frames (5)" in err.message
    err, _ = run(sp, b"a\r\n" * 1000)  # a flood never reaches the terminator
    assert isinstance(err, CallError) and "max_frames" in err.message


def test_max_reply_bytes_over_all_frames() -> None:
    sp = spec([], until=r"^\.$", limits=Limits(max_reply_bytes=100, max_frames=10_000))
    assert isinstance(run(sp, b"x" * 40 + b"\r\n" + b"y" * 40 + b"\r\n.\r\n")[0], type(Reply()))
    err, _ = run(sp, (b"x" * 40 + b"\r\n") * 3 + b".\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable
    assert "max_reply_bytes (100)" in err.message


def test_max_reply_bytes_counts_bodies_and_refuses_a_huge_announced_body() -> None:
    sp = spec([rule(r"^V (?P<n>\d+)$", body="{n}", into="values")], until=r"^END$",
              limits=Limits(max_reply_bytes=100, max_frames=10))
    err, dec = run(sp, b"V 60\r\n" + b"a" * 60 + b"\r\nV 60\r\n")
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable
    assert "60 body bytes" in err.message
    err, dec = run(sp, b"V 999999999\r\n")
    assert isinstance(err, CallError) and "max_reply_bytes" in err.message


def test_an_oversize_frame_is_internal() -> None:
    err, _ = run(BALANCE, b"OK " + b"1" * 100, max_frame=50)
    assert isinstance(err, CallError) and err.code == Code.INTERNAL and not err.reusable


def test_an_incomplete_reply_asks_for_more() -> None:
    msg, dec = run(HIST, hist_row("19970228", 1, "x") + b"\r\n.")
    assert msg is None


# --- properties: any chunking, exact consumption -------------------------------------------------

def _memcached(values: list[str], hit: bool) -> bytes:
    if not hit:
        return b"END\r\n"
    out = b""
    for i, v in enumerate(values):
        b = v.encode(ENC)
        out += b"VALUE k%d 0 %d\r\n" % (i, len(b)) + b + b"\r\n"
    return out + b"END\r\n"


_body_text = st.lists(st.sampled_from(["a", "é", "\r", "\n", "\r\n", "END", " ", "."]),
                      max_size=8).map("".join)
_row_memo = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)

_SCENARIOS = st.one_of(
    st.builds(lambda vs, hit: (MULTI_GET, _memcached(vs, hit)),
              st.lists(_body_text, min_size=1, max_size=4), st.booleans()),
    st.builds(lambda memos, err: (HIST, b"".join(hist_row("20240101", i, m) + b"\r\n"
                                                  for i, m in enumerate(memos))
                                  + (b"ERR 404 gone\r\n" if err else b".\r\n")),
              st.lists(_row_memo, max_size=4), st.booleans()),
    st.builds(lambda body: (STMT, b"STMT 7 %d\r\n" % len(body.encode(ENC)) + body.encode(ENC) + b"\r\n"),
              _body_text),
    st.sampled_from([(BALANCE, b"OK 5 EUR\r\n"), (BALANCE, b"ERR 404 x\r\n"),
                     (BALANCE, b"??\r\n"), (STATS, b"a=1\r\nb=x\r\n.\r\n")]),
)
_NEXT = st.sampled_from([b"", b"OK 1 EUR\r\n", b"END\r\n", b".\r\n", b"\r\n", b"VALUE"])


@settings(max_examples=150, deadline=None)
@given(_SCENARIOS, _NEXT, st.data())
def test_any_chunking_gives_the_same_result_and_leaves_the_next_reply(
    scenario: tuple[ReplySpec, bytes], nxt: bytes, data: st.DataObject
) -> None:
    sp, reply = scenario
    whole, dec = run(sp, reply + nxt)
    assert whole is not None
    complete = not (isinstance(whole, CallError) and not whole.reusable)
    if complete:
        assert dec.pending() == len(nxt)  # exactly its own reply was consumed
    cuts = sorted(data.draw(st.lists(st.integers(0, len(reply) + len(nxt)), max_size=6)))
    buf = reply + nxt
    chunks = [buf[a:b] for a, b in zip([0, *cuts], [*cuts, len(buf)], strict=True)]
    got, dec2 = run_chunked(sp, chunks)
    assert same(got, whole)
    if complete:
        assert dec2.pending() == len(nxt)


@pytest.mark.parametrize(
    ("sp", "reply"),
    [(MULTI_GET, _memcached(["x", "y\r\nz", "END"], True)), (STMT, b"STMT 1 4\r\na\r\nb\r\n"),
     (HIST, hist_row("19970228", -500, "BANK") + b"\r\n.\r\n"),
     (HIST, b"ERR 404 no\r\n"), (MEMCACHED_GET, b"END\r\n")],
)
def test_split_at_every_boundary(sp: ReplySpec, reply: bytes) -> None:
    nxt = b"NEXT\r\n"
    whole, _ = run(sp, reply + nxt)
    buf = reply + nxt
    for cut in range(len(buf) + 1):
        got, dec = run_chunked(sp, [buf[:cut], buf[cut:]])
        assert same(got, whole), cut
        assert dec.pending() == len(nxt), cut
    got, dec = run_chunked(sp, [bytes([b]) for b in buf])  # one byte at a time
    assert same(got, whole) and dec.pending() == len(nxt)
