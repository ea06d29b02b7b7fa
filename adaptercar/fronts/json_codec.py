"""proto3 JSON for the JSON front, compiled once per message type.

`json_format.MessageToDict` and `ParseDict` walk descriptors and dispatch on field types for
every call; profiled, they were ~10% of a JSON call's CPU. A `MessageCodec` resolves each
field once into a small converter and keeps only the per-value work, with a strict rule:

- Encoding gives exactly `MessageToDict(msg, always_print_fields_with_no_presence=True)`,
  key order included (set fields in field-number order, then the defaults of the fields
  without presence in declaration order). Values that need care (floats, enums, bytes,
  well-known types) go through json_format's own per-field code; anything the compiled
  encoder does not expect makes it redo the whole message with json_format, so the output
  and the errors are json_format's.
- Decoding only takes the shapes it can prove ParseDict accepts the same way (known field
  names, values of exactly the field's JSON type, no oneofs, maps, nulls or well-known types)
  and returns None for everything else: the caller then runs ParseDict, so every error
  message is ParseDict's.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # None without _json

_PRINTER: Any = getattr(json_format, "_Printer")(always_print_fields_with_no_presence=True)  # noqa: B009
_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
_INT32 = (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32)
_FLOATS = (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE)
_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 32  # deeper requests go to ParseDict (whose own limit is 100)

Conv = Callable[[Any], Any]


def _is_map(fd: FieldDescriptor) -> bool:
    mt = fd.message_type
    return bool(
        fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
        and mt is not None
        and mt.GetOptions().map_entry
    )


def _special(desc: Descriptor) -> bool:
    """Well-known types and wrappers have their own JSON forms: json_format handles them."""
    return desc.full_name.startswith("google.protobuf.")


# --- encoding ---------------------------------------------------------------------------


def _whole_message(msg: Any) -> Any:
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)


class _Encoder:
    __slots__ = ("desc", "fields", "defaults", "ready")

    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        self.fields: dict[int, tuple[str, Conv]] = {}
        self.defaults: tuple[tuple[str, Any, int], ...] = ()
        self.ready = False


def _identity(v: Any) -> Any:
    return v


def _bytes(v: bytes) -> str:
    return base64.b64encode(v).decode("utf-8")


def _value_conv(fd: FieldDescriptor, encoders: dict[str, _Encoder]) -> Conv:
    ct = fd.cpp_type
    if ct == FieldDescriptor.CPPTYPE_MESSAGE:
        mt = fd.message_type
        assert mt is not None
        if _special(mt):
            return _whole_message
        enc = _encoder(mt, encoders)
        return lambda v: _encode(enc, v)
    if ct == FieldDescriptor.CPPTYPE_STRING:
        return _bytes if fd.type == FieldDescriptor.TYPE_BYTES else _identity
    if ct in _INT32 or ct == FieldDescriptor.CPPTYPE_BOOL:
        return _identity
    if ct in _INT64:
        return str
    if ct == FieldDescriptor.CPPTYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        known = {v.number: _PRINTER._FieldToJsonObject(fd, v.number) for v in enum_type.values}

        def enum_conv(v: int) -> Any:
            got = known.get(v)
            return got if got is not None else _PRINTER._FieldToJsonObject(fd, v)

        return enum_conv
    # floats: NaN, infinities and float32's shortest form, exactly as json_format writes them
    return lambda v: _PRINTER._FieldToJsonObject(fd, v)


def _field_conv(fd: FieldDescriptor, encoders: dict[str, _Encoder]) -> Conv:
    if _is_map(fd):
        mt = fd.message_type
        assert mt is not None
        vconv = _value_conv(mt.fields_by_name["value"], encoders)

        def map_conv(value: Any) -> Any:
            out = {}
            for key in value:
                name = ("true" if key else "false") if isinstance(key, bool) else str(key)
                out[name] = vconv(value[key])
            return out

        return map_conv
    conv = _value_conv(fd, encoders)
    if fd.is_repeated:
        if conv is _identity:
            return list
        return lambda value: [conv(v) for v in value]
    return conv


def _encoder(desc: Descriptor, encoders: dict[str, _Encoder]) -> _Encoder:
    """Compiled once per type; `encoders` breaks cycles of recursive message types."""
    enc = encoders.get(desc.full_name)
    if enc is not None:
        return enc
    enc = encoders[desc.full_name] = _Encoder(desc)
    if desc.extension_ranges or _special(desc):
        return enc  # not ready: extensions and well-known types are json_format's
    for fd in desc.fields:
        enc.fields[fd.number] = (fd.json_name, _field_conv(fd, encoders))
    defaults: list[tuple[str, Any, int]] = []
    for fd in desc.fields:
        if fd.has_presence:
            continue
        if _is_map(fd):
            defaults.append((fd.json_name, None, 2))
        elif fd.is_repeated:
            defaults.append((fd.json_name, None, 1))
        else:
            defaults.append((fd.json_name, _PRINTER._FieldToJsonObject(fd, fd.default_value), 0))
    enc.defaults = tuple(defaults)
    enc.ready = True
    return enc


def _encode(enc: _Encoder, msg: Any) -> dict[str, Any]:
    if not enc.ready:
        return _whole_message(msg)  # type: ignore[no-any-return]
    js: dict[str, Any] = {}
    fields = enc.fields
    for fd, value in msg.ListFields():
        name, conv = fields[fd.number]
        js[name] = conv(value)
    for name, default, kind in enc.defaults:
        if name not in js:
            js[name] = default if kind == 0 else [] if kind == 1 else {}
    return js


# --- decoding ---------------------------------------------------------------------------

Check = Callable[[Any, int], Any]
_NO = object()  # "not a shape the fast path takes"


class _Decoder:
    __slots__ = ("cls", "fields")

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        # key (JSON name first, then proto name, as ParseDict looks them up) → (name, check)
        self.fields: dict[str, tuple[str, Check]] = {}


def _scalar_check(fd: FieldDescriptor) -> Check | None:
    ct = fd.cpp_type
    if ct in _RANGES:
        lo, hi = _RANGES[ct]
        return lambda v, depth: v if type(v) is int and lo <= v <= hi else _NO
    if ct == FieldDescriptor.CPPTYPE_BOOL:
        return lambda v, depth: v if type(v) is bool else _NO
    if ct == FieldDescriptor.CPPTYPE_STRING and fd.type != FieldDescriptor.TYPE_BYTES:
        return lambda v, depth: (
            v if type(v) is str and (v.isascii() or _SURROGATE.search(v) is None) else _NO
        )
    if ct == FieldDescriptor.CPPTYPE_DOUBLE:
        # finite floats only: ints, NaN, infinities and strings take ParseDict's path
        return lambda v, depth: v if type(v) is float and v - v == 0.0 else _NO
    if ct == FieldDescriptor.CPPTYPE_ENUM:
        enum_type = fd.enum_type
        assert enum_type is not None
        by_name = {v.name: v.number for v in enum_type.values}
        return lambda v, depth: by_name.get(v, _NO) if type(v) is str else _NO
    return None  # bytes, float32: ParseDict


def _message_check(mt: Descriptor, decoders: dict[str, _Decoder | None], cls: Any) -> Check | None:
    sub = _decoder(mt, cls, decoders)
    if sub is None:
        return None

    def check(v: Any, depth: int) -> Any:
        if type(v) is not dict or depth >= _MAX_DEPTH:
            return _NO
        got = _decode(sub, v, depth + 1)
        return _NO if got is None else got

    return check


def _decoder(desc: Descriptor, cls: Any, decoders: dict[str, _Decoder | None]) -> _Decoder | None:
    if desc.full_name in decoders:
        return decoders[desc.full_name]
    if _special(desc) or desc.extension_ranges:
        decoders[desc.full_name] = None
        return None
    dec = decoders[desc.full_name] = _Decoder(cls)
    taken: dict[str, tuple[str, Check]] = {}
    sample = cls()
    for fd in desc.fields:
        if fd.containing_oneof is not None or _is_map(fd):
            continue
        check: Check | None
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            mt = fd.message_type
            assert mt is not None
            if _special(mt):
                continue
            sub_cls = type(getattr(sample, fd.name).add()) if fd.is_repeated else type(getattr(sample, fd.name))
            check = _message_check(mt, decoders, sub_cls)
        else:
            check = _scalar_check(fd)
        if check is None:
            continue
        if fd.is_repeated:
            check = _list_check(check)
        taken[fd.name] = (fd.name, check)
    # ParseDict looks a key up by JSON name first, then by proto name: a key must lead to the
    # same field here, and a key naming a field the fast path does not take has no entry.
    by_json = {fd.json_name: fd for fd in desc.fields}
    by_proto = {fd.name: fd for fd in desc.fields}
    for key in {*by_json, *by_proto}:
        target = by_json.get(key) or by_proto[key]
        entry = taken.get(target.name)
        if entry is not None:
            dec.fields[key] = entry
    return dec


def _list_check(elem: Check) -> Check:
    def check(v: Any, depth: int) -> Any:
        if type(v) is not list:
            return _NO
        out = []
        for item in v:
            got = elem(item, depth)
            if got is _NO:
                return _NO
            out.append(got)
        return out

    return check


def _decode(dec: _Decoder, data: Mapping[str, Any], depth: int) -> Any:
    kwargs: dict[str, Any] = {}
    fields = dec.fields
    for key, value in data.items():
        entry = fields.get(key)
        if entry is None:
            return None
        name, check = entry
        if name in kwargs:
            return None  # the same field under both spellings: ParseDict's rules apply
        got = check(value, depth)
        if got is _NO:
            return None
        kwargs[name] = got
    try:
        return dec.cls(**kwargs)
    except (TypeError, ValueError):
        return None


class MessageCodec:
    """The JSON codec of one rpc: `decode` a request dict, `encode` a reply message."""

    __slots__ = ("_in", "_out")

    def __init__(self, input_class: Any, output_class: Any) -> None:
        self._in = _decoder(input_class.DESCRIPTOR, input_class, {})
        self._out = _encoder(output_class.DESCRIPTOR, {})

    def decode(self, data: Mapping[str, Any]) -> Any | None:
        """The request message, or None: then only ParseDict can say what to do with it."""
        if self._in is None:
            return None
        return _decode(self._in, data, 0)

    def encode(self, msg: Any) -> dict[str, Any]:
        """Exactly `MessageToDict(msg, always_print_fields_with_no_presence=True)`."""
        try:
            return _encode(self._out, msg)
        except Exception:  # noqa: BLE001 - json_format then raises its own error, or not
            return _whole_message(msg)  # type: ignore[no-any-return]


# json.dumps(obj) with default settings builds a C encoder object on every call; this one is
# built once with the very same settings (", " and ": ", ASCII only, NaN allowed). Only the
# check for circular references is left out: codec output is a tree.
_C_ENCODER: Any = (
    _c_make_encoder(
        None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
        False, False, True,
    )
    if _c_make_encoder is not None
    else None
)


def dumps(obj: Any) -> bytes:
    """`json.dumps(obj).encode()`, cheaper."""
    if _C_ENCODER is None:  # pragma: no cover
        return json.dumps(obj).encode()
    return "".join(_C_ENCODER(obj, 0)).encode()
