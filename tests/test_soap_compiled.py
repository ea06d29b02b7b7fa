"""The compiled SOAP path against zeep, its reference: same XML out, same values in.

For every operation of the test WSDLs (tests/wsdl/orders and the crm fixture, both SOAP
versions), hypothesis draws request values from the operation's schema; the compiled builder's
envelope must equal zeep's under C14N 2.0 (prefixes rewritten), with the same HTTP headers.
It also draws reply values, which zeep itself renders into an envelope; the compiled reader
must return what zeep's `process_reply` returns. What the compiler cannot do must go to zeep:
operations it does not handle (reported with the reason) and values or replies it does not
expect (zeep's own answer, error included).
"""

from __future__ import annotations

import datetime as dt
import decimal
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from zeep.helpers import serialize_object
from zeep.xsd.types import ComplexType
from zeep.xsd.types import builtins as b

from adaptercar.backends.soap import SoapBackend, SoapSpec, WsdlBinding, load_wsdl
from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.soap_compiled import CompiledOperation, Fallback, compile_binding
from adaptercar.mapping.soap_operation import read_reply

ROOT = Path(__file__).resolve().parent.parent
# Shapes the test WSDLs lack: a choice, an attribute, rpc style (left to zeep), and a reply
# wrapper of one element whose type has one element (zeep unwraps twice).
SHAPES_WSDL = """<?xml version="1.0"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:t="urn:t" targetNamespace="urn:t">
  <types><xsd:schema targetNamespace="urn:t" elementFormDefault="qualified">
    <xsd:element name="Pick"><xsd:complexType><xsd:choice>
      <xsd:element name="a" type="xsd:string"/><xsd:element name="b" type="xsd:int"/>
    </xsd:choice></xsd:complexType></xsd:element>
    <xsd:element name="Tagged"><xsd:complexType>
      <xsd:sequence><xsd:element name="v" type="xsd:string"/></xsd:sequence>
      <xsd:attribute name="id" type="xsd:int"/>
    </xsd:complexType></xsd:element>
    <xsd:element name="Plain"><xsd:complexType><xsd:sequence>
      <xsd:element name="v" type="xsd:string"/>
    </xsd:sequence></xsd:complexType></xsd:element>
    <xsd:complexType name="Inner"><xsd:sequence>
      <xsd:element name="v" type="xsd:double" minOccurs="0"/>
    </xsd:sequence></xsd:complexType>
    <xsd:element name="Wrapped"><xsd:complexType><xsd:sequence>
      <xsd:element name="inner" type="t:Inner"/>
    </xsd:sequence></xsd:complexType></xsd:element>
  </xsd:schema></types>
  <message name="PickIn"><part name="p" element="t:Pick"/></message>
  <message name="TaggedIn"><part name="p" element="t:Tagged"/></message>
  <message name="PlainIn"><part name="p" element="t:Plain"/></message>
  <message name="WrappedOut"><part name="p" element="t:Wrapped"/></message>
  <message name="RpcIn"><part name="x" type="xsd:string"/></message>
  <portType name="P">
    <operation name="Pick"><input message="t:PickIn"/><output message="t:PlainIn"/></operation>
    <operation name="Tagged"><input message="t:TaggedIn"/><output message="t:PlainIn"/></operation>
    <operation name="Plain"><input message="t:PlainIn"/><output message="t:PlainIn"/></operation>
    <operation name="Nested"><input message="t:PlainIn"/><output message="t:WrappedOut"/></operation>
    <operation name="Rpc"><input message="t:RpcIn"/><output message="t:RpcIn"/></operation>
  </portType>
  <binding name="B" type="t:P"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="Pick"><soap:operation soapAction="pick"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="Tagged"><soap:operation soapAction="tagged"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="Plain"><soap:operation soapAction=""/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="Nested"><soap:operation soapAction="nested"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="Rpc"><soap:operation soapAction="rpc" style="rpc"/>
      <input><soap:body use="literal" namespace="urn:t"/></input>
      <output><soap:body use="literal" namespace="urn:t"/></output></operation>
  </binding>
  <service name="S"><port name="SP" binding="t:B"><soap:address location="http://127.0.0.1:9/s"/></port></service>
</definitions>
"""


SHAPES = Path(tempfile.mkdtemp(prefix="soap-compiled-")) / "shapes.wsdl"
SHAPES.write_text(SHAPES_WSDL)

WSDLS = [
    (ROOT / "legacy_fixtures" / "crm" / "crm.wsdl", "CustomerServiceSoap"),
    (ROOT / "legacy_fixtures" / "crm" / "crm.wsdl", "CustomerServiceSoap12"),
    (ROOT / "tests" / "wsdl" / "orders" / "orders.wsdl", None),
    (SHAPES, None),
]


def _spec(wsdl: Path, port: str | None) -> SoapSpec:
    return SoapSpec(name="t", wsdl=str(wsdl), endpoint="http://127.0.0.1:9/soap", service=None, port=port,
                    wsse=None, timeout=1.0, connect_timeout=1.0, pool_size=1, max_reply_bytes=1 << 20)


_LOADED: dict[tuple[str, str | None], tuple[WsdlBinding, SoapBackend]] = {}


def loaded(wsdl: Path, port: str | None) -> tuple[WsdlBinding, SoapBackend]:
    key = (str(wsdl), port)
    if key not in _LOADED:
        w = load_wsdl(_spec(wsdl, port), first_service=True)
        _LOADED[key] = (w, SoapBackend(_spec(wsdl, port), w, reactor=None))
    return _LOADED[key]


CASES = [(wsdl, port, op) for wsdl, port in WSDLS for op in loaded(wsdl, port)[1].compiled.operations]


def canonical(xml: bytes) -> str:
    """C14N 2.0, prefixes rewritten: the XML declaration and prefix names do not matter."""
    return ET.canonicalize(etree.tostring(etree.fromstring(xml), encoding="unicode"), rewrite_prefixes=True)


# --- values drawn from the schema -----------------------------------------------------------

_XML_TEXT = st.text(st.sampled_from("&<>\r\n\t \"']]>é") | st.characters(
    blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff").filter(lambda c: c in "\t\n\r" or c >= " "),
    max_size=12)


def _simple(t: Any, request: bool) -> st.SearchStrategy[Any]:
    if isinstance(t, b.Boolean):
        return st.booleans()
    if isinstance(t, b.Integer):
        return st.integers(-(2**40), 2**40)
    if isinstance(t, b.Decimal):
        return st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**9), max_value=10**9)
    if isinstance(t, b.Float | b.Double):
        return st.floats(allow_nan=False, allow_infinity=False, width=32 if isinstance(t, b.Float) else 64)
    if isinstance(t, b.DateTime):
        return st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                            timezones=st.sampled_from([None, dt.UTC]))
    if isinstance(t, b.String):
        return _XML_TEXT | st.integers(-1000, 1000) if request else _XML_TEXT
    raise AssertionError(f"no strategy for {type(t).__name__}")


def values(ctype: Any, request: bool, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A dict for a complex type: every required element, optional ones sometimes."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, el in ctype.elements:
        if isinstance(el.type, ComplexType):
            one: st.SearchStrategy[Any] = st.deferred(lambda t=el.type: values(t, request, depth + 1))
        else:
            one = _simple(el.type, request)
        many = el.max_occurs != 1
        lo = int(el.min_occurs)
        if many:
            hi = 0 if depth >= 2 and lo == 0 else 3
            one = st.lists(one, min_size=lo, max_size=max(lo, hi))
        (required if lo >= 1 else optional)[name] = one
    return st.fixed_dictionaries(required, optional=optional)


def _strategy(wsdl: Path, port: str | None, op: str, request: bool) -> st.SearchStrategy[dict[str, Any]]:
    w, _ = loaded(wsdl, port)
    msg = w.operations[op].input if request else w.operations[op].output
    return values(msg.body.type, request)


def compiled(wsdl: Path, port: str | None, op: str) -> CompiledOperation:
    _, backend = loaded(wsdl, port)
    got = backend.compiled.operations.get(op)
    assert got is not None, backend.compiled.unsupported
    return got


def zeep_envelope(w: WsdlBinding, op: str, kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    env, headers = w.binding._create(op, (), kwargs, client=w.client, options={"address": w.address})
    return etree.tostring(env, encoding="utf-8", xml_declaration=True), headers


def zeep_reply(w: WsdlBinding, op: str, value: dict[str, Any]) -> bytes:
    """The reply as zeep itself renders the output element."""
    el = w.operations[op].output.body
    env = etree.Element(f"{{{w.soap_ns}}}Envelope")
    body = etree.SubElement(env, f"{{{w.soap_ns}}}Body")
    el.render(body, el(**value))
    return etree.tostring(env)


# --- every operation compiles, and says the same as zeep ---------------------------------------

def test_every_test_operation_is_compiled() -> None:
    for wsdl, port in WSDLS[:3]:
        w, backend = loaded(wsdl, port)
        assert backend.compiled.unsupported == {}
        assert set(backend.compiled.operations) == set(w.operations)


@pytest.mark.parametrize(("wsdl", "port", "op"), CASES, ids=[f"{w.stem}-{p}-{o}" for w, p, o in CASES])
def test_request_envelope_is_zeeps(wsdl: Path, port: str | None, op: str) -> None:
    w, _ = loaded(wsdl, port)
    c = compiled(wsdl, port, op)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_strategy(wsdl, port, op, request=True))
    def check(kwargs: dict[str, Any]) -> None:
        data, headers = c.envelope(kwargs)
        zdata, zheaders = zeep_envelope(w, op, kwargs)
        assert canonical(data) == canonical(zdata)
        assert headers == zheaders

    check()


@pytest.mark.parametrize(("wsdl", "port", "op"), CASES, ids=[f"{w.stem}-{p}-{o}" for w, p, o in CASES])
def test_reply_values_are_zeeps(wsdl: Path, port: str | None, op: str) -> None:
    w, _ = loaded(wsdl, port)
    c = compiled(wsdl, port, op)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_strategy(wsdl, port, op, request=False))
    def check(value: dict[str, Any]) -> None:
        raw = zeep_reply(w, op, value)
        mine = c.result(read_reply(200, raw, w.soap_ns))
        theirs = w.operations[op].process_reply(read_reply(200, raw, w.soap_ns))
        assert mine == serialize_object(theirs, dict)

    check()


def test_the_benchmark_envelope_is_byte_for_byte_zeeps() -> None:
    w, backend = loaded(*WSDLS[0])
    assert backend.envelope("GetCustomerById", {"customerId": 1}) == zeep_envelope(w, "GetCustomerById",
                                                                                  {"customerId": 1})


# --- what the plan does not expect goes to zeep ------------------------------------------------

ORDER = {"order-id": 7, "Ship.To": "Dock 4", "total": {"amount": decimal.Decimal("9.50"), "currency": "EUR"},
         "lines": ["a"]}


@pytest.mark.parametrize("kwargs", [
    {k: v for k, v in ORDER.items() if k != "Ship.To"},  # a required element missing
    {**ORDER, "lines": []},  # minOccurs 1
    {**ORDER, "nope": 1},  # no such element
    {**ORDER, "Ship.To": "bad \x01 char"},  # not XML
    {**ORDER, "express": "yes"},  # a str for a boolean
])
def test_unexpected_request_values_fall_back_to_zeep(kwargs: dict[str, Any]) -> None:
    wsdl, port = WSDLS[2]
    w, backend = loaded(wsdl, port)
    with pytest.raises(Fallback):
        compiled(wsdl, port, "Place-Order").envelope(kwargs)
    try:
        theirs: Any = zeep_envelope(w, "Place-Order", kwargs)
    except Exception as e:  # noqa: BLE001 - zeep's own refusal is what the backend must give
        with pytest.raises(CallError) as got:
            backend.envelope("Place-Order", kwargs)
        assert got.value.code == Code.INVALID_ARGUMENT, e
    else:
        assert backend.envelope("Place-Order", kwargs) == theirs


SLOPPY = [
    # xsi:nil on a required element
    b'<o:accepted xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>',
    # an element the schema does not have, then the right one
    b"<o:extra>1</o:extra><o:accepted>true</o:accepted>",
    # a category without its required name
    b"<o:accepted>true</o:accepted><o:category><o:sub-category/></o:category>",
    # unqualified where the schema says qualified (zeep compares the local name only)
    b"<accepted>1</accepted>",
    # out of order
    b"<o:category><o:name>n</o:name></o:category><o:accepted>true</o:accepted>",
]


@pytest.mark.parametrize("inner", SLOPPY)
def test_unexpected_replies_fall_back_to_zeep(inner: bytes) -> None:
    wsdl, port = WSDLS[2]
    w, backend = loaded(wsdl, port)
    raw = (b'<e:Envelope xmlns:e="' + w.soap_ns.encode() + b'"><e:Body><o:PlaceOrderResponse '
           b'xmlns:o="urn:example:orders">' + inner + b"</o:PlaceOrderResponse></e:Body></e:Envelope>")
    with pytest.raises(Fallback):
        compiled(wsdl, port, "Place-Order").result(read_reply(200, raw, w.soap_ns))
    try:
        theirs: Any = serialize_object(w.operations["Place-Order"].process_reply(read_reply(200, raw, w.soap_ns)),
                                       dict)
    except Exception:  # noqa: BLE001 - zeep refuses it: so must the backend
        with pytest.raises(CallError):
            backend._deserialize("Place-Order", read_reply(200, raw, w.soap_ns), raw)
        return
    assert serialize_object(backend._deserialize("Place-Order", read_reply(200, raw, w.soap_ns), raw),
                            dict) == theirs


def test_what_the_compiler_cannot_do_is_reported_and_left_to_zeep() -> None:
    w, backend = loaded(SHAPES, None)
    got = backend.compiled
    assert set(got.operations) == {"Plain", "Nested"}
    assert "Choice" in got.unsupported["Pick"]
    assert "attributes" in got.unsupported["Tagged"]
    assert "rpc" in got.unsupported["Rpc"]
    for op, kwargs in (("Pick", {"a": "x"}), ("Tagged", {"v": "x", "id": 3}), ("Plain", {"v": "x"})):
        assert backend.envelope(op, kwargs) == zeep_envelope(w, op, kwargs)


def test_ws_security_leaves_every_operation_to_zeep() -> None:
    wsdl, port = WSDLS[0]
    spec = _spec(wsdl, port)
    spec = SoapSpec(**{**spec.__dict__, "wsse": ("user", "secret", False)})
    w = load_wsdl(spec)
    got = compile_binding(w.client, w.binding, w.soap_ns)
    assert got.operations == {} and set(got.unsupported.values()) == {"WS-Security"}
