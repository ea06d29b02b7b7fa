"""Text from a legacy reply → typed proto fields.

Legacy replies are text; proto fields are typed. Each reply rule knows at config load which
fields it fills, so a `FieldSetter` per target path is built once: it holds the converter for
the field's type and the attribute chain to reach it. A value that does not convert is an
INTERNAL error naming the field and the raw text — never a silently zeroed field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .errors import CallError, Code, quote_raw

Converter = Callable[[str], Any]

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", ""})


class ConfigTargetError(ValueError):
    """A mapping names a target field that cannot receive text (unknown, or a message)."""


# ASCII digits with an optional sign: Python's int() would also take "1_000" and non-ASCII
# digits such as "١٢٣", which no legacy reply means as a number.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT32_MAX = 3.4028234663852886e38


def _int_converter(lo: int, hi: int) -> Converter:
    def conv(text: str) -> int:
        s = text.strip()
        if not s:
            return 0  # a blank fixed-width column
        # plain ASCII digits (the usual case) need no regex; anything else must fit it
        if not (s.isascii() and s.isdigit()) and _INT_TEXT.fullmatch(s) is None:
            raise ValueError("not an integer")
        v = int(s, 10)
        if not lo <= v <= hi:
            raise ValueError(f"out of range [{lo}, {hi}]")
        return v

    return conv


def _float(text: str) -> float:
    s = text.strip()
    if not s:
        return 0.0
    try:
        if "_" in s:
            raise ValueError
        return float(s)
    except ValueError:
        # float()'s own message repeats the whole text, which may be megabytes
        raise ValueError("not a number") from None


def _float32(text: str) -> float:
    v = _float(text)
    if math.isfinite(v) and abs(v) > _FLOAT32_MAX:
        # protobuf would store inf without a word
        raise ValueError(f"out of range for a float (±{_FLOAT32_MAX:g})")
    return v


def _bool(text: str) -> bool:
    s = text.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("not a boolean (expected true/false, yes/no, 1/0)")


def converter_for(fd: FieldDescriptor, encoding: str) -> Converter:
    """The text → value function for one scalar field; built once per config load."""
    ct = fd.cpp_type
    if ct in _INT_RANGES:
        lo, hi = _INT_RANGES[ct]
        return _int_converter(lo, hi)
    if ct == FieldDescriptor.CPPTYPE_DOUBLE:
        return _float
    if ct == FieldDescriptor.CPPTYPE_FLOAT:
        return _float32
    if ct == FieldDescriptor.CPPTYPE_BOOL:
        return _bool
    if ct == FieldDescriptor.CPPTYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        names = {v.name: v.number for v in enum_type.values}
        upper = {k.upper(): v for k, v in names.items()}
        numbers = {v.number for v in enum_type.values}

        def enum_conv(text: str) -> int:
            s = text.strip()
            if s in names:
                return names[s]
            if s.upper() in upper:
                return upper[s.upper()]
            if s.lstrip("-").isdigit() and int(s) in numbers:
                return int(s)
            raise ValueError(f"not a value of enum {enum_type.name} ({', '.join(names)})")

        return enum_conv
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return lambda text: text.encode(encoding, "surrogateescape")
    if ct == FieldDescriptor.CPPTYPE_STRING:
        return str
    raise ConfigTargetError(f"field '{fd.name}' is a message; map its fields (e.g. '{fd.name}.x')")


@dataclass(frozen=True)
class FieldSetter:
    """Sets one (possibly nested, possibly repeated-scalar) field from text."""

    target: str
    parents: tuple[str, ...]
    name: str
    convert: Converter
    repeated: bool
    type_name: str
    #: Neither nested nor repeated: the value is set on the message itself.
    plain: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", not self.parents and not self.repeated)

    def apply(self, msg: Any, text: str) -> None:
        try:
            value = self.convert(text)
        except (ValueError, UnicodeError) as e:
            raise CallError(
                Code.INTERNAL,
                f"cannot convert reply value {quote_raw(text)} for field '{self.target}' "
                f"({self.type_name}): {e}",
            ) from None
        obj = msg
        for p in self.parents:
            obj = getattr(obj, p)
        if self.repeated:
            getattr(obj, self.name).append(value)
        else:
            setattr(obj, self.name, value)


def _type_name(fd: FieldDescriptor) -> str:
    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM and fd.enum_type is not None:
        return fd.enum_type.full_name
    names = {
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_BYTES: "bytes",
        FieldDescriptor.TYPE_BOOL: "bool",
        FieldDescriptor.TYPE_DOUBLE: "double",
        FieldDescriptor.TYPE_FLOAT: "float",
        FieldDescriptor.TYPE_INT32: "int32",
        FieldDescriptor.TYPE_INT64: "int64",
        FieldDescriptor.TYPE_UINT32: "uint32",
        FieldDescriptor.TYPE_UINT64: "uint64",
        FieldDescriptor.TYPE_SINT32: "sint32",
        FieldDescriptor.TYPE_SINT64: "sint64",
        FieldDescriptor.TYPE_FIXED32: "fixed32",
        FieldDescriptor.TYPE_FIXED64: "fixed64",
        FieldDescriptor.TYPE_SFIXED32: "sfixed32",
        FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    }
    return names.get(fd.type, "value")


def resolve_target(desc: Descriptor, target: str) -> tuple[tuple[str, ...], FieldDescriptor]:
    """Walk a dotted target path through singular message fields."""
    parts = target.split(".")
    parents: list[str] = []
    d: Descriptor | None = desc
    fd: FieldDescriptor | None = None
    for i, name in enumerate(parts):
        if d is None:
            raise ConfigTargetError(f"'{'.'.join(parts[:i])}' is not a message, cannot set '{target}'")
        fd = d.fields_by_name.get(name)
        if fd is None:
            known = ", ".join(sorted(d.fields_by_name)) or "none"
            raise ConfigTargetError(f"{d.full_name} has no field '{name}' (fields: {known})")
        if i < len(parts) - 1:
            if fd.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE or fd.is_repeated:
                raise ConfigTargetError(f"cannot set '{target}': '{name}' is not a singular message field")
            parents.append(name)
            d = fd.message_type
        else:
            d = None
    assert fd is not None
    return tuple(parents), fd


def field_setter(desc: Descriptor, target: str, encoding: str) -> FieldSetter:
    parents, fd = resolve_target(desc, target)
    if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        raise ConfigTargetError(f"field '{target}' is a message; map its fields (e.g. '{target}.x')")
    repeated = fd.is_repeated
    return FieldSetter(target, parents, fd.name, converter_for(fd, encoding), repeated, _type_name(fd))


def repeated_message_field(desc: Descriptor, target: str) -> tuple[tuple[str, ...], FieldDescriptor]:
    """The `each.into` target: must be a repeated message field."""
    parents, fd = resolve_target(desc, target)
    if not fd.is_repeated or fd.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE:
        raise ConfigTargetError(f"'each.into: {target}' must name a repeated message field")
    return parents, fd


def apply_all(msg: Any, setters: Sequence[FieldSetter], values: Mapping[str, str]) -> None:
    for s in setters:
        v = values.get(s.target)
        if v is not None:
            s.apply(msg, v)
