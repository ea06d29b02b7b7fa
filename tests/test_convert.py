"""Text from legacy replies into typed proto fields: what converts, and what fails loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptercar.mapping.convert import (
    ConfigTargetError,
    apply_all,
    field_setter,
    repeated_message_field,
)
from adaptercar.mapping.errors import CallError, Code
from adaptercar.protos import ProtoSet, compile_protos

UNIT_PROTOS = Path(__file__).parent / "check_cases" / "unit_protos"


@pytest.fixture(scope="module")
def protoset() -> ProtoSet:
    return compile_protos([UNIT_PROTOS])


@pytest.fixture(scope="module")
def reply_desc(protoset: ProtoSet) -> Any:
    return protoset.pool.FindMessageTypeByName("unit.v1.Reply")


@pytest.fixture(scope="module")
def Reply(protoset: ProtoSet, reply_desc: Any) -> Any:  # noqa: N802 - a message class
    return protoset.message_class(reply_desc)


def setv(reply_desc: Any, Reply: Any, target: str, text: str, encoding: str = "latin-1") -> Any:  # noqa: N803
    msg = Reply()
    field_setter(reply_desc, target, encoding).apply(msg, text)
    return msg


# --- integers -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "value"),
    [("00123", 123), ("  42  ", 42), ("-7", -7), ("+7", 7), ("-000", 0), ("", 0), ("   ", 0),
     ("2147483647", 2**31 - 1), ("-2147483648", -(2**31))],
)
def test_int32_accepts_leading_zeros_spaces_and_sign(
    reply_desc: Any, Reply: Any, text: str, value: int  # noqa: N803
) -> None:
    assert setv(reply_desc, Reply, "id", text).id == value


@pytest.mark.parametrize(
    ("target", "text"),
    [("id", "2147483648"), ("id", "-2147483649"), ("u32", "-1"), ("u32", "4294967296"),
     ("big", str(2**63)), ("u64", str(2**64)), ("s32", str(2**31))],
)
def test_out_of_range_integers_fail(reply_desc: Any, Reply: Any, target: str, text: str) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, target, text)
    assert info.value.code == Code.INTERNAL
    assert "out of range" in info.value.message


@pytest.mark.parametrize("text", ["12a", "1.5", "0x10", "1_000", "١٢٣", "- 5", "1e3", "++1"])
def test_text_that_is_not_an_integer_fails(reply_desc: Any, Reply: Any, text: str) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "big", text)
    assert info.value.code == Code.INTERNAL


def test_a_failure_names_the_field_its_type_and_the_raw_text(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "id", "12 apples")
    e = info.value
    assert e.code == Code.INTERNAL
    assert "'id'" in e.message and "(int32)" in e.message and "'12 apples'" in e.message
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "inner.n", "x")
    assert "'inner.n'" in info.value.message and "int32" in info.value.message
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "color", "BLUE")
    assert "unit.v1.Color" in info.value.message and "'BLUE'" in info.value.message


@pytest.mark.parametrize("target", ["id", "big", "u64", "ratio", "f32", "flag", "color"])
def test_the_raw_text_is_truncated_in_the_message(reply_desc: Any, Reply: Any, target: str) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, target, "x" * 100_000)
    assert len(info.value.message) < 500 and "xxxx" in info.value.message


# --- floats, bools, enums, bytes, strings ---------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "value"), [("1.5", 1.5), (" -0.25 ", -0.25), ("1e3", 1000.0), ("007", 7.0), ("", 0.0)]
)
def test_floats(reply_desc: Any, Reply: Any, text: str, value: float) -> None:  # noqa: N803
    assert setv(reply_desc, Reply, "ratio", text).ratio == value
    assert setv(reply_desc, Reply, "f32", text).f32 == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1,5", "1_0.5", "1.2.3"])
def test_bad_floats_fail(reply_desc: Any, Reply: Any, text: str) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "ratio", text)
    assert info.value.code == Code.INTERNAL and "(double)" in info.value.message


def test_a_float32_out_of_range_fails_instead_of_becoming_infinity(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    with pytest.raises(CallError, match="out of range"):
        setv(reply_desc, Reply, "f32", "1e40")
    assert setv(reply_desc, Reply, "ratio", "1e40").ratio == 1e40


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("yes", True), ("Y", True), ("1", True), ("on", True),
     ("false", False), ("no", False), ("0", False), ("", False), (" False ", False)],
)
def test_bools(reply_desc: Any, Reply: Any, text: str, value: bool) -> None:  # noqa: N803
    assert setv(reply_desc, Reply, "flag", text).flag is value


def test_a_bool_that_is_neither_fails(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    with pytest.raises(CallError, match=r"'maybe' for field 'flag' \(bool\)"):
        setv(reply_desc, Reply, "flag", "maybe")


@pytest.mark.parametrize(("text", "value"), [("RED", 1), ("green", 2), (" GREEN ", 2), ("1", 1), ("0", 0)])
def test_enums_by_name_or_number(reply_desc: Any, Reply: Any, text: str, value: int) -> None:  # noqa: N803
    assert setv(reply_desc, Reply, "color", text).color == value


@pytest.mark.parametrize("text", ["BLUE", "9", "-1", "", "1.0"])
def test_unknown_enum_values_fail(reply_desc: Any, Reply: Any, text: str) -> None:  # noqa: N803
    with pytest.raises(CallError) as info:
        setv(reply_desc, Reply, "color", text)
    assert "RED" in info.value.message  # the known names are listed


def test_bytes_are_the_text_in_the_backend_encoding(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    assert setv(reply_desc, Reply, "blob", "é", "latin-1").blob == b"\xe9"
    assert setv(reply_desc, Reply, "blob", "é", "utf-8").blob == b"\xc3\xa9"
    assert setv(reply_desc, Reply, "blob", "A", "cp037").blob == b"\xc1"


def test_strings_are_kept_exactly(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    assert setv(reply_desc, Reply, "text", "  padded \t").text == "  padded \t"


# --- targets --------------------------------------------------------------------------------

def test_nested_targets(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    msg = Reply()
    field_setter(reply_desc, "inner.name", "utf-8").apply(msg, "x")
    field_setter(reply_desc, "inner.deep.leaf", "utf-8").apply(msg, "leaf")
    field_setter(reply_desc, "inner.color", "utf-8").apply(msg, "GREEN")
    assert msg.inner.name == "x" and msg.inner.deep.leaf == "leaf" and msg.inner.color == 2


def test_repeated_scalars_append(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    msg = Reply()
    nums = field_setter(reply_desc, "nums", "utf-8")
    tags = field_setter(reply_desc, "tags", "utf-8")
    for t in ("1", "002", "-3"):
        nums.apply(msg, t)
    tags.apply(msg, "a")
    tags.apply(msg, "b")
    assert list(msg.nums) == [1, 2, -3] and list(msg.tags) == ["a", "b"]


def test_apply_all_sets_the_values_present(reply_desc: Any, Reply: Any) -> None:  # noqa: N803
    msg = Reply()
    setters = [field_setter(reply_desc, t, "utf-8") for t in ("id", "name", "flag")]
    apply_all(msg, setters, {"id": "5", "name": "n"})
    assert msg.id == 5 and msg.name == "n" and msg.flag is False


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope", "unit.v1.Reply has no field 'nope' (fields: big, blob, color,"),
        ("inner", "field 'inner' is a message; map its fields (e.g. 'inner.x')"),
        ("inner.nope", "unit.v1.Inner has no field 'nope'"),
        ("name.x", "cannot set 'name.x': 'name' is not a singular message field"),
        ("rows.date", "cannot set 'rows.date': 'rows' is not a singular message field"),
        ("rows", "field 'rows' is a message"),
    ],
)
def test_bad_targets_are_config_errors(reply_desc: Any, target: str, message: str) -> None:
    with pytest.raises(ConfigTargetError) as info:
        field_setter(reply_desc, target, "utf-8")
    assert str(info.value).startswith(message), str(info.value)


def test_each_into_must_be_a_repeated_message(reply_desc: Any) -> None:
    parents, fd = repeated_message_field(reply_desc, "rows")
    assert parents == () and fd.message_type is not None
    assert fd.message_type.full_name == "unit.v1.Row"
    for bad in ("tags", "inner", "name"):
        with pytest.raises(ConfigTargetError, match="must name a repeated message field"):
            repeated_message_field(reply_desc, bad)


# --- properties -----------------------------------------------------------------------------

@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(0, 5), st.integers(0, 3))
def test_int64_round_trips_through_text(
    reply_desc: Any, Reply: Any, value: int, zeros: int, spaces: int  # noqa: N803
) -> None:
    sign = "-" if value < 0 else ""
    text = " " * spaces + sign + "0" * zeros + str(abs(value)) + " " * spaces
    assert setv(reply_desc, Reply, "big", str(value)).big == value
    assert setv(reply_desc, Reply, "big", text).big == value


@given(st.integers())
def test_int32_converts_exactly_its_range(reply_desc: Any, Reply: Any, value: int) -> None:  # noqa: N803
    if -(2**31) <= value < 2**31:
        assert setv(reply_desc, Reply, "id", str(value)).id == value
    else:
        with pytest.raises(CallError):
            setv(reply_desc, Reply, "id", str(value))


@given(st.text(max_size=30))
def test_conversion_either_works_or_is_a_call_error(reply_desc: Any, Reply: Any, text: str) -> None:  # noqa: N803
    for target in ("id", "u64", "ratio", "f32", "flag", "color", "blob", "text"):
        try:
            setv(reply_desc, Reply, target, text, "utf-8")
        except CallError as e:
            assert e.code == Code.INTERNAL and f"'{target}'" in e.message
