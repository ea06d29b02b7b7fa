"""Fuzz: the template compiler and renderer, and whole request encoding, with hostile input.

Template text (from a mapping file) is either compiled or refused with a TemplateError; a
compiled template renders any request value to text or refuses it with INVALID_ARGUMENT. A
request of the real ledger mapping with hostile values (control characters, CR/LF, non-latin-1,
huge) becomes exactly one framed line or an INVALID_ARGUMENT: never two frames, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adaptercar.compile import load_all
from adaptercar.mapping import framing as fr
from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.operation import CallContext, LineOperation
from adaptercar.mapping.template import RenderContext, Scope, TemplateError, compile_template
from adaptercar.protos import compile_protos
from tests.harness import ROOT, demo_like_config

FUZZ = settings(max_examples=200, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

_PROTOS = compile_protos([ROOT / "protos"])
_TRANSFER = _PROTOS.services()["ledger.v1.Ledger"].methods_by_name["Transfer"].input_type
_LIST = _PROTOS.services()["ledger.v1.Ledger"].methods_by_name["ListTransactions"].input_type

hostile_text = st.one_of(
    st.text(),
    st.text(alphabet="\r\n\x00\x02\x03\x1b\u2028\u00e9\U0001f600 .{}", max_size=40),
    st.tuples(st.sampled_from(["a", "\u00e9", "\U0001f600", "\r\n"]), st.integers(0, 20000)).map(
        lambda t: t[0] * t[1]),
)

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def messages(desc: Descriptor, cls: Any) -> st.SearchStrategy[Any]:
    """Messages of `desc` with hostile scalar values (message and repeated fields left empty)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.is_repeated or f.message_type is not None:
            continue
        if f.cpp_type in _INT_RANGES:
            lo, hi = _INT_RANGES[f.cpp_type]
            fields[f.name] = st.integers(lo, hi)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_STRING and f.type == FieldDescriptor.TYPE_BYTES:
            fields[f.name] = st.binary(max_size=200)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_STRING:
            fields[f.name] = hostile_text
        elif f.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            fields[f.name] = st.booleans()
        elif f.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
            fields[f.name] = st.floats(width=32 if f.cpp_type == FieldDescriptor.CPPTYPE_FLOAT else 64)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            fields[f.name] = st.sampled_from([v.number for v in f.enum_type.values])
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))


placeholder = st.one_of(
    st.sampled_from(["from_account", "to_account", "amount_cents", "env.X", "env.NOPE", "g",
                     "meta.x-user", "claims.sub", "nope", "a.b.c", "", "0", "amount_cents.x"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", max_size=12),
).flatmap(lambda ref: st.tuples(
    st.just(ref),
    st.sampled_from(["", "|len", "|upper", "|lower", "|nope", "|"]),
    st.one_of(st.just(""), st.sampled_from([":>10", ":08d", ":c", ":x", ":.3f", ":<{", ":%",
                                            ":" + "9" * 30 + "d", ":,", ":=^", ":!"]),
              st.text(max_size=6).map(lambda s: ":" + s)),
)).map(lambda t: "{" + t[0] + t[1] + t[2] + "}")

template_texts = st.one_of(
    st.text(),
    st.lists(st.one_of(placeholder, st.text(alphabet="{}ab \r\n", max_size=5)), max_size=8).map("".join),
    st.integers(0, 3000).map(lambda n: "{" * n + "x" + "}" * n),  # deeply nested braces
    st.integers(0, 50000).map(lambda n: "XFER " + "{from_account}" * (n // 100) + "a" * n),  # huge
)

SCOPE = Scope(request=_TRANSFER, groups=frozenset({"g"}), env={"X": "1"}, encoding="latin-1")


@FUZZ
@given(template_texts, messages(_TRANSFER, _PROTOS.message_class(_TRANSFER)),
       st.dictionaries(st.text(max_size=5), hostile_text, max_size=3))
def test_templates_compile_or_refuse_and_render_or_refuse(text: str, request: Any,
                                                           meta: dict[str, str]) -> None:
    try:
        tpl = compile_template(text, SCOPE)
    except TemplateError as e:
        assert str(e)  # says which placeholder and what was expected
        event("refused at compile time")
        return
    ctx = RenderContext(request, {"g": "\xff\r\n"}, {"x-user": "\x00", **meta}, {"sub": ["x", 1]})
    try:
        out = tpl.render(ctx)
    except CallError as e:
        assert e.code is Code.INVALID_ARGUMENT and e.message
        event("refused at render time")
        return
    assert isinstance(out, str)
    event("rendered")


@pytest.fixture(scope="module")
def ledger_ops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LineOperation]:
    tmp: Path = tmp_path_factory.mktemp("fuzztpl")
    cfg = {k: v for k, v in demo_like_config("127.0.0.1:1").items()
           if k not in ("grpc", "http", "admin")}
    (tmp / "adaptercar.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_all(tmp / "adaptercar.yaml", environ={}, run_examples=False)
    assert not loaded.errors, loaded.errors
    return {k: v for k, v in loaded.ops.items() if isinstance(v, LineOperation)}


@FUZZ
@given(st.data())
def test_ledger_requests_are_one_frame_or_invalid_argument(ledger_ops: dict[str, LineOperation],
                                                           data: Any) -> None:
    path = data.draw(st.sampled_from(sorted(ledger_ops)), label="method")
    op = ledger_ops[path]
    request = data.draw(messages(op.input_class.DESCRIPTOR, op.input_class), label="request")
    rctx = op.render_context(request, CallContext())
    try:
        wire = op.encode_request(rctx)
    except CallError as e:
        assert e.code is Code.INVALID_ARGUMENT and e.message
        event("request refused")
        return
    event("request sent")
    assert isinstance(op.framing, fr.Delimited)
    # the command line is one frame whatever the values hold: nothing injected after it
    head, sep, rest = wire.partition(op.framing.delimiter)
    assert sep and head
    if not any(item.body for item in op.items):
        assert rest == b"", wire[:200]
