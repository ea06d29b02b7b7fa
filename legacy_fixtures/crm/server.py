"""CustomerService over SOAP 1.1 and 1.2 (document/literal), served by Twisted with lxml.

A stand-in for a vendor SOAP service adaptercar must not change: it answers POSTs to /crm
(and `GET /crm?wsdl`), picks the SOAP version from the envelope namespace, answers faults the
way such services do (HTTP 500, 1.1 faultcode/faultstring or 1.2 Code/Reason), and optionally
insists on a WS-Security UsernameToken (PasswordText or PasswordDigest) and/or HTTP basic
authentication (401 and an HTML page without it, as a web server in front would answer).
`--drop-idle S` resets a keep-alive connection that is reused after S idle seconds, without a
reply, as a server with an idle timeout does when its close crosses the client's next request.

`--soap-version 1.1|1.2` makes it speak one version only, as many services do: a request in
the other gets a VersionMismatch fault.

`--test-hooks` adds customer ids that misbehave on purpose, for the sidecar's tests:
7777 answers after `--slow` seconds (without blocking other requests), 6666 answers with an
XXE payload (a DOCTYPE whose entity names /etc/passwd).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from lxml import etree
from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.web import resource, server

reactor: Any = _reactor

WSDL = Path(__file__).with_name("crm.wsdl")
TNS = "urn:example:crm"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DIGEST = ("http://docs.oasis-open.org/wss/2004/01/"
          "oasis-200401-wss-username-token-profile-1.0#PasswordDigest")
XXE_ID = 6666
SLOW_ID = 7777

# Requests are parsed as a careful server would: no entities, no DTD, no network.
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

CUSTOMERS: dict[int, dict[str, str]] = {
    1: {"fullName": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 1815"},
    2: {"fullName": "Alan Turing", "email": "alan@example.com", "phone": ""},
    3: {"fullName": "Grace Hopper", "email": "grace@example.com", "phone": "+1 212 1906"},
    4: {"fullName": "Alonzo Church", "email": "alonzo@example.com", "phone": ""},
}


class SoapFault(Exception):
    def __init__(self, code: str, text: str, subcode: str | None = None) -> None:
        super().__init__(text)
        self.code = code  # "Client" or "Server" (1.1 names; 1.2 maps them)
        self.text = text
        self.subcode = subcode  # a wsse: QName for security faults


def q(local: str) -> str:
    return f"{{{TNS}}}{local}"


def _text(el: etree._Element, local: str) -> str | None:
    child = el.find(q(local))
    return None if child is None else (child.text or "")


def _int(el: etree._Element, local: str, required: bool = True) -> int | None:
    raw = _text(el, local)
    if raw is None:
        if required:
            raise SoapFault("Client", f"{local} is required")
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise SoapFault("Client", f"{local} must be an integer, got {raw!r}") from None


def _customer(parent: etree._Element, cid: int, tag: str | None = None) -> etree._Element:
    c = CUSTOMERS[cid]
    el = parent if tag is None else etree.SubElement(parent, q(tag))
    etree.SubElement(el, q("customerId")).text = str(cid)
    etree.SubElement(el, q("fullName")).text = c["fullName"]
    contact = etree.SubElement(el, q("contact"))
    etree.SubElement(contact, q("email")).text = c["email"]
    if c["phone"]:
        etree.SubElement(contact, q("phone")).text = c["phone"]
    return el


def get_customer(body: etree._Element) -> etree._Element:
    cid = _int(body, "customerId")
    assert cid is not None
    if cid not in CUSTOMERS:
        raise SoapFault("Client", f"customer {cid} not found")
    return _customer(etree.Element(q("GetCustomerByIdResponse")), cid)


def search(body: etree._Element) -> etree._Element:
    prefix = _text(body, "namePrefix")
    if prefix is None:
        raise SoapFault("Client", "namePrefix is required")
    limit = _int(body, "limit", required=False)
    out = etree.Element(q("SearchCustomersResponse"))
    found = [cid for cid, c in sorted(CUSTOMERS.items()) if c["fullName"].startswith(prefix)]
    for cid in found[: limit if limit is not None else None]:
        _customer(out, cid, "customer")
    return out


def update_email(body: etree._Element) -> etree._Element:
    cid = _int(body, "customerId")
    email = _text(body, "email") or ""
    assert cid is not None
    if "@" not in email or any(ch.isspace() for ch in email):
        raise SoapFault("Client", f"invalid email address {email!r}")
    if cid not in CUSTOMERS:
        raise SoapFault("Client", f"customer {cid} not found")
    CUSTOMERS[cid]["email"] = email
    out = etree.Element(q("UpdateEmailResponse"))
    etree.SubElement(out, q("customerId")).text = str(cid)
    etree.SubElement(out, q("email")).text = email
    etree.SubElement(out, q("updated")).text = "true"
    return out


STATUSES = ("active", "on-hold", "closed")
STATUS: dict[int, str] = {}
#: changedAt is written in this zone, as a service in Paris would: clients must convert.
ZONE = dt.timezone(dt.timedelta(hours=1))


def set_status(body: etree._Element) -> etree._Element:
    cid = _int(body, "customerId")
    status = (_text(body, "status") or "").strip()
    assert cid is not None
    if status not in STATUSES:
        raise SoapFault("Client", f"invalid status {status!r} (expected one of {', '.join(STATUSES)})")
    if cid not in CUSTOMERS:
        raise SoapFault("Client", f"customer {cid} not found")
    previous = STATUS.get(cid, "active")
    STATUS[cid] = status
    out = etree.Element(q("SetStatusResponse"))
    etree.SubElement(out, q("customerId")).text = str(cid)
    etree.SubElement(out, q("status")).text = status
    etree.SubElement(out, q("previous")).text = previous
    etree.SubElement(out, q("changedAt")).text = dt.datetime.now(ZONE).isoformat(timespec="seconds")
    return out


HANDLERS = {q("GetCustomerById"): get_customer, q("SearchCustomers"): search,
            q("UpdateEmail"): update_email, q("SetStatus"): set_status}


def check_wsse(header: etree._Element | None, user: str, password: str) -> None:
    token = None if header is None else header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if token is None:
        raise SoapFault("Client", "a WS-Security UsernameToken is required",
                        "wsse:InvalidSecurity")
    name = token.findtext(f"{{{WSSE}}}Username") or ""
    pw = token.find(f"{{{WSSE}}}Password")
    given = "" if pw is None else (pw.text or "")
    if pw is not None and pw.get("Type") == DIGEST:
        nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "")
        created = (token.findtext(f"{{{WSU}}}Created") or "").encode()
        want = base64.b64encode(hashlib.sha1(nonce + created + password.encode()).digest()).decode()
        ok = given == want
    else:
        ok = given == password
    if name != user or not ok:
        raise SoapFault("Client", "authentication failed", "wsse:FailedAuthentication")


def envelope(ns: str, payload: etree._Element) -> bytes:
    env = etree.Element(f"{{{ns}}}Envelope", nsmap={"soap": ns})
    etree.SubElement(env, f"{{{ns}}}Body").append(payload)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


def fault(ns: str, f: SoapFault) -> bytes:
    env = etree.Element(f"{{{ns}}}Envelope", nsmap={"soap": ns, "wsse": WSSE})
    body = etree.SubElement(env, f"{{{ns}}}Body")
    el = etree.SubElement(body, f"{{{ns}}}Fault")
    if ns == SOAP11:
        etree.SubElement(el, "faultcode").text = f.subcode or f"soap:{f.code}"
        etree.SubElement(el, "faultstring").text = f.text
    else:
        code = etree.SubElement(el, f"{{{ns}}}Code")
        etree.SubElement(code, f"{{{ns}}}Value").text = (
            "soap:Sender" if f.code == "Client" else
            "soap:Receiver" if f.code == "Server" else f"soap:{f.code}")
        if f.subcode:
            sub = etree.SubElement(code, f"{{{ns}}}Subcode")
            etree.SubElement(sub, f"{{{ns}}}Value").text = f.subcode
        reason = etree.SubElement(el, f"{{{ns}}}Reason")
        text = etree.SubElement(reason, f"{{{ns}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        text.text = f.text
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


XXE_REPLY = (b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
             b'<soap:Envelope xmlns:soap="' + SOAP11.encode() + b'"><soap:Body>'
             b'<GetCustomerByIdResponse xmlns="' + TNS.encode() + b'"><customerId>6666</customerId>'
             b'<fullName>&xxe;</fullName><contact><email>x@example.com</email></contact>'
             b'</GetCustomerByIdResponse></soap:Body></soap:Envelope>')


class Crm(resource.Resource):
    isLeaf = True

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__()
        self.options = options

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return WSDL.read_bytes()

    def render_POST(self, request: server.Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        if self.options.drop_idle is not None and self._drop_if_idle(request):
            return server.NOT_DONE_YET
        if self.options.basic_auth and not self._authorized(request):
            # as a web server in front of the service answers: 401 and an HTML page, no fault
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="crm"')
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body><h1>401 Unauthorized</h1></body></html>\n"
        try:
            doc = etree.fromstring(raw, PARSER)
        except etree.XMLSyntaxError as e:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain")
            return f"malformed XML: {e}\n".encode()
        ns = etree.QName(doc).namespace
        if ns not in (SOAP11, SOAP12) or etree.QName(doc).localname != "Envelope":
            request.setResponseCode(400)
            return b"not a SOAP envelope\n"
        ctype = b"text/xml; charset=utf-8" if ns == SOAP11 else b"application/soap+xml; charset=utf-8"
        request.setHeader(b"content-type", ctype)
        body = doc.find(f"{{{ns}}}Body")
        payload = None if body is None or len(body) == 0 else body[0]
        try:
            only = self.options.soap_version
            if only is not None and ns != (SOAP11 if only == "1.1" else SOAP12):
                raise SoapFault("VersionMismatch", f"this endpoint speaks SOAP {only} only")
            if self.options.wsse:
                user, _, password = self.options.wsse.partition(":")
                check_wsse(doc.find(f"{{{ns}}}Header"), user, password)
            if payload is None or payload.tag not in HANDLERS:
                name = "nothing" if payload is None else etree.QName(payload).localname
                raise SoapFault("Client", f"unknown operation {name}")
            if self.options.test_hooks and payload.tag == q("GetCustomerById"):
                cid = _int(payload, "customerId")
                if cid == XXE_ID:
                    return XXE_REPLY
                if cid == SLOW_ID:
                    d = task.deferLater(reactor, self.options.slow, lambda: None)
                    d.addCallback(lambda _: self._late(request, ns))
                    return server.NOT_DONE_YET
            return envelope(ns, HANDLERS[payload.tag](payload))
        except SoapFault as f:
            request.setResponseCode(500)
            return fault(ns, f)

    def _drop_if_idle(self, request: server.Request) -> bool:
        """A keep-alive connection idle longer than --drop-idle is closed by the server just as
        the client reuses it: the request is read and the connection reset, with no reply (the
        race every server with an idle timeout has, made certain)."""
        channel: Any = request.channel
        idle_since = getattr(channel, "crm_idle_since", None)
        if idle_since is not None and time.monotonic() - idle_since > self.options.drop_idle:
            channel.transport.abortConnection()
            return True

        def finished(_: object) -> None:
            channel.crm_idle_since = time.monotonic()
        request.notifyFinish().addBoth(finished)
        return False

    def _authorized(self, request: server.Request) -> bool:
        user, _, password = self.options.basic_auth.partition(":")
        return bool(request.getUser() == user.encode() and request.getPassword() == password.encode())

    def _late(self, request: server.Request, ns: str) -> None:
        if request.finished or request._disconnected:  # type: ignore[attr-defined]
            return
        CUSTOMERS.setdefault(SLOW_ID, {"fullName": "Slow Poke", "email": "slow@example.com",
                                       "phone": ""})
        request.write(envelope(ns, _customer(etree.Element(q("GetCustomerByIdResponse")), SLOW_ID)))
        request.finish()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m legacy_fixtures.crm", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--wsse", metavar="USER:PASS", help="require a WS-Security UsernameToken")
    p.add_argument("--basic-auth", metavar="USER:PASS", help="require HTTP basic authentication")
    p.add_argument("--drop-idle", type=float, metavar="SECONDS",
                   help="reset a keep-alive connection reused after this much idle time")
    p.add_argument("--test-hooks", action="store_true", help="ids 6666 (XXE) and 7777 (slow)")
    p.add_argument("--slow", type=float, default=5.0, help="seconds id 7777 takes")
    p.add_argument("--soap-version", choices=("1.1", "1.2"),
                   help="speak only this SOAP version: the other gets a VersionMismatch fault")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    root = resource.Resource()
    root.putChild(b"crm", Crm(options))  # type: ignore[arg-type]
    site = server.Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]
    try:
        port = reactor.listenTCP(options.port, site, interface=options.host)
    except Exception as e:  # noqa: BLE001 - one clear line, no traceback
        print(f"crm: cannot listen on {options.host}:{options.port}: {e}", file=sys.stderr)
        return 1
    addr = port.getHost()
    print(f"LISTENING {addr.host}:{addr.port}", flush=True)
    reactor.run()
    return 0
