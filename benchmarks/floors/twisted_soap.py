"""The JSON → SOAP floor: what twisted.web and Twisted's HTTP client can do for
`GET /v1/customers/{id}` → the crm WSDL's `GetCustomerById`.

A minimal hand-written server on the same stack as adaptercar's JSON worker (asyncioreactor on
uvloop, twisted.web with no access log): the envelope is a precomputed template with the id
put in, posted with `twisted.web.client.Agent` on a persistent connection pool (as
adaptercar's SOAP backend does), the reply read whole and parsed with lxml without entities,
DTD or network, three fields taken by precompiled XPath, and the same JSON answered. No
adaptercar code and no zeep: the gap between this and the sidecar is what adaptercar's
generality costs on the SOAP path.

    python benchmarks/floors/twisted_soap.py --port 0 --endpoint http://127.0.0.1:8081/crm

prints `LISTENING 127.0.0.1:<port>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from typing import Any

import uvloop

loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install(loop)

from lxml import etree  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.web import resource, server  # noqa: E402
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

reactor: Any = _reactor

ENVELOPE = ("<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope "
            'xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body>'
            '<ns0:GetCustomerById xmlns:ns0="urn:example:crm"><ns0:customerId>{}</ns0:customerId>'
            "</ns0:GetCustomerById></soap-env:Body></soap-env:Envelope>")
HEADERS = Headers({b"content-type": [b"text/xml; charset=utf-8"],
                   b"soapaction": [b'"urn:example:crm/GetCustomerById"']})
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "c": "urn:example:crm"}
REPLY = "/s:Envelope/s:Body/c:GetCustomerByIdResponse"
ID = etree.XPath(f"{REPLY}/c:customerId/text()", namespaces=NS)
NAME = etree.XPath(f"{REPLY}/c:fullName/text()", namespaces=NS)
EMAIL = etree.XPath(f"{REPLY}/c:contact/c:email/text()", namespaces=NS)


class Customers(resource.Resource):
    isLeaf = True

    def __init__(self, agent: Agent, endpoint: bytes) -> None:
        super().__init__()
        self.agent = agent
        self.endpoint = endpoint

    def render_GET(self, request: Any) -> Any:
        path = request.postpath
        if len(path) != 3 or path[:2] != [b"v1", b"customers"] or not path[2].isdigit():
            return self._write(request, 404, b'{"code": 5, "message": "not found", "details": []}')
        body = FileBodyProducer(io.BytesIO(ENVELOPE.format(int(path[2])).encode()))
        d = self.agent.request(b"POST", self.endpoint, HEADERS, body)  # type: ignore[arg-type]
        d.addCallback(readBody)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    @staticmethod
    def _write(request: Any, status: int, body: bytes) -> Any:
        if request._disconnected:
            return None
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()
        return None

    def _answer(self, raw: bytes, request: Any) -> None:
        root = etree.fromstring(raw, PARSER)
        ids, names, emails = ID(root), NAME(root), EMAIL(root)
        if not ids:
            self._write(request, 502, b'{"code": 2, "message": "unexpected reply", "details": []}')
            return
        out = {"id": int(ids[0]), "name": names[0] if names else "", "email": emails[0] if emails else ""}
        self._write(request, 200, json.dumps(out).encode())

    def _failed(self, failure: Any, request: Any) -> None:
        self._write(request, 503, json.dumps({"code": 14, "message": str(failure.value), "details": []}).encode())


class QuietSite(server.Site):
    def log(self, request: Any) -> None:  # the default access log costs a quarter of throughput
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--pool", type=int, default=32, help="persistent connections to the endpoint")
    args = p.parse_args()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.pool
    agent = Agent(reactor, pool=pool)
    listener = reactor.listenTCP(args.port, QuietSite(Customers(agent, args.endpoint.encode())),
                                 interface="127.0.0.1")
    print(f"LISTENING 127.0.0.1:{listener.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
