"""The JSON front's compiled codec against json_format, the reference it must equal.

Encoding must give exactly `MessageToDict(msg, always_print_fields_with_no_presence=True)`
(same keys in the same order, same values), and the same error when json_format fails.
Decoding may decline (None: the front then runs ParseDict), but whenever it answers, ParseDict
must accept the same dict and build the very same message.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptercar.fronts.json_codec import MessageCodec, dumps
from adaptercar.protos import ProtoSet, compile_protos

PROTO3 = """\
syntax = "proto3";
package codec.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }

message Inner {
  string name = 1;
  int64 n = 2;
  repeated Inner kids = 3;
}

message All {
  string s = 1; bytes b = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
  sint32 si32 = 7; sint64 si64 = 8; fixed32 f32 = 9; fixed64 f64 = 10;
  sfixed32 sf32 = 11; sfixed64 sf64 = 12; bool flag = 13; float fl = 14; double db = 15;
  Color color = 16; Inner inner = 17; repeated string rs = 18; repeated int64 ri64 = 19;
  repeated Color rcolor = 20; repeated Inner rinner = 21; map<string, int32> m = 22;
  map<int64, Inner> mi = 23; optional string opt = 24;
  oneof choice { string cs = 25; int32 ci = 26; }
  google.protobuf.Timestamp ts = 27; google.protobuf.Int32Value w = 28;
  google.protobuf.Struct st = 29; repeated double rdb = 30; string snake_case_name = 31;
  repeated bool rflag = 32; repeated float rfl = 33; map<bool, string> mb = 34;
}

message Reply {
  string key = 1;
  uint32 flags = 2;
  string value = 3;
}
"""

PROTO2 = """\
syntax = "proto2";
package codec.v2;

enum Closed { ZERO = 0; ONE = 1; }

message P2 {
  optional string a = 1 [default = "dflt"];
  optional int32 b = 2;
  repeated int32 c = 3;
  optional Closed e = 4;
  extensions 100 to 200;
}

extend P2 { optional int32 ext = 100; }

message Plain2 {
  optional string a = 1;
  optional int64 b = 2 [default = 7];
  repeated string c = 3;
}
"""


@pytest.fixture(scope="module")
def ps(tmp_path_factory: pytest.TempPathFactory) -> ProtoSet:
    root: Path = tmp_path_factory.mktemp("codec-protos")
    (root / "codec3.proto").write_text(PROTO3)
    (root / "codec2.proto").write_text(PROTO2)
    return compile_protos([root])


def _cls(ps: ProtoSet, name: str) -> Any:
    return ps.message_class(ps.pool.FindMessageTypeByName(name))


def reference(msg: Any) -> Any:
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)


def same_encoding(codec: MessageCodec, msg: Any) -> None:
    want = reference(msg)
    got = codec.encode(msg)
    assert got == want
    assert json.dumps(got) == json.dumps(want)  # key order too, nested included
    assert dumps(got) == json.dumps(want).encode()  # and the front's own json.dumps


# --- encoding -----------------------------------------------------------------------------

I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=8)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
COLORS = st.sampled_from([0, 1, 2, 7])  # 7: an unknown value of an open enum

SCALARS: dict[str, Any] = {
    "s": TEXT, "b": st.binary(max_size=8), "i32": I32, "i64": I64, "u32": U32, "u64": U64,
    "si32": I32, "si64": I64, "f32": U32, "f64": U64, "sf32": I32, "sf64": I64,
    "flag": st.booleans(), "fl": F32, "db": FLOATS, "color": COLORS, "opt": TEXT,
    "cs": TEXT, "ci": I32, "snake_case_name": TEXT,
}
REPEATED: dict[str, Any] = {
    "rs": TEXT, "ri64": I64, "rcolor": COLORS, "rdb": FLOATS, "rflag": st.booleans(), "rfl": F32,
}


@st.composite
def all_messages(draw: st.DrawFn, cls: Any, inner_cls: Any) -> Any:
    msg = cls()
    for name in draw(st.lists(st.sampled_from(sorted(SCALARS)), unique=True)):
        setattr(msg, name, draw(SCALARS[name]))
    for name in draw(st.lists(st.sampled_from(sorted(REPEATED)), unique=True)):
        getattr(msg, name).extend(draw(st.lists(REPEATED[name], max_size=3)))
    if draw(st.booleans()):
        msg.inner.name = draw(TEXT)
        if draw(st.booleans()):
            msg.inner.kids.add(n=draw(I64))
    for _ in range(draw(st.integers(0, 2))):
        msg.rinner.add(name=draw(TEXT))
    for key, v in draw(st.dictionaries(TEXT, I32, max_size=2)).items():
        msg.m[key] = v
    for n in draw(st.lists(I64, max_size=2)):
        msg.mi[n].name = "x"
    for flag in draw(st.lists(st.booleans(), max_size=2)):
        msg.mb[flag] = "y"
    if draw(st.booleans()):
        msg.ts.seconds = draw(st.integers(0, 2**32))
    if draw(st.booleans()):
        msg.w.value = draw(I32)
    if draw(st.booleans()):
        msg.st.update({"a": draw(st.integers(0, 9)), "b": [draw(TEXT)]})
    if draw(st.booleans()):
        msg.inner.SetInParent()
    return msg


@given(data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_encode_equals_message_to_dict(ps: ProtoSet, data: st.DataObject) -> None:
    cls, inner = _cls(ps, "codec.v1.All"), _cls(ps, "codec.v1.Inner")
    codec = MessageCodec(cls, cls)
    same_encoding(codec, data.draw(all_messages(cls, inner)))


def test_encode_defaults_and_order(ps: ProtoSet) -> None:
    reply = _cls(ps, "codec.v1.Reply")
    codec = MessageCodec(reply, reply)
    # unset fields come after the set ones, in declaration order, exactly as json_format does
    got = codec.encode(reply(key="k", value="v"))
    assert list(got) == ["key", "value", "flags"]
    assert got == {"key": "k", "value": "v", "flags": 0}
    same_encoding(codec, reply())
    same_encoding(codec, reply(key="bench", flags=7, value="v" * 64))


def test_encode_proto2_and_extensions(ps: ProtoSet) -> None:
    p2 = _cls(ps, "codec.v2.P2")
    codec = MessageCodec(p2, p2)
    msg = p2(b=3)
    msg.c.extend([1, 2])
    same_encoding(codec, msg)
    same_encoding(codec, p2())
    plain = _cls(ps, "codec.v2.Plain2")
    pc = MessageCodec(plain, plain)
    for m in (plain(), plain(a="x"), plain(b=0), plain(c=["a"])):
        same_encoding(pc, m)


def test_encode_reports_json_format_errors(ps: ProtoSet) -> None:
    """Whatever json_format raises for a message, the codec raises too (here: none, but a
    NaN float, an unknown open enum value and an empty map all take their special paths)."""
    cls = _cls(ps, "codec.v1.All")
    codec = MessageCodec(cls, cls)
    msg = cls(fl=math.nan, db=-math.inf, color=9)
    msg.rfl.append(1.1)
    same_encoding(codec, msg)
    assert codec.encode(msg)["fl"] == "NaN"
    assert codec.encode(msg)["rfl"] == [1.1]


# --- decoding -----------------------------------------------------------------------------

KEYS = [
    "s", "b", "i32", "i64", "u32", "u64", "si32", "flag", "fl", "db", "color", "inner", "rs",
    "ri64", "rcolor", "rinner", "m", "opt", "cs", "ci", "ts", "w", "rdb", "snake_case_name",
    "snakeCaseName", "rflag", "unknown", "[ext]",
]
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), TEXT,
    st.sampled_from(["RED", "GREEN", "red", "7", "NaN", "Infinity", "\ud800", "a\udc00b", "1e3"]),
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.dictionaries(st.sampled_from(["name", "n", "kids", "x"]), kids, max_size=3),
    ),
    max_leaves=8,
)


def parse_dict(data: dict[str, Any], cls: Any) -> Any:
    return json_format.ParseDict(json.loads(json.dumps(data)), cls())


def same_message(a: Any, b: Any) -> None:
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert [f.name for f, _ in a.ListFields()] == [f.name for f, _ in b.ListFields()]


@st.composite
def near_miss(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-typed requests with some values, keys or spellings wrong: the fast path
    must take many of them (or this proves nothing) and never disagree with ParseDict."""
    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
        good = GOOD.get(key)
        out[key] = draw(JSON if good is None or draw(st.integers(0, 4)) == 0 else good)
    return out


@given(data=near_miss())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_decode_never_disagrees_with_parse_dict(ps: ProtoSet, data: dict[str, Any]) -> None:
    cls = _cls(ps, "codec.v1.All")
    codec = MessageCodec(cls, cls)
    fast = codec.decode(data)
    if fast is None:
        return  # the front runs ParseDict itself: its answer, its error
    same_message(fast, parse_dict(data, cls))


GOOD: dict[str, Any] = {
    "s": TEXT.filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t)),
    "i32": I32, "i64": I64, "u32": U32, "u64": U64, "flag": st.booleans(),
    "db": st.floats(allow_nan=False, allow_infinity=False),
    "color": st.sampled_from(["COLOR_UNSPECIFIED", "RED", "GREEN"]),
    "rs": st.lists(st.text(alphabet="abc", max_size=3), max_size=3),
    "ri64": st.lists(I64, max_size=3),
    "rflag": st.lists(st.booleans(), max_size=3),
    "inner": st.fixed_dictionaries(
        {}, optional={"name": st.text(alphabet="xy"), "n": I64, "kids": st.just([{"n": 1}])}
    ),
    "rinner": st.lists(st.fixed_dictionaries({"name": st.text(alphabet="xy")}), max_size=2),
    "snakeCaseName": st.text(alphabet="xyz", max_size=3),
    "snake_case_name": st.text(alphabet="xyz", max_size=3),
}


@st.composite
def well_typed(draw: st.DrawFn) -> dict[str, Any]:
    """Requests of the shapes the fast path is for: it must take them, and get them right."""
    names = draw(st.lists(st.sampled_from(sorted(set(GOOD) - {"snake_case_name"})), unique=True))
    return {k: draw(GOOD[k]) for k in names}


@given(data=well_typed())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_decode_takes_plain_requests(ps: ProtoSet, data: dict[str, Any]) -> None:
    cls = _cls(ps, "codec.v1.All")
    codec = MessageCodec(cls, cls)
    fast = codec.decode(data)
    assert fast is not None
    same_message(fast, parse_dict(data, cls))


@pytest.mark.parametrize(
    "data",
    [
        {"s": 1},  # wrong type: ParseDict's error message
        {"i32": 2**31},  # out of range
        {"i32": True},  # a bool is no integer
        {"i64": "12"},  # a string int64 is valid JSON mapping, but ParseDict's to read
        {"s": None},  # null
        {"s": "x", "unknown": 1},  # unknown field
        {"snake_case_name": "a", "snakeCaseName": "b"},  # one field, both spellings
        {"cs": "x"},  # oneof member
        {"m": {"a": 1}},  # map
        {"ts": "2020-01-01T00:00:00Z"},  # well-known type
        {"b": "AAAA"},  # bytes
        {"s": "a\ud800"},  # unpaired surrogate
        {"db": 1},  # an int for a double: ParseDict converts it
        {"color": 1},  # enum by number
    ],
)
def test_decode_declines_what_parse_dict_must_judge(ps: ProtoSet, data: dict[str, Any]) -> None:
    cls = _cls(ps, "codec.v1.All")
    assert MessageCodec(cls, cls).decode(data) is None


def test_decode_empty_submessage_is_present(ps: ProtoSet) -> None:
    cls = _cls(ps, "codec.v1.All")
    codec = MessageCodec(cls, cls)
    fast = codec.decode({"inner": {}})
    want = parse_dict({"inner": {}}, cls)
    assert want.HasField("inner")
    assert fast is not None
    same_message(fast, want)


def test_decode_proto2_extensions_go_to_parse_dict(ps: ProtoSet) -> None:
    p2 = _cls(ps, "codec.v2.P2")
    assert MessageCodec(p2, p2).decode({"b": 1}) is None
    plain = _cls(ps, "codec.v2.Plain2")
    fast = MessageCodec(plain, plain).decode({"a": "", "b": "5"})
    assert fast is None  # a string int64
    fast = MessageCodec(plain, plain).decode({"a": "", "c": ["q"]})
    assert fast is not None
    same_message(fast, parse_dict({"a": "", "c": ["q"]}, plain))
