"""The sans-IO SOAP core: reading replies (hardened, sloppy servers), faults, name matching."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from adaptercar.mapping.errors import CallError, Code
from adaptercar.mapping.soap_operation import (
    SOAP11,
    SOAP12,
    FaultInfo,
    FaultRule,
    fault_error,
    norm,
    read_reply,
)

TNS = "urn:example:crm"


def env(ns: str, inner: str) -> bytes:
    return f'<s:Envelope xmlns:s="{ns}"><s:Body>{inner}</s:Body></s:Envelope>'.encode()


FAULT11 = "<s:Fault><faultcode>s:Client</faultcode><faultstring>customer 9 not found</faultstring></s:Fault>"
FAULT12 = ('<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>x:Gone</s:Value>'
           '</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">customer 9 not found</s:Text>'
           '</s:Reason><s:Detail><why>gone</why></s:Detail></s:Fault>')


@pytest.mark.parametrize("status", [200, 500])
def test_faults_read_in_either_shape_and_envelope(status: int) -> None:
    for ns in (SOAP11, SOAP12):
        f11 = read_reply(status, env(ns, FAULT11), SOAP11)
        assert f11 == FaultInfo("Client", (), "customer 9 not found", "")
        f12 = read_reply(status, env(ns, FAULT12.replace("s:Fault", "s12:Fault").replace(
            "<s12:Fault>", f'<s12:Fault xmlns:s12="{SOAP12}">') if ns == SOAP11 else FAULT12), SOAP12)
        assert isinstance(f12, FaultInfo)
        assert (f12.code, f12.subcodes, f12.string) == ("Sender", ("Gone",), "customer 9 not found")
        assert "gone" in f12.detail


def test_envelope_of_the_other_version_is_normalised() -> None:
    doc = read_reply(200, env(SOAP11, f'<r xmlns="{TNS}"><a>1</a></r>'), SOAP12)
    assert isinstance(doc, etree._Element)
    assert doc.tag == f"{{{SOAP12}}}Envelope" and doc[0].tag == f"{{{SOAP12}}}Body"


@pytest.mark.parametrize("status,body,code,needle", [
    (503, b"<html><body>Service Unavailable</body></html>", Code.UNAVAILABLE, "Service Unavailable"),
    (502, b"Bad gateway", Code.UNAVAILABLE, "Bad gateway"),
    (504, b"", Code.UNAVAILABLE, "HTTP 504"),
    (500, b"java.lang.NullPointerException\n\tat com.acme.Crm.get(Crm.java:42)", Code.UNKNOWN,
     "NullPointerException"),
    (200, b"<html><body>Login</body></html>", Code.UNKNOWN, "Login"),
    (200, b"<unclosed", Code.UNKNOWN, "unclosed"),
    (500, env(SOAP11, "<ok/>"), Code.UNKNOWN, "not a fault"),
    (503, env(SOAP11, "<ok/>"), Code.UNAVAILABLE, "HTTP 503"),
])
def test_non_soap_answers_are_clear_errors(status: int, body: bytes, code: Code, needle: str) -> None:
    with pytest.raises(CallError) as e:
        read_reply(status, body, SOAP11)
    assert e.value.code == code and needle in e.value.message
    assert len(e.value.message) < 400


def test_dtd_is_refused_and_entities_never_expanded(tmp_path: object) -> None:
    secret = "top-secret-line"
    path = f"{tmp_path}/secret.txt"
    with open(path, "w") as fh:
        fh.write(secret)
    body = (f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file://{path}">]>'.encode()
            + env(SOAP11, "<r>&x;</r>"))
    with pytest.raises(CallError) as e:
        read_reply(200, body, SOAP11)
    assert "DTD" in e.value.message and secret not in e.value.message
    bomb = (b'<!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            + env(SOAP11, "<r>&b;</r>"))
    with pytest.raises(CallError):
        read_reply(200, bomb, SOAP11)


@given(st.integers(100, 599), st.binary(max_size=300))
def test_any_bytes_give_an_envelope_a_fault_or_a_call_error(status: int, body: bytes) -> None:
    try:
        out = read_reply(status, body, SOAP11)
    except CallError as e:
        assert e.code in (Code.UNAVAILABLE, Code.UNKNOWN, Code.UNAUTHENTICATED,
                          Code.PERMISSION_DENIED)
        if e.code in (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED):
            assert status in (401, 403)
        return
    assert isinstance(out, FaultInfo | etree._Element)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).flatmap(
    lambda w: st.lists(st.just(w), min_size=1, max_size=3)))
def test_spellings_of_one_name_compare_equal(words: list[str]) -> None:
    snake = "_".join(words)
    camel = words[0] + "".join(w.capitalize() for w in words[1:])
    pascal = "".join(w.capitalize() for w in words)
    assert norm(snake) == norm(camel) == norm(pascal)


def _rule(code: str | None = None, string: str | None = None, error: Code = Code.NOT_FOUND) -> FaultRule:
    return FaultRule(re.compile(code) if code else None, re.compile(string) if string else None,
                     None, error, None)


@pytest.mark.parametrize("code,subcodes,want", [
    ("Client", (), Code.INVALID_ARGUMENT), ("Sender", (), Code.INVALID_ARGUMENT),
    ("Server", (), Code.INTERNAL), ("Receiver", (), Code.INTERNAL),
    ("FailedAuthentication", (), Code.UNAUTHENTICATED),
    ("Sender", ("FailedAuthentication",), Code.UNAUTHENTICATED),
    ("VersionMismatch", (), Code.INTERNAL),
])
def test_default_fault_codes(code: str, subcodes: tuple[str, ...], want: Code) -> None:
    err = fault_error((), FaultInfo(code, subcodes, "boom", ""), None)
    assert (err.code, err.message) == (want, "boom")


def test_rules_compare_client_and_sender_alike() -> None:
    rules = (_rule("^Client$", "(?i)not found"), _rule("^Receiver$", None, Code.UNAVAILABLE))
    assert fault_error(rules, FaultInfo("Sender", (), "Not Found", ""), None).code == Code.NOT_FOUND
    assert fault_error(rules, FaultInfo("Client", (), "not found", ""), None).code == Code.NOT_FOUND
    assert fault_error(rules, FaultInfo("Client", (), "bad", ""), None).code == Code.INVALID_ARGUMENT
    assert fault_error(rules, FaultInfo("Server", (), "x", ""), None).code == Code.UNAVAILABLE


# --- request values against XML Schema simple types -----------------------------------------

_XSD_INTS = {"Byte": (-(2**7), 2**7 - 1), "Short": (-(2**15), 2**15 - 1),
             "Int": (-(2**31), 2**31 - 1), "Long": (-(2**63), 2**63 - 1),
             "UnsignedByte": (0, 255), "UnsignedInt": (0, 2**32 - 1),
             "PositiveInteger": (1, None), "NonPositiveInteger": (None, 0)}


@given(st.sampled_from(sorted(_XSD_INTS)), st.one_of(
    st.integers(-(2**65), 2**65), st.integers(-(2**65), 2**65).map(str),
    st.text(max_size=12)))
def test_integer_values_are_accepted_exactly_when_the_xsd_type_holds_them(
        name: str, value: object) -> None:
    from zeep.xsd.types import builtins as b

    from adaptercar.mapping.soap_operation import value_checker

    check = value_checker(getattr(b, name)(), (), "f")
    lo, hi = _XSD_INTS[name]
    try:
        n = value if isinstance(value, int) else int(str(value).strip())
        fits = (lo is None or n >= lo) and (hi is None or n <= hi)
    except ValueError:
        fits = False
    if fits:
        assert check(value) == n
    else:
        with pytest.raises(CallError) as e:
            check(value)
        assert e.value.code == Code.INVALID_ARGUMENT and e.value.message.startswith("f: ")


@given(st.text(max_size=12))
def test_enumerations_accept_only_their_literals(value: str) -> None:
    from zeep.xsd.types import builtins as b

    from adaptercar.mapping.soap_operation import value_checker

    check = value_checker(b.String(), ("C", "F", "partly-cloudy"), "unit")
    if value in ("C", "F", "partly-cloudy"):
        assert check(value) == value
    else:
        with pytest.raises(CallError, match="^unit: .* is not one of C, F, partly-cloudy$"):
            check(value)


@pytest.mark.parametrize("typ,good,bad", [
    ("Boolean", ["true", "0", True], ["yes", "TRUE "]),
    ("Decimal", ["1.50", "-0", "+.5", " 7 "], ["NaN", "Infinity", "1,5", "", "1e3"]),
    ("Double", ["1.5", "NaN", "-INF"], ["one", ""]),
    ("DateTime", ["2026-12-05T01:30:00Z", "2026-12-05T01:30:00+01:00"], ["2026-13-01T00:00:00", "now"]),
    ("Date", ["2026-12-05"], ["05/12/2026"]),
])
def test_other_simple_types(typ: str, good: list[object], bad: list[str]) -> None:
    from zeep.xsd.types import builtins as b

    from adaptercar.mapping.soap_operation import value_checker

    check = value_checker(getattr(b, typ)(), (), "v")
    for value in good:
        check(value)
    for value in bad:
        with pytest.raises(CallError):
            check(value)
