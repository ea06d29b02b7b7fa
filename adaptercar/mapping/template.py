"""Safe templates: `{name}`, `{a.b}`, `{name:08d}`, `{name|len}`, `{meta.x-h}`, `{claims.sub}`,
`{env.NAME}`.

Templates are how mapping authors write legacy frames, so they must be expressive enough for
1990s protocols and incapable of anything else: a placeholder names a value and optionally a
filter and a format spec, nothing is evaluated. Every name is resolved against the request
message descriptor (or the reply rule's groups) once, at config load, into a getter; rendering
is then a join over precompiled parts with no lookups by string and no parsing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .errors import CallError, Code, quote_raw

_PLACEHOLDER = re.compile(
    r"""\{
    (?P<ref>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*)
    (?:\|(?P<filter>[A-Za-z_][A-Za-z0-9_]*))?
    (?::(?P<spec>[^{}]*))?
    \}""",
    re.VERBOSE,
)

FILTERS = ("len", "upper", "lower")


class TemplateError(ValueError):
    """A template that cannot be compiled; the message names the offending placeholder."""


@dataclass(slots=True)
class RenderContext:
    """Everything a placeholder may read during one call."""

    request: Any = None  # the request protobuf message
    groups: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scope:
    """What names a template may use: decided by where the template sits in a mapping."""

    request: Descriptor | None = None
    groups: frozenset[str] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    allow_meta: bool = True
    allow_claims: bool = True


Getter = Callable[[RenderContext], Any]
Part = str | Getter


def _render_scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _claim_text(value: Any) -> str:
    """A JWT claim as text: scalars as written in JSON, lists and objects as compact JSON
    (never a Python repr, which no legacy program should have to parse)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return _render_scalar(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


_PACK_F32 = struct.Struct("<f")


def _shortest_float32(value: float) -> float:
    """A float32 field holds 1.1 as 1.100000023841858; render the shortest decimal that is
    the same float32, as protobuf's JSON does, so `{f}` writes `1.1`."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    packed = _PACK_F32.pack(value)
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if _PACK_F32.pack(short) == packed:
            return short
    return value


@dataclass(frozen=True)
class Template:
    """A compiled template; `render` returns text, `names` lists the request fields it reads."""

    source: str
    parts: tuple[Part, ...]
    request_fields: frozenset[str]
    groups_used: frozenset[str]
    #: Set when the whole template is one plain `{group}` (no filter, no spec): its text is
    #: then `groups.get(group_ref, "")`, which reply readers use without a RenderContext.
    group_ref: str | None = None

    def render(self, ctx: RenderContext) -> str:
        parts = self.parts
        n = len(parts)
        if n == 1:
            p = parts[0]
            return p if isinstance(p, str) else p(ctx)
        if n == 2:  # the usual `VERB {field}`: no list to build
            a, b = parts
            return (a if isinstance(a, str) else a(ctx)) + (b if isinstance(b, str) else b(ctx))
        return "".join([p if isinstance(p, str) else p(ctx) for p in parts])

    @property
    def is_constant(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)


# What a getter returns for each field type, to try a format spec on at compile time.
# Bools and enums render as text (`true`, `RED`), so they take string specs only.
_SAMPLES: dict[int, Any] = {
    FieldDescriptor.CPPTYPE_STRING: "text",
    FieldDescriptor.CPPTYPE_INT32: 1,
    FieldDescriptor.CPPTYPE_INT64: 1,
    FieldDescriptor.CPPTYPE_UINT32: 1,
    FieldDescriptor.CPPTYPE_UINT64: 1,
    FieldDescriptor.CPPTYPE_DOUBLE: 1.5,
    FieldDescriptor.CPPTYPE_FLOAT: 1.5,
    FieldDescriptor.CPPTYPE_BOOL: "true",
    FieldDescriptor.CPPTYPE_ENUM: "NAME",
}


def _request_getter(scope: Scope, path: list[str], ref: str) -> tuple[Getter, Any]:
    """Resolve a dotted request path against the descriptor, once, into a getattr chain."""
    desc = scope.request
    if desc is None:
        raise TemplateError(f"{{{ref}}}: no request field can be used here")
    fd: FieldDescriptor | None = None
    for i, name in enumerate(path):
        if desc is None:
            raise TemplateError(
                f"{{{ref}}}: '{'.'.join(path[:i])}' is not a message, cannot read '{name}'"
            )
        fd = desc.fields_by_name.get(name)
        if fd is None:
            known = ", ".join(sorted(desc.fields_by_name)) or "none"
            raise TemplateError(
                f"{{{ref}}}: {desc.full_name} has no field '{name}' (fields: {known})"
            )
        if fd.is_repeated:
            raise TemplateError(f"{{{ref}}}: repeated field '{name}' cannot be rendered in a template")
        desc = fd.message_type if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE else None
    assert fd is not None
    if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        raise TemplateError(f"{{{ref}}}: '{ref}' is a message; name one of its fields")
    names = tuple(path)
    sample = _SAMPLES.get(fd.cpp_type, "text")

    if fd.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        assert fd.enum_type is not None
        by_number = {v.number: v.name for v in fd.enum_type.values}

        def get_enum(ctx: RenderContext, names: tuple[str, ...] = names) -> Any:
            v = ctx.request
            for n in names:
                v = getattr(v, n)
            return by_number.get(v, str(v))

        return get_enum, sample
    if fd.type == FieldDescriptor.TYPE_BYTES:
        enc = scope.encoding

        # surrogateescape: bytes the encoding cannot decode survive as lone surrogates and are
        # turned back into the same bytes when the frame is encoded, so a bytes field reaches
        # the backend as it was sent, whatever the encoding.
        def get_bytes(ctx: RenderContext, names: tuple[str, ...] = names) -> Any:
            v = ctx.request
            for n in names:
                v = getattr(v, n)
            return v.decode(enc, "surrogateescape")

        return get_bytes, sample
    if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:

        def get_bool(ctx: RenderContext, names: tuple[str, ...] = names) -> Any:
            v = ctx.request
            for n in names:
                v = getattr(v, n)
            return "true" if v else "false"

        return get_bool, sample
    if fd.cpp_type == FieldDescriptor.CPPTYPE_FLOAT:

        def get_float32(ctx: RenderContext, names: tuple[str, ...] = names) -> Any:
            v = ctx.request
            for n in names:
                v = getattr(v, n)
            return _shortest_float32(v)

        return get_float32, sample
    if len(names) == 1:
        (only,) = names

        def get_one(ctx: RenderContext, only: str = only) -> Any:
            return getattr(ctx.request, only)

        return get_one, sample

    def get_path(ctx: RenderContext, names: tuple[str, ...] = names) -> Any:
        v = ctx.request
        for n in names:
            v = getattr(v, n)
        return v

    return get_path, sample


def _resolve(scope: Scope, ref: str) -> tuple[Getter, Any, str | None, str | None]:
    """Return (getter, sample value, request field used, group used)."""
    head, _, rest = ref.partition(".")
    if head == "meta" and rest:
        if not scope.allow_meta:
            raise TemplateError(f"{{{ref}}}: request metadata is not available here")
        key = rest.lower()
        return (lambda ctx, key=key: ctx.meta.get(key, "")), "text", None, None
    if head == "claims" and rest:
        if not scope.allow_claims:
            raise TemplateError(f"{{{ref}}}: JWT claims are not available here")
        cpath = tuple(rest.split("."))

        def get_claim(ctx: RenderContext, cpath: tuple[str, ...] = cpath) -> Any:
            v: Any = ctx.claims
            for n in cpath:
                v = v.get(n, "") if isinstance(v, Mapping) else ""
            return _claim_text(v)

        return get_claim, "text", None, None
    if head == "env" and rest:
        if rest not in scope.env:
            raise TemplateError(f"{{{ref}}}: environment variable {rest} is not set")
        value = scope.env[rest]
        return (lambda ctx, value=value: value), value, None, None
    if ref in scope.groups:
        return (lambda ctx, ref=ref: ctx.groups.get(ref, "")), "text", None, ref
    getter, sample = _request_getter(scope, ref.split("."), ref)
    return getter, sample, ref, None


def _byte_length(text: str, encoding: str) -> int:
    try:
        return len(text.encode(encoding, "surrogateescape"))
    except UnicodeEncodeError:
        # The value cannot be sent in this encoding; the frame carrying it will be refused,
        # but a template may announce a length before that frame is rendered.
        return len(text.encode(encoding, "replace"))


def _wrap(
    getter: Getter, filt: str | None, spec: str | None, encoding: str, source: str,
    always_text: bool = False,
) -> Getter:
    if filt == "len":

        def g_len(ctx: RenderContext) -> Any:
            return _byte_length(_render_scalar(getter(ctx)), encoding)

        inner: Getter = g_len
    elif filt == "upper":
        inner = lambda ctx: _render_scalar(getter(ctx)).upper()  # noqa: E731
    elif filt == "lower":
        inner = lambda ctx: _render_scalar(getter(ctx)).lower()  # noqa: E731
    else:
        inner = getter
    if spec:

        def g_spec(ctx: RenderContext) -> Any:
            value = inner(ctx)
            try:
                return format(value, spec)
            except (ValueError, TypeError, OverflowError) as e:
                # Only a request value can get here (e.g. `{n:c}` with n past U+10FFFF):
                # the caller sent something this frame cannot carry.
                raise CallError(
                    Code.INVALID_ARGUMENT,
                    f"{source}: value {quote_raw(_render_scalar(value))} cannot be formatted "
                    f"as '{spec}' ({e})",
                ) from None

        return g_spec
    if filt is None and always_text:
        return getter  # _render_scalar would hand its text back unchanged
    return lambda ctx: _render_scalar(inner(ctx))


def compile_template(text: str, scope: Scope) -> Template:
    """Compile once at config load; raises TemplateError with a message users can act on."""
    parts: list[Part] = []
    plain_group: str | None = None  # the group of the last placeholder, if plain
    used_fields: set[str] = set()
    used_groups: set[str] = set()
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            m = _PLACEHOLDER.match(text, i)
            if m is None:
                end = text.find("}", i)
                bad = text[i : end + 1] if end >= 0 else text[i:]
                raise TemplateError(
                    f"bad placeholder {bad!r} (expected {{name}}, {{a.b}}, {{name:spec}} or "
                    f"{{name|len}}; write {{{{ for a literal brace)"
                )
            ref, filt, spec = m.group("ref"), m.group("filter"), m.group("spec")
            if filt is not None and filt not in FILTERS:
                raise TemplateError(f"{{{ref}|{filt}}}: unknown filter '{filt}' (expected one of: {', '.join(FILTERS)})")
            getter, sample, fld, grp = _resolve(scope, ref)
            if fld:
                used_fields.add(fld)
            if grp:
                used_groups.add(grp)
            if filt == "len":
                sample = 1
            elif filt in ("upper", "lower"):
                sample = "text"
            if spec:
                try:
                    format(sample, spec)
                except (ValueError, TypeError) as e:
                    kind = type(sample).__name__
                    raise TemplateError(f"{m.group(0)}: format spec '{spec}' does not fit a {kind} value ({e})") from None
            if literal:
                parts.append("".join(literal))
                literal = []
            # request fields, claims and env give text whenever their sample is text; groups
            # and metadata come from mappings a caller may fill with anything
            always_text = isinstance(sample, str) and grp is None and not ref.startswith("meta.")
            parts.append(
                _wrap(getter, filt, spec, scope.encoding, m.group(0), always_text=always_text)
            )
            plain_group = grp if grp and not filt and not spec else None
            i = m.end()
        elif c == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise TemplateError(f"single '}}' at position {i} (write }}}} for a literal brace)")
        else:
            j = i
            while j < n and text[j] not in "{}":
                j += 1
            literal.append(text[i:j])
            i = j
    if literal:
        parts.append("".join(literal))
    if not parts:
        parts.append("")
    only_group = plain_group if len(parts) == 1 and not isinstance(parts[0], str) else None
    return Template(text, tuple(parts), frozenset(used_fields), frozenset(used_groups), only_group)
