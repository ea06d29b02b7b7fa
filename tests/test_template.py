"""Templates: every placeholder form of the mapping language, its compile errors, and the
promise that nothing in a value or a template is ever evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.template import (
    RenderContext,
    Scope,
    TemplateError,
    compile_template,
)
from adaptercar.protos import ProtoSet, compile_protos

UNIT_PROTOS = Path(__file__).parent / "check_cases" / "unit_protos"


@pytest.fixture(scope="module")
def protoset() -> ProtoSet:
    return compile_protos([UNIT_PROTOS])


@pytest.fixture(scope="module")
def req_desc(protoset: ProtoSet) -> Any:
    return protoset.pool.FindMessageTypeByName("unit.v1.Req")


@pytest.fixture(scope="module")
def Req(protoset: ProtoSet, req_desc: Any) -> Any:  # noqa: N802 - a message class
    return protoset.message_class(req_desc)


def scope(req_desc: Any, **kw: Any) -> Scope:
    return Scope(request=req_desc, **kw)


def render(text: str, sc: Scope, request: Any = None, **ctx: Any) -> str:
    return compile_template(text, sc).render(RenderContext(request=request, **ctx))


# --- placeholder forms ------------------------------------------------------------------------

def test_plain_and_nested_fields(req_desc: Any, Req: Any) -> None:
    r = Req(name="alice", id=42, inner={"name": "in", "n": 7, "deep": {"leaf": "L"}})
    sc = scope(req_desc)
    assert render("HELLO {name} {id}", sc, r) == "HELLO alice 42"
    assert render("{inner.name}/{inner.n}/{inner.deep.leaf}", sc, r) == "in/7/L"
    assert render("{name}{name}", sc, r) == "alicealice"


def test_format_specs(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    r = Req(id=42, memo="a memo that is longer than twenty", ratio=2.5, big=-7)
    assert render("{id:08d}", sc, r) == "00000042"
    assert render("{big:+05d}", sc, r) == "-0007"
    assert render("{ratio:.3f}", sc, r) == "2.500"
    # precision truncates on purpose (the author's choice), width pads
    assert render("[{memo:<20.20}]", sc, r) == "[a memo that is longe]"
    assert render("[{memo:<20.20}]", sc, Req(memo="short")) == "[short               ]"
    assert render("{id:x}", sc, Req(id=255)) == "ff"


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("latin-1", "1"), ("utf-8", "2"), ("utf-16-le", "2"), ("cp037", "1")],
)
def test_len_is_the_byte_length_in_the_backend_encoding(
    req_desc: Any, Req: Any, encoding: str, expected: str
) -> None:
    sc = scope(req_desc, encoding=encoding)
    assert render("{name|len}", sc, Req(name="é")) == expected


def test_len_of_other_values_and_with_a_spec(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc, encoding="utf-8")
    r = Req(text="call back\r\nre: €", id=12345)
    assert render("{text|len}", sc, r) == str(len("call back\r\nre: €".encode()))
    assert render("{id|len}", sc, r) == "5"
    assert render("{text|len:06d}", sc, r) == "000018"
    assert render("{name|len}", sc, Req()) == "0"


def test_len_of_a_bytes_field_counts_its_own_bytes(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc, encoding="utf-8")
    assert render("{blob|len}", sc, Req(blob=b"\xff\x00ab")) == "4"


def test_upper_and_lower(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    r = Req(name="MiXeD", color=1)
    assert render("{name|upper} {name|lower}", sc, r) == "MIXED mixed"
    assert render("{color|lower}", sc, r) == "red"
    assert render("[{name|upper:>7}]", sc, r) == "[  MIXED]"


def test_meta_claims_and_env(req_desc: Any) -> None:
    sc = scope(req_desc, env={"LEDGER_USER": "demo", "EMPTY": ""})
    ctx = {"meta": {"x-h": "hv", "x-request-id": "r1"},
           "claims": {"sub": "user-1", "tenant": {"id": "t9"}, "n": 5, "admin": True,
                      "roles": ["a", "b"]}}
    assert render("{meta.x-h}", sc, None, **ctx) == "hv"
    assert render("{meta.X-Request-Id}", sc, None, **ctx) == "r1"  # metadata keys are lower-case
    assert render("[{meta.absent}]", sc, None, **ctx) == "[]"
    assert render("{claims.sub}", sc, None, **ctx) == "user-1"
    assert render("{claims.tenant.id}", sc, None, **ctx) == "t9"
    assert render("[{claims.nope}][{claims.sub.deeper}]", sc, None, **ctx) == "[][]"
    assert render("{claims.n} {claims.admin} {claims.roles}", sc, None, **ctx) == \
        '5 true ["a","b"]'
    assert render("[{claims.sub:>8}]", sc, None, **ctx) == "[  user-1]"
    assert render("[{claims.n:>3}]", sc, None, **ctx) == "[  5]"  # a claim is text
    assert render("LOGIN {env.LEDGER_USER}[{env.EMPTY}]", sc) == "LOGIN demo[]"


def test_escaped_braces(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    assert render("{{literal}} {name} }}{{", sc, Req(name="x")) == "{literal} x }{"
    assert render("{{{name}}}", sc, Req(name="x")) == "{x}"
    assert compile_template("{{}}", sc).is_constant


def test_enums_render_by_name_bools_as_true_false(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    assert render("{color} {inner.color}", sc, Req(color=2, inner={"color": 1})) == "GREEN RED"
    assert render("{flag}", sc, Req(flag=True)) == "true"
    assert render("{flag}", sc, Req(flag=False)) == "false"
    assert render("[{flag:>6}]", sc, Req(flag=True)) == "[  true]"
    assert render("{flag|upper}", sc, Req(flag=True)) == "TRUE"
    r = Req()
    r.color = 7  # proto3 enums are open: an unknown number renders as the number
    assert render("{color}", sc, r) == "7"


def test_absent_fields_render_as_defaults(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    text = "[{name}][{id}][{ratio}][{flag}][{color}][{inner.name}][{inner.deep.leaf}][{blob}]"
    assert render(text, sc, Req()) == "[][0][0.0][false][COLOR_UNSPECIFIED][][][]"


def test_float32_renders_its_shortest_decimal(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc)
    assert render("{f32}", sc, Req(f32=1.1)) == "1.1"
    assert render("{f32:.2f}", sc, Req(f32=1.1)) == "1.10"
    assert render("{ratio}", sc, Req(ratio=0.1)) == "0.1"


def test_groups_win_over_request_fields(req_desc: Any, Req: Any) -> None:
    sc = scope(req_desc, groups=frozenset({"name", "cents"}))
    tpl = compile_template("{name} {cents} {id}", sc)
    assert tpl.groups_used == frozenset({"name", "cents"})
    assert tpl.request_fields == frozenset({"id"})
    out = tpl.render(RenderContext(request=Req(name="req", id=3), groups={"name": "grp", "cents": "9"}))
    assert out == "grp 9 3"


def test_a_constant_template_is_its_text(req_desc: Any) -> None:
    tpl = compile_template("PING", scope(req_desc))
    assert tpl.is_constant and tpl.render(RenderContext()) == "PING"
    assert compile_template("", scope(req_desc)).render(RenderContext()) == ""


# --- compile errors ---------------------------------------------------------------------------

KNOWN = "big, blob, color, f32, flag, id, inner, key, memo, name, ratio, tags, text, u32"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BAL {acct}", f"{{acct}}: unit.v1.Req has no field 'acct' (fields: {KNOWN})"),
        ("{inner.nope}", "{inner.nope}: unit.v1.Inner has no field 'nope' (fields: color, deep, n, name)"),
        ("{name.x}", "{name.x}: 'name' is not a message, cannot read 'x'"),
        ("{name:08d}", "{name:08d}: format spec '08d' does not fit a str value"),
        ("{id:s}", "{id:s}: format spec 's' does not fit a int value"),
        ("{ratio:d}", "{ratio:d}: format spec 'd' does not fit a float value"),
        ("{color:d}", "{color:d}: format spec 'd' does not fit a str value"),
        ("{flag:d}", "{flag:d}: format spec 'd' does not fit a str value"),
        ("{name|len:s}", "{name|len:s}: format spec 's' does not fit a int value"),
        ("{name|foo}", "{name|foo}: unknown filter 'foo' (expected one of: len, upper, lower)"),
        ("{name|Upper}", "{name|Upper}: unknown filter 'Upper' (expected one of: len, upper, lower)"),
        ("a } b", "single '}' at position 2 (write }} for a literal brace)"),
        ("{name", "bad placeholder '{name'"),
        ("x {name y", "bad placeholder '{name y'"),
        ("{}", "bad placeholder '{}'"),
        ("{ name }", "bad placeholder '{ name }'"),
        ("{tags}", "{tags}: repeated field 'tags' cannot be rendered in a template"),
        ("{inner}", "{inner}: 'inner' is a message; name one of its fields"),
        ("{env.NOPE_NOT_SET}", "{env.NOPE_NOT_SET}: environment variable NOPE_NOT_SET is not set"),
    ],
)
def test_compile_errors_say_what_is_wrong(req_desc: Any, text: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(text, scope(req_desc))
    assert str(info.value).startswith(message), str(info.value)


def test_a_bad_placeholder_message_shows_the_forms_and_the_escape(req_desc: Any) -> None:
    with pytest.raises(TemplateError, match=r"expected \{name\}, \{a\.b\}, \{name:spec\}.*write \{\{"):
        compile_template("{f()}", scope(req_desc))


def test_names_that_the_place_does_not_offer(req_desc: Any) -> None:
    with pytest.raises(TemplateError, match="no request field can be used here"):
        compile_template("LOGIN {user}", Scope(request=None))
    with pytest.raises(TemplateError, match="request metadata is not available here"):
        compile_template("{meta.x}", Scope(request=None, allow_meta=False))
    with pytest.raises(TemplateError, match="JWT claims are not available here"):
        compile_template("{claims.sub}", Scope(request=None, allow_claims=False))


@pytest.mark.parametrize(
    "text",
    [
        "{a.__class__}", "{name.__class__}", "{__class__}", "{name.__len__}", "{f()}",
        "{name()}", "{name!r}", "{name[0]}", "{0}", "{name.upper()}", "{name:{id}}",
        "{__import__('os')}", "{name + 1}", "{meta}", "{claims}", "{env}",
    ],
)
def test_nothing_is_evaluated_attribute_access_and_calls_do_not_compile(
    req_desc: Any, text: str
) -> None:
    with pytest.raises(TemplateError):
        compile_template(text, scope(req_desc))


def test_a_value_that_a_spec_cannot_format_is_invalid_argument(req_desc: Any, Req: Any) -> None:
    tpl = compile_template("{big:c}", scope(req_desc))
    assert tpl.render(RenderContext(request=Req(big=65))) == "A"
    with pytest.raises(CallError) as info:
        tpl.render(RenderContext(request=Req(big=2**40)))
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "{big:c}" in info.value.message and "1099511627776" in info.value.message


# --- properties -------------------------------------------------------------------------------

def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@given(st.text())
def test_literal_only_templates_render_as_themselves(text: str) -> None:
    tpl = compile_template(_escape(text), Scope())
    assert tpl.is_constant
    assert tpl.render(RenderContext()) == text


@settings(max_examples=300)
@given(st.text())
def test_values_are_never_evaluated(req_desc: Any, Req: Any, value: str) -> None:
    tpl = compile_template("{name}", scope(req_desc))
    assert tpl.render(RenderContext(request=Req(name=value))) == value
    tpl2 = compile_template("<{name}|{memo:>3}>", scope(req_desc))
    assert tpl2.render(RenderContext(request=Req(name=value, memo=value))) == \
        f"<{value}|{value:>3}>"


@given(st.text(alphabet=st.sampled_from("{}abc.:|_!()[]0 "), max_size=12))
def test_arbitrary_templates_compile_or_fail_with_template_error(req_desc: Any, text: str) -> None:
    try:
        tpl = compile_template(text, scope(req_desc, groups=frozenset({"a", "b"})))
    except TemplateError:
        return
    tpl.render(RenderContext(request=None, groups={"a": "A", "b": "B"}))
