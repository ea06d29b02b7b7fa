"""A proto method ↔ a WSDL operation: request kwargs for zeep, zeep results to proto, faults.

Everything here is decided once, when the mapping is compiled: which proto field feeds which
schema element, how each value is converted, which fault rule yields which gRPC code. Per call
only the compiled plans run. The module does no I/O; reading the reply's bytes into an envelope
(`read_reply`) is here too because it is pure and is where the hardening lives: a reply is
never parsed with entities, a DTD or network access, and anything that is not a SOAP envelope
becomes a clear error quoting a short snippet, never a parser traceback.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from lxml import etree

from .errors import CallError, Code, quote_raw
from .template import RenderContext, Template

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"

SNIPPET = 160


class SoapMappingError(ValueError):
    """A mapping that cannot work with this WSDL; raised at compile time only."""


_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def norm(name: str) -> str:
    """snake_case, camelCase and PascalCase spellings of one name compare equal (and so do
    `a-b` / `a.b` and the `a_b` that import-wsdl makes of them). Compile time only."""
    return _NOT_ALNUM.sub("", name.lower())


# --- schema view --------------------------------------------------------------------------

@dataclass(frozen=True)
class Elem:
    """What the plans need of one zeep schema element."""

    name: str
    required: bool
    many: bool
    complex: Any  # the zeep complex type; None: a simple type
    simple: Any = None  # the zeep simple type (None for a complex one)


def array_item(zeep_type: Any) -> Any:
    """The item type of a SOAP-encoded array (a restriction of soapenc:Array whose
    `wsdl:arrayType` names it), else None. zeep renders a list as its items and reads the items
    back as a list, so such an element maps to a repeated field of the item type."""
    attr = getattr(zeep_type, "_array_type", None)
    return getattr(attr, "array_type", None) if attr is not None else None


def schema_elems(zeep_type: Any) -> tuple[Elem, ...]:
    """A zeep complex type's child elements, one level (recursive types stay finite).
    An xsd:any (zeep's `_value_N`) is never required: no field can feed elements of any name,
    and the backend sends it empty (`backends.soap.optional_any`)."""
    from zeep.xsd.elements import Any as AnyElement

    out = []
    for name, el in getattr(zeep_type, "elements", ()):
        sub = getattr(el, "type", None)
        max_occurs = getattr(el, "max_occurs", 1)
        many = max_occurs == "unbounded" or (isinstance(max_occurs, int) and max_occurs > 1)
        item = array_item(sub)
        if item is not None:
            sub, many = item, True
        is_complex = bool(getattr(sub, "elements", None))
        out.append(Elem(name=name, required=getattr(el, "min_occurs", 1) >= 1
                        and not getattr(el, "nillable", False) and item is None
                        and not isinstance(el, AnyElement),
                        many=many, complex=sub if is_complex else None,
                        simple=None if is_complex else sub))
    return tuple(out)


_Memo = dict[tuple[str, int], Any]


# --- request ------------------------------------------------------------------------------

_TS = "google.protobuf.Timestamp"

#: The enumeration values of a zeep simple type (() when it has none): zeep keeps no facets,
#: so the backend reads them from the schema and hands this lookup to the compiler.
Literals = Callable[[Any], tuple[str, ...]]


def _no_literals(_typ: Any) -> tuple[str, ...]:
    return ()


_UNSET = object()  # an enum's zero value that the schema has no literal for: "not given"


def _enum_to_xsd(fd: FieldDescriptor, literals: tuple[str, ...]) -> Callable[[Any], Any]:
    """Proto enum number → the schema's literal, matched by name the way import-wsdl names
    values (`SKY_PARTLY_CLOUDY` ↔ `partly-cloudy`); without literals, the value's name."""
    assert fd.enum_type is not None
    names = {v.number: v.name for v in fd.enum_type.values}
    if not literals:
        return lambda v: names.get(v, str(v))
    prefix = norm(fd.enum_type.name)
    by_norm: dict[str, str] = {}
    for lit in literals:
        by_norm.setdefault(norm(lit), lit)
        by_norm.setdefault(prefix + norm(lit), lit)
    table = {v.number: by_norm[norm(v.name)] for v in fd.enum_type.values if norm(v.name) in by_norm}

    def conv(v: Any) -> Any:
        lit = table.get(v)
        if lit is not None:
            return lit
        if v == 0:
            return _UNSET
        raise CallError(Code.INVALID_ARGUMENT, f"{fd.name}: {names.get(v, v)} is not one of the "
                                               f"values the service accepts")
    return conv


def _to_zeep_scalar(fd: FieldDescriptor, check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if fd.enum_type is not None:
        return check
    if fd.message_type is not None and fd.message_type.full_name == _TS:
        return lambda v: v.ToDatetime(tzinfo=dt.UTC)
    return check


# --- values against the schema's simple types ---------------------------------------------

_INT_RANGES: tuple[tuple[str, int | None, int | None], ...] = (
    ("UnsignedByte", 0, 2**8 - 1), ("UnsignedShort", 0, 2**16 - 1),
    ("UnsignedInt", 0, 2**32 - 1), ("UnsignedLong", 0, 2**64 - 1),
    ("PositiveInteger", 1, None), ("NonNegativeInteger", 0, None),
    ("NegativeInteger", None, -1), ("NonPositiveInteger", None, 0),
    ("Byte", -(2**7), 2**7 - 1), ("Short", -(2**15), 2**15 - 1),
    ("Int", -(2**31), 2**31 - 1), ("Long", -(2**63), 2**63 - 1), ("Integer", None, None),
)


_XSD_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")  # no exponent, no NaN


def value_checker(simple: Any, literals: tuple[str, ...], name: str) -> Callable[[Any], Any]:
    """A value bound for an element of this simple type → the value to send, or
    INVALID_ARGUMENT naming `name` (nothing is sent): text that is not a number for a numeric
    type, a number out of the type's range, a literal the enumeration does not list. Decided
    at compile time; per call it is one call. zeep does not check values itself."""
    from zeep.xsd.types import builtins as b

    def bad(v: Any, what: str) -> CallError:
        return CallError(Code.INVALID_ARGUMENT, f"{name}: {quote_raw(str(v))} is not {what}")

    if literals:
        allowed = frozenset(literals)
        shown = ", ".join(literals[:8]) + (", ..." if len(literals) > 8 else "")

        def enum(v: Any) -> Any:
            if v is _UNSET or str(v) in allowed:
                return v
            raise bad(v, f"one of {shown}")
        return enum
    for cls_name, lo, hi in _INT_RANGES:
        if isinstance(simple, getattr(b, cls_name)):
            label = f"an xsd:{cls_name[:1].lower()}{cls_name[1:]}"

            def integer(v: Any, lo: int | None = lo, hi: int | None = hi,
                        label: str = label) -> Any:
                if isinstance(v, bool):
                    raise bad(v, label)
                try:
                    n = v if isinstance(v, int) else int(str(v).strip())
                except ValueError:
                    raise bad(v, label) from None
                if (lo is not None and n < lo) or (hi is not None and n > hi):
                    raise bad(v, f"{label} in range")
                return n
            return integer
    if isinstance(simple, b.Boolean):
        def boolean(v: Any) -> Any:
            if isinstance(v, bool):
                return v
            text = str(v).strip()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise bad(v, "a boolean (true, false, 1, 0)")
        return boolean
    if isinstance(simple, b.Decimal | b.Float | b.Double):
        exact = isinstance(simple, b.Decimal)

        def number(v: Any) -> Any:
            if not isinstance(v, str):
                return v
            text = v.strip()
            if exact:
                if not _XSD_DECIMAL.fullmatch(text):
                    raise bad(v, "a decimal number")
                return decimal.Decimal(text)
            try:
                return float(decimal.Decimal(text))
            except decimal.InvalidOperation:
                raise bad(v, "a number") from None
        return number
    if isinstance(simple, b.DateTime | b.Date | b.Time):
        what = {b.DateTime: "an ISO 8601 date and time", b.Date: "an ISO 8601 date"}.get(
            type(simple), "an ISO 8601 time")
        parse = simple.pythonvalue

        def when(v: Any) -> Any:
            if not isinstance(v, str):
                return v
            try:
                parse(v.strip())
            except Exception:  # noqa: BLE001 - isodate raises several kinds
                raise bad(v, what) from None
            return v.strip()
        return when
    return lambda v: v


@dataclass(frozen=True)
class _ReqField:
    attr: str
    elem: str
    required: bool
    repeated: bool
    sub: RequestPlan | None
    conv: Callable[[Any], Any]
    has_presence: bool
    is_string: bool


@dataclass(eq=False)
class RequestPlan:
    """Filled after creation, so a recursive type's plan can refer to itself."""

    fields: list[_ReqField]

    def build(self, msg: Any, where: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.fields:
            value = getattr(msg, f.attr)
            if f.repeated:
                items = [f.sub.build(v, f"{where}{f.attr}.") if f.sub else f.conv(v) for v in value]
                if _UNSET in items:
                    raise CallError(Code.INVALID_ARGUMENT, f"{where}{f.attr}: the zero value of "
                                                           f"an enum is not an item")
                if f.required and not items:
                    raise CallError(Code.INVALID_ARGUMENT, f"{where}{f.attr} is required (at least one)")
                out[f.elem] = items
                continue
            if f.has_presence and not msg.HasField(f.attr):
                if f.required:
                    raise CallError(Code.INVALID_ARGUMENT, f"{where}{f.attr} is required")
                continue
            if f.is_string and f.required and value == "":
                raise CallError(Code.INVALID_ARGUMENT, f"{where}{f.attr} is required")
            v = f.sub.build(value, f"{where}{f.attr}.") if f.sub else f.conv(value)
            if v is _UNSET:  # an enum left at its zero value
                if f.required:
                    raise CallError(Code.INVALID_ARGUMENT, f"{where}{f.attr} is required")
                continue
            out[f.elem] = v
        return out


def _scalar_conv(fd: FieldDescriptor, el: Elem, literals: Literals,
                 name: str) -> Callable[[Any], Any]:
    """Proto value → what zeep gets for this element, checked against its simple type."""
    lits = literals(el.simple) if el.simple is not None else ()
    check = value_checker(el.simple, lits, name) if el.simple is not None else (lambda v: v)
    if fd.enum_type is not None:
        to_xsd = _enum_to_xsd(fd, lits)
        return lambda v: check(to_xsd(v))
    return _to_zeep_scalar(fd, check)


def compile_request(desc: Descriptor, zeep_type: Any, where: str,
                    memo: _Memo | None = None, literals: Literals = _no_literals) -> RequestPlan:
    """Proto fields matched to elements by name; an element the schema requires that no
    field feeds, or a field that matches no element, is a mapping error."""
    memo = {} if memo is None else memo
    key = (desc.full_name, id(zeep_type))
    if key in memo:
        return memo[key]  # type: ignore[no-any-return]
    plan = memo[key] = RequestPlan([])
    elems = schema_elems(zeep_type)
    by_norm = {norm(e.name): e for e in elems}
    fields = []
    used = set()
    for fd in desc.fields:
        el = by_norm.get(norm(fd.name))
        if el is None:
            known = ", ".join(e.name for e in elems) or "none"
            raise SoapMappingError(f"{where}: field {fd.name!r} of {desc.full_name} matches no "
                                   f"element of the request (elements: {known})")
        used.add(el.name)
        repeated = fd.is_repeated
        is_msg = fd.message_type is not None and fd.message_type.full_name != _TS
        sub = None
        if is_msg:
            if el.complex is None:
                raise SoapMappingError(f"{where}: field {fd.name!r} is a message but element "
                                       f"{el.name!r} is a simple type")
            sub = compile_request(_msg_type(fd), el.complex, f"{where}.{el.name}", memo, literals)
        fields.append(_ReqField(
            attr=fd.name, elem=el.name, required=el.required, repeated=repeated,
            sub=sub, conv=_scalar_conv(fd, el, literals, fd.name), has_presence=not repeated and fd.has_presence,
            is_string=fd.type == FieldDescriptor.TYPE_STRING))
    missing = [e.name for e in elems if e.required and e.name not in used]
    if missing:
        raise SoapMappingError(f"{where}: the request needs element(s) {', '.join(missing)}, "
                               f"which no field of {desc.full_name} provides (add the fields or "
                               f"map them with 'request')")
    plan.fields.extend(fields)
    return plan


_ONE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


@dataclass(frozen=True)
class ExplicitRequest:
    """`request: {element: "{field}"}`: a lone placeholder passes the typed value; anything
    else renders to text. Either is checked against the element's simple type before the
    envelope is built (zeep would send `abc` as an xsd:int), then escaped by zeep's writer."""

    items: tuple[tuple[str, Callable[[Any, RenderContext], Any]], ...]

    def build(self, msg: Any, rctx: RenderContext) -> dict[str, Any]:
        out = {}
        for name, get in self.items:
            v = get(msg, rctx)
            if v is not _UNSET:
                out[name] = v
        return out


def compile_explicit_request(desc: Descriptor, elems: tuple[Elem, ...],
                             mapping: Mapping[str, str],
                             compile_tpl: Callable[[str], Template], where: str,
                             literals: Literals = _no_literals) -> ExplicitRequest:
    by_name = {e.name: e for e in elems}
    items: list[tuple[str, Callable[[Any, RenderContext], Any]]] = []
    for elem, text in mapping.items():
        el = by_name.get(elem)
        if el is None:
            raise SoapMappingError(f"{where}.{elem}: the request has no element {elem!r} "
                                   f"(elements: {', '.join(sorted(by_name)) or 'none'})")
        lits = literals(el.simple) if el.simple is not None else ()
        m = _ONE_PLACEHOLDER.fullmatch(text)
        fd = _field_path(desc, m.group(1)) if m is not None else None
        if m is not None and fd is not None:
            path = tuple(m.group(1).split("."))
            label = m.group(1) if norm(m.group(1)) == norm(elem) else f"{m.group(1)} (as {elem})"
            conv = _scalar_conv(fd, el, literals, label)

            def get(msg: Any, _rctx: RenderContext, path: tuple[str, ...] = path,
                    conv: Callable[[Any], Any] = conv) -> Any:
                for p in path:
                    msg = getattr(msg, p)
                return conv(msg)

            items.append((elem, get))
            continue
        tpl = compile_tpl(text)
        check = (value_checker(el.simple, lits, f"{elem} (rendered from {text!r})")
                 if el.simple is not None else (lambda v: v))

        def render(_msg: Any, rctx: RenderContext, tpl: Template = tpl,
                   check: Callable[[Any], Any] = check) -> Any:
            return check(tpl.render(rctx))

        items.append((elem, render))
    missing = [e.name for e in elems if e.required and e.name not in mapping]
    if missing:
        raise SoapMappingError(f"{where}: the request needs element(s) {', '.join(missing)}, "
                               f"which 'request' does not map")
    return ExplicitRequest(tuple(items))


def _msg_type(fd: FieldDescriptor) -> Descriptor:
    assert fd.message_type is not None
    return fd.message_type


def _field_path(desc: Descriptor, dotted: str) -> FieldDescriptor | None:
    fd = None
    d: Descriptor | None = desc
    for part in dotted.split("."):
        if d is None:
            return None
        fd = d.fields_by_name.get(part)
        if fd is None:
            return None
        d = fd.message_type
    if fd is not None and (fd.message_type is not None or fd.is_repeated):
        return None  # only scalars pass through typed
    return fd


# --- response -----------------------------------------------------------------------------

def _setter_value(fd: FieldDescriptor, where: str) -> Callable[[Any], Any]:
    """zeep value (int, str, bool, Decimal, datetime, ...) → the proto field's Python type."""
    t = fd.type
    name = fd.name

    def bad(v: Any) -> CallError:
        return CallError(Code.INTERNAL, f"{where}: reply value {quote_raw(str(v))} does not fit "
                                        f"field {name!r}")

    if fd.enum_type is not None:
        values = {norm(v.name): v.number for v in fd.enum_type.values}
        prefix = norm(fd.enum_type.name)

        def enum(v: Any) -> Any:
            key = norm(str(v))
            n = values.get(key, values.get(prefix + key))
            if n is None:
                raise bad(v)
            return n
        return enum
    if t == FieldDescriptor.TYPE_STRING:
        def text(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, dt.datetime | dt.date | dt.time):
                return v.isoformat()
            return v if isinstance(v, str) else str(v)
        return text
    if t == FieldDescriptor.TYPE_BOOL:
        def boolean(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            if str(v).strip().lower() in ("true", "1"):
                return True
            if str(v).strip().lower() in ("false", "0"):
                return False
            raise bad(v)
        return boolean
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        def real(v: Any) -> float:
            try:
                return float(v)
            except (TypeError, ValueError):
                raise bad(v) from None
        return real
    if t == FieldDescriptor.TYPE_BYTES:
        return lambda v: v if isinstance(v, bytes) else str(v).encode()

    def integer(v: Any) -> int:
        try:
            if isinstance(v, decimal.Decimal | float) and v != int(v):
                raise bad(v)
            return int(v)
        except (TypeError, ValueError, decimal.InvalidOperation):
            raise bad(v) from None
    return integer


@dataclass(frozen=True)
class _RespField:
    attr: str
    elem: str
    repeated: bool
    sub: ResponsePlan | None
    timestamp: bool
    conv: Callable[[Any], Any]


def _get(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return value.get(name)
    try:
        return value[name]
    except (KeyError, TypeError, IndexError, AttributeError):
        return None


@dataclass(eq=False)
class ResponsePlan:
    fields: list[_RespField]

    def fill(self, msg: Any, value: Any) -> None:
        for f in self.fields:
            v = _get(value, f.elem)
            if v is None:
                continue
            if f.repeated:
                items = v if isinstance(v, list | tuple) else [v]
                target = getattr(msg, f.attr)
                for item in items:
                    if item is None:
                        continue
                    if f.sub is not None:
                        f.sub.fill(target.add(), item)
                    elif f.timestamp:
                        target.add().FromDatetime(item)
                    else:
                        target.append(f.conv(item))
            elif f.sub is not None:
                f.sub.fill(getattr(msg, f.attr), v)
            elif f.timestamp:
                getattr(msg, f.attr).FromDatetime(v)
            else:
                setattr(msg, f.attr, f.conv(v))


def compile_response(desc: Descriptor, zeep_type: Any, where: str,
                     memo: _Memo | None = None) -> ResponsePlan:
    memo = {} if memo is None else memo
    key = (desc.full_name, id(zeep_type))
    if key in memo:
        return memo[key]  # type: ignore[no-any-return]
    plan = memo[key] = ResponsePlan([])
    elems = schema_elems(zeep_type)
    by_norm = {norm(e.name): e for e in elems}
    fields = []
    for fd in desc.fields:
        el = by_norm.get(norm(fd.name))
        if el is None:
            known = ", ".join(e.name for e in elems) or "none"
            raise SoapMappingError(f"{where}: field {fd.name!r} of {desc.full_name} matches no "
                                   f"element of the reply (elements: {known}); map it with "
                                   f"'response'")
        repeated = fd.is_repeated
        ts = fd.message_type is not None and fd.message_type.full_name == _TS
        sub = None
        if fd.message_type is not None and not ts:
            if el.complex is None:
                raise SoapMappingError(f"{where}: field {fd.name!r} is a message but element "
                                       f"{el.name!r} is a simple type")
            sub = compile_response(_msg_type(fd), el.complex, f"{where}.{el.name}", memo)
        elif el.complex is not None:
            raise SoapMappingError(f"{where}: field {fd.name!r} is a scalar but element "
                                   f"{el.name!r} is a complex type")
        fields.append(_RespField(fd.name, el.name, repeated, sub, ts,
                                 _setter_value(fd, f"{where}.{fd.name}")))
    plan.fields.extend(fields)
    return plan


@dataclass(frozen=True)
class ExplicitResponse:
    """`response: {proto.path: reply.path}`: scalar targets only."""

    items: tuple[tuple[tuple[str, ...], str, tuple[str, ...], bool, Callable[[Any], Any]], ...]

    def fill(self, msg: Any, value: Any) -> None:
        for parents, attr, path, repeated, conv in self.items:
            v = value
            for p in path:
                v = _get(v, p)
                if v is None:
                    break
            if v is None:
                continue
            target = msg
            for p in parents:
                target = getattr(target, p)
            if repeated:
                getattr(target, attr).extend(conv(x) for x in (v if isinstance(v, list) else [v]))
            else:
                setattr(target, attr, conv(v))


def _check_reply_path(zeep_type: Any, path: str, where: str) -> None:
    """A typo in a reply path would silently leave a field empty: refuse it at load."""
    typ = zeep_type
    for part in path.split("."):
        el = next((e for e in schema_elems(typ) if e.name == part), None)
        if el is None:
            known = ", ".join(e.name for e in schema_elems(typ)) or "none"
            raise SoapMappingError(f"{where}: reply path {path!r}: no element {part!r} "
                                   f"(elements there: {known})")
        typ = el.complex


def compile_explicit_response(desc: Descriptor, mapping: Mapping[str, str],
                              where: str, zeep_type: Any = None) -> ExplicitResponse:
    items = []
    for target, path in mapping.items():
        if zeep_type is not None:
            _check_reply_path(zeep_type, path, f"{where}.{target}")
        d: Descriptor | None = desc
        parts = target.split(".")
        fd = None
        for p in parts:
            fd = d.fields_by_name.get(p) if d is not None else None
            if fd is None:
                raise SoapMappingError(f"{where}.{target}: {desc.full_name} has no field {target!r}")
            d = fd.message_type
        assert fd is not None
        if fd.message_type is not None:
            raise SoapMappingError(f"{where}.{target}: only scalar fields can be mapped by path "
                                   f"(leave message fields to matching by name)")
        items.append((tuple(parts[:-1]), parts[-1], tuple(path.split(".")),
                      fd.is_repeated, _setter_value(fd, f"{where}.{target}")))
    return ExplicitResponse(tuple(items))


# --- faults -------------------------------------------------------------------------------

_SYNONYMS = {"client": "Sender", "sender": "Client", "server": "Receiver", "receiver": "Server"}
_AUTH_CODES = frozenset({"failedauthentication", "invalidsecurity", "invalidsecuritytoken",
                         "failedcheck"})


@dataclass(frozen=True)
class FaultInfo:
    code: str  # local name: Client, Sender, ...
    subcodes: tuple[str, ...]
    string: str
    detail: str


@dataclass(frozen=True)
class FaultRule:
    code: re.Pattern[str] | None
    string: re.Pattern[str] | None
    detail: re.Pattern[str] | None
    error: Code
    message: Template | None

    def matches(self, f: FaultInfo) -> bool:
        if self.code is not None:
            names = (f.code, _SYNONYMS.get(f.code.lower(), f.code), *f.subcodes)
            if not any(self.code.search(n) for n in names):
                return False
        if self.string is not None and not self.string.search(f.string):
            return False
        return self.detail is None or bool(self.detail.search(f.detail))


FAULT_GROUPS = frozenset({"fault_code", "fault_string", "fault_detail"})


def fault_error(rules: tuple[FaultRule, ...], f: FaultInfo, request: Any) -> CallError:
    """The first rule that fits decides; else Client/Sender → INVALID_ARGUMENT, WS-Security
    failures → UNAUTHENTICATED, Server/Receiver (and anything else) → INTERNAL."""
    for rule in rules:
        if rule.matches(f):
            msg = f.string
            if rule.message is not None:
                msg = rule.message.render(RenderContext(request, {
                    "fault_code": f.code, "fault_string": f.string, "fault_detail": f.detail}))
            return CallError(rule.error, msg)
    names = {n.lower() for n in (f.code, *f.subcodes)}
    if names & _AUTH_CODES:
        return CallError(Code.UNAUTHENTICATED, f.string or "the backend refused the credentials")
    if names & {"client", "sender"}:
        return CallError(Code.INVALID_ARGUMENT, f.string)
    return CallError(Code.INTERNAL, f.string or f"SOAP fault {f.code}")


# --- reading a reply ----------------------------------------------------------------------

def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False)


_PARSER = _parser()


def snippet(body: bytes) -> str:
    return quote_raw(body[:SNIPPET].decode("utf-8", "replace"), SNIPPET + 40)


def _local(tag: Any) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _qtext(text: str | None) -> str:
    return (text or "").strip().rsplit(":", 1)[-1]


def read_fault(el: etree._Element) -> FaultInfo:
    """Either fault shape, whatever the envelope's version (real servers mix them)."""
    kids = {_local(c.tag): c for c in el}
    if "Code" in kids:
        code_el = kids["Code"]
        value = next((c for c in code_el if _local(c.tag) == "Value"), None)
        subs = []
        sub = next((c for c in code_el if _local(c.tag) == "Subcode"), None)
        while sub is not None:
            v = next((c for c in sub if _local(c.tag) == "Value"), None)
            if v is not None:
                subs.append(_qtext(v.text))
            sub = next((c for c in sub if _local(c.tag) == "Subcode"), None)
        reason = kids.get("Reason")
        text = ""
        if reason is not None:
            texts = [c for c in reason if _local(c.tag) == "Text"]
            text = (texts[0].text or "") if texts else (reason.text or "")
        detail = kids.get("Detail")
        return FaultInfo(_qtext(value.text if value is not None else ""), tuple(subs), text.strip(),
                         _detail_text(detail))
    code = kids.get("faultcode")
    string = kids.get("faultstring")
    return FaultInfo(_qtext(code.text if code is not None else ""), (),
                     (string.text or "").strip() if string is not None else "",
                     _detail_text(kids.get("detail")))


def _detail_text(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return etree.tostring(el, encoding="unicode", with_tail=False)[:4096]


#: HTTP statuses that say the service refused the credentials (basic auth), not a fault.
_HTTP_AUTH = {401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}


def read_reply(status: int, body: bytes, soap_ns: str) -> etree._Element | FaultInfo:
    """HTTP status + body → the envelope (its namespace normalised to `soap_ns`) or a fault.

    Raises CallError for everything else: 502/503/504 without a fault → UNAVAILABLE, any other
    non-SOAP answer → UNKNOWN; a reply with a DTD is refused (no entity is ever expanded)."""
    root = None
    if body.lstrip()[:1] == b"<":
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError:
            root = None
    if root is not None:
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None:
            raise CallError(Code.UNKNOWN, f"HTTP {status}: the reply carries a DTD, which is "
                                          f"refused: {snippet(body)}")
    ns = etree.QName(root.tag).namespace if root is not None and isinstance(root.tag, str) else None
    if root is None or ns not in (SOAP11, SOAP12) or _local(root.tag) != "Envelope":
        if status in (502, 503, 504):
            raise CallError(Code.UNAVAILABLE, f"HTTP {status} from the SOAP backend: {snippet(body)}")
        if status in _HTTP_AUTH:
            raise CallError(_HTTP_AUTH[status], f"HTTP {status} from the SOAP backend: "
                                                f"{snippet(body)}")
        raise CallError(Code.UNKNOWN, f"HTTP {status}: the SOAP backend sent no SOAP envelope: "
                                      f"{snippet(body)}")
    body_el = next((c for c in root if _local(c.tag) == "Body"), None)
    if body_el is None:
        raise CallError(Code.UNKNOWN, f"HTTP {status}: SOAP envelope without a Body: {snippet(body)}")
    first = next((c for c in body_el if isinstance(c.tag, str)), None)
    if first is not None and _local(first.tag) == "Fault" and etree.QName(first).namespace in (SOAP11, SOAP12):
        return read_fault(first)
    if status in (502, 503, 504):
        raise CallError(Code.UNAVAILABLE, f"HTTP {status} from the SOAP backend: {snippet(body)}")
    if status != 200:
        raise CallError(Code.UNKNOWN, f"HTTP {status} with a SOAP reply that is not a fault: "
                                      f"{snippet(body)}")
    if ns != soap_ns:  # a 1.1 envelope answering a 1.2 request, or the reverse
        for el in (root, body_el, *(c for c in root if _local(c.tag) == "Header")):
            el.tag = f"{{{soap_ns}}}{_local(el.tag)}"
    return root


# --- the compiled operation ---------------------------------------------------------------

@dataclass(frozen=True)
class SoapOperation:
    service: str
    method: str
    backend: str
    operation: str  # the WSDL operation
    input_class: Any
    output_class: Any
    request: RequestPlan | ExplicitRequest
    response: ResponsePlan | ExplicitResponse
    wrap_as: str | None  # zeep hands back a lone child of the reply wrapper unwrapped
    faults: tuple[FaultRule, ...]
    idempotent: bool
    timeout: float | None
    auth: str = ""

    def kwargs(self, request: Any, rctx: RenderContext) -> dict[str, Any]:
        if isinstance(self.request, ExplicitRequest):
            return self.request.build(request, rctx)
        return self.request.build(request)

    def message(self, result: Any) -> Any:
        msg = self.output_class()
        if result is None:
            return msg
        self.response.fill(msg, {self.wrap_as: result} if self.wrap_as is not None else result)
        return msg

    def fault(self, f: FaultInfo, request: Any) -> CallError:
        return fault_error(self.faults, f, request)
