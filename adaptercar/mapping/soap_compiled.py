"""SOAP envelopes and reply readers compiled per operation, once, from zeep's parsed schema.

zeep builds every request by turning the kwargs into typed value objects, validating them and
rendering an lxml tree, and reads every reply through its generic schema walker: about 145 µs a
call where the work needed is a few string joins and one pass over the reply's elements. Here,
when the configuration is loaded, each WSDL operation whose messages have the plain shape of
most document/literal services is compiled into a plan: per element its tags (prefixes and
namespace declarations decided once), whether it repeats or may be absent, and zeep's own
converter for its simple type (`xmlvalue` / `pythonvalue`, so values are written and read
exactly as zeep does). A call then runs the plan only.

zeep stays the reference and the fallback:

- an operation the compiler does not handle is left to zeep entirely (`Compiled.unsupported`
  says why): rpc style, SOAP headers in the messages, several body parts, WS-Addressing,
  WS-Security or zeep plugins, custom prefixes, and schema constructs other than a sequence
  of elements (attributes, choice, all, groups, any, extension/restriction of complex types,
  default values, list and union simple types);
- a call whose values the plan does not expect (a missing required element, a None, a value
  of another Python type than the plan's, text that is not XML-compatible) raises `Fallback`
  and is built by zeep, which then answers with its own validation error or its own XML;
- a reply the plan does not expect (an unknown, missing or out-of-order element, any
  attribute such as xsi:nil or xsi:type, text a converter refuses) raises `Fallback` and is
  read by zeep.

tests/test_soap_compiled.py checks, with hypothesis, that across the test WSDLs the compiled
builder writes the same XML as zeep (C14N 2.0 with prefixes rewritten) and the same HTTP
headers, and that the compiled reader returns the values zeep returns.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Unsupported(ValueError):
    """An operation the compiler leaves to zeep; raised at compile time only."""


class Fallback(Exception):  # noqa: N818 - a signal, not an error: zeep handles this call
    """This call's values (or this reply) are not what the plan expects: use zeep."""


# Characters XML 1.0 cannot carry: lxml refuses them, and zeep's error is the answer then.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPE = re.compile("[&<>\r]")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}


def _escape(text: str) -> str:
    """Text content as lxml writes it (a raw CR would be read back as LF)."""
    if _ESCAPE.search(text) is None:
        return text
    return _ESCAPE.sub(lambda m: _ENTITIES[m.group()], text)


def _accepted(simple: Any) -> tuple[type, ...]:
    """The Python types a compiled plan writes with zeep's `xmlvalue` for this simple type;
    anything else falls back to zeep (exact types: a bool is not an int here)."""
    from zeep.xsd.types import builtins as b

    if isinstance(simple, b.Boolean):
        return (bool,)
    if isinstance(simple, b.Integer):  # before Decimal: Integer derives from it
        return (int,)
    if isinstance(simple, b.Decimal):
        return (decimal.Decimal, int, float)
    if isinstance(simple, b.Float | b.Double):
        return (float, int)
    if isinstance(simple, b.DateTime):
        return (dt.datetime,)
    if isinstance(simple, b.Date):
        return (dt.date,)
    if isinstance(simple, b.Time):
        return (dt.time,)
    if isinstance(simple, b.String | b.AnyURI):
        return (str, int) if isinstance(simple, b.String) else (str,)
    raise Unsupported(f"simple type {type(simple).__name__}")


@dataclass(eq=False)
class _Child:
    key: str  # the kwargs / result name (zeep's attribute name)
    tag: str  # Clark notation, as lxml reports it when reading
    open: str  # start tag, with the namespace declaration when this element brings it
    close: str
    min: int
    max: int | None  # None: unbounded
    many: bool
    sub: _Plan | None  # complex type
    write: Callable[[Any], Any] | None  # zeep's xmlvalue
    read: Callable[[str], Any] | None  # zeep's pythonvalue
    accepts: tuple[type, ...] = ()


@dataclass(eq=False)
class _Plan:
    """A complex type's sequence of elements, in one namespace scope."""

    children: list[_Child] = field(default_factory=list)
    keys: frozenset[str] = frozenset()

    def write(self, value: Any, out: list[str]) -> None:
        if type(value) is not dict or not value.keys() <= self.keys:
            raise Fallback
        for c in self.children:
            v = value.get(c.key)
            if v is None:
                if c.min:
                    raise Fallback
                continue
            if c.many:
                if type(v) is not list or len(v) < c.min or (c.max is not None and len(v) > c.max):
                    raise Fallback
                for item in v:
                    _write_one(c, item, out)
            else:
                _write_one(c, v, out)

    def read(self, el: Any) -> dict[str, Any]:
        kids = [k for k in el if type(k.tag) is str]
        n = len(kids)
        i = 0
        out: dict[str, Any] = {}
        for c in self.children:
            if c.many:
                items: list[Any] = []
                while i < n and kids[i].tag == c.tag and (c.max is None or len(items) < c.max):
                    items.append(_read_one(c, kids[i]))
                    i += 1
                if len(items) < c.min:
                    raise Fallback
                out[c.key] = items
            elif i < n and kids[i].tag == c.tag:
                out[c.key] = _read_one(c, kids[i])
                i += 1
            elif c.min:
                raise Fallback
            else:
                out[c.key] = None
        if i != n:
            raise Fallback
        return out


def _write_one(c: _Child, v: Any, out: list[str]) -> None:
    if c.sub is not None:
        out.append(c.open)
        c.sub.write(v, out)
        out.append(c.close)
        return
    if type(v) not in c.accepts:
        raise Fallback
    assert c.write is not None
    text = c.write(v)
    if type(text) is not str or _NOT_XML.search(text) is not None:
        raise Fallback
    out.append(c.open)
    out.append(_escape(text))
    out.append(c.close)


def _read_one(c: _Child, el: Any) -> Any:
    if len(el.attrib):
        raise Fallback  # xsi:nil, xsi:type, or anything zeep would look at
    if c.sub is not None:
        return c.sub.read(el)
    if any(type(k.tag) is str for k in el):
        raise Fallback
    text = el.text
    if text is None:
        return None
    assert c.read is not None
    try:
        return c.read(text)
    except (TypeError, ValueError, ArithmeticError):
        raise Fallback from None


# --- compiling ---------------------------------------------------------------------------

_Scope = tuple[tuple[str, str], ...]  # namespace → prefix declared by an ancestor


def _tags(qname: Any, scope: _Scope) -> tuple[str, str, _Scope]:
    """Start and end tag of an element in `scope`, and the scope of its children. A namespace
    not declared by an ancestor is declared on the element itself, as lxml (and so zeep) do."""
    ns, local = qname.namespace, qname.localname
    if not ns:
        return f"<{local}>", f"</{local}>", scope
    prefix = dict(scope).get(ns)
    if prefix is not None:
        return f"<{prefix}:{local}>", f"</{prefix}:{local}>", scope
    prefix = f"ns{len(scope) - 1}"  # the envelope's prefix is the first entry
    return (f'<{prefix}:{local} xmlns:{prefix}="{_attr(ns)}">', f"</{prefix}:{local}>",
            (*scope, (ns, prefix)))


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def _plan(ctype: Any, scope: _Scope, memo: dict[tuple[int, _Scope], _Plan], where: str) -> _Plan:
    from zeep.xsd.elements import Element
    from zeep.xsd.elements.indicators import Sequence
    from zeep.xsd.types import ComplexType

    key = (id(ctype), scope)
    if key in memo:
        return memo[key]  # recursive types: the plan refers to itself
    if not isinstance(ctype, ComplexType):
        raise Unsupported(f"{where}: {type(ctype).__name__} is not a complex type")
    if ctype._extension is not None or ctype._restriction is not None:
        raise Unsupported(f"{where}: complex type derived by extension or restriction")
    if ctype._attributes:
        raise Unsupported(f"{where}: attributes")
    seq = ctype._element
    if seq is not None and not isinstance(seq, Sequence):
        raise Unsupported(f"{where}: {type(seq).__name__} (only a sequence of elements)")
    if seq is not None and (seq.min_occurs != 1 or seq.max_occurs != 1):
        raise Unsupported(f"{where}: a sequence with minOccurs/maxOccurs")
    plan = memo[key] = _Plan()
    children = []
    for el in list(seq or ()):
        if type(el) is not Element:
            raise Unsupported(f"{where}: {type(el).__name__} in the sequence")
        name = str(el.attr_name or el.name)
        if el.default is not None or getattr(el, "fixed", None) is not None:
            raise Unsupported(f"{where}.{name}: a default or fixed value")
        open_, close, inner = _tags(el.qname, scope)
        max_occurs = None if el.max_occurs == "unbounded" else int(el.max_occurs)
        child = _Child(key=name, tag=el.qname.text, open=open_, close=close, min=int(el.min_occurs),
                       max=max_occurs, many=max_occurs != 1, sub=None, write=None, read=None)
        if isinstance(el.type, ComplexType):
            child.sub = _plan(el.type, inner, memo, f"{where}.{name}")
        else:
            child.accepts = _accepted(el.type)
            child.write, child.read = el.type.xmlvalue, el.type.pythonvalue
        children.append(child)
    plan.children.extend(children)
    plan.keys = frozenset(c.key for c in children)
    return plan


@dataclass(eq=False)
class CompiledOperation:
    """One WSDL operation: kwargs → (envelope bytes, HTTP headers); reply envelope → value."""

    name: str
    head: str  # XML declaration, Envelope and Body start tags, the body element's start tag
    tail: str
    body: _Plan
    headers: dict[str, str]
    reply_tag: str
    reply: _Plan
    unwrap: tuple[str, ...]  # zeep hands back a lone child of the reply wrapper unwrapped
    soap_ns: str

    @functools.cached_property
    def body_tag(self) -> str:
        return f"{{{self.soap_ns}}}Body"

    def envelope(self, kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        out = [self.head]
        self.body.write(kwargs, out)
        out.append(self.tail)
        return "".join(out).encode(), self.headers  # read only by callers

    def result(self, envelope: Any) -> Any:
        """The envelope as `read_reply` returns it (namespace normalised) → zeep's value."""
        body = None
        body_tag = self.body_tag
        for c in envelope:
            if c.tag == body_tag:
                body = c
                break
        if body is None:
            raise Fallback
        kids = [k for k in body if type(k.tag) is str]
        if len(kids) != 1 or kids[0].tag != self.reply_tag or len(kids[0].attrib):
            raise Fallback
        value: Any = self.reply.read(kids[0])
        if not value:
            return None  # zeep: an empty wrapper is no result
        for key in self.unwrap:
            if type(value) is not dict:
                break
            value = value[key]
        return value


@dataclass
class Compiled:
    """The compiled operations of one binding, and why the others are left to zeep."""

    operations: dict[str, CompiledOperation]
    unsupported: dict[str, str]


def compile_operation(name: str, op: Any, soap_ns: str, version12: bool) -> CompiledOperation:
    from zeep.wsdl.messages.soap import DocumentMessage
    from zeep.xsd.elements import Element
    from zeep.xsd.types import ComplexType

    if op.style != "document":
        raise Unsupported(f"{op.style} style")
    if op.abstract.wsa_action:
        raise Unsupported("WS-Addressing")
    for what, msg in (("input", op.input), ("output", op.output)):
        if not isinstance(msg, DocumentMessage) or msg.body is None:
            raise Unsupported(f"{what}: not a document/literal body")
        if msg._is_body_wrapped:
            raise Unsupported(f"{what}: several body parts")
        if type(msg.body) is not Element or not isinstance(msg.body.type, ComplexType):
            raise Unsupported(f"{what}: the body part is not an element of a complex type")
        if msg.header is not None and list(msg.header.type._element or ()):
            raise Unsupported(f"{what}: SOAP headers")
    scope: _Scope = ((soap_ns, "soap-env"),)
    open_, close, inner = _tags(op.input.body.qname, scope)
    memo: dict[tuple[int, _Scope], _Plan] = {}
    body = _plan(op.input.body.type, inner, memo, "input")
    out_el = op.output.body
    reply = _plan(out_el.type, ((soap_ns, "soap-env"),), {}, "output")
    # zeep's DocumentMessage.deserialize: a wrapper of one element yields that element's value,
    # and when that value is itself of a type with one element (and no attributes), its value
    unwrap: tuple[str, ...] = ()
    if len(reply.children) == 1:
        only = reply.children[0]
        unwrap = (only.key,)
        if only.sub is not None and not only.many and len(only.sub.children) == 1:
            unwrap += (only.sub.children[0].key,)
    action = op.soapaction
    headers = {"SOAPAction": f'"{action}"' if action else '""'}
    headers["Content-Type"] = (f'application/soap+xml; charset=utf-8; action="{action}"' if version12
                               else "text/xml; charset=utf-8")
    head = (f"<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env=\"{soap_ns}\">"
            f"<soap-env:Body>{open_}")
    return CompiledOperation(name=name, head=head, tail=f"{close}</soap-env:Body></soap-env:Envelope>",
                             body=body, headers=headers, reply_tag=out_el.qname.text, reply=reply,
                             unwrap=unwrap, soap_ns=soap_ns)


def compile_binding(client: Any, binding: Any, soap_ns: str) -> Compiled:
    """Every operation of `binding` that the compiler handles; the rest with the reason."""
    from zeep.wsdl.bindings.soap import Soap12Binding

    operations: dict[str, CompiledOperation] = {}
    unsupported: dict[str, str] = {}
    whole = None
    if client.wsse is not None:
        whole = "WS-Security"
    elif client.plugins:
        whole = "zeep plugins"
    elif client.settings.extra_http_headers:
        whole = "extra HTTP headers"
    elif client.wsdl.types._prefix_map_custom:
        whole = "custom namespace prefixes"
    for name, op in binding._operations.items():
        if whole is not None:
            unsupported[name] = whole
            continue
        try:
            operations[name] = compile_operation(name, op, soap_ns, isinstance(binding, Soap12Binding))
        except Unsupported as e:
            unsupported[name] = str(e)
        except Exception as e:  # noqa: BLE001 - a zeep internal we did not expect: zeep serves it
            unsupported[name] = f"not compiled ({type(e).__name__}: {e})"
    return Compiled(operations, unsupported)

