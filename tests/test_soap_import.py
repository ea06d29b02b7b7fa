"""`adaptercar import-wsdl`: the generated files pass `check`, and for crm answer real calls."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from adaptercar.compile import load_all
from adaptercar.protos import compile_protos
from tests.harness import ROOT, env_with_root
from tests.test_soap_fixture import Crm, start_crm

CRM_WSDL = ROOT / "legacy_fixtures" / "crm" / "crm.wsdl"
ORDERS_WSDL = ROOT / "tests" / "wsdl" / "orders" / "orders.wsdl"
PRICING_WSDL = ROOT / "tests" / "wsdl" / "pricing" / "pricing.wsdl"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adaptercar.cli", *args], capture_output=True,
                          text=True, env=env_with_root(), cwd=ROOT, timeout=60)


def imported(wsdl: Path, out: Path, *extra: str, package: str = "crm.v1") -> Path:
    res = cli("import-wsdl", str(wsdl), "--package", package, "--out", str(out), *extra)
    assert res.returncode == 0, res.stderr
    return out / "adaptercar.yaml"


CORPUS = sorted([CRM_WSDL, *(ROOT / "tests" / "wsdl").rglob("*.wsdl")])


def errors_of(config: Path) -> list[str]:
    return [p.format() for p in load_all(config, environ={}).errors]


@pytest.fixture(scope="module")
def crm() -> Iterator[Crm]:
    fx = start_crm()
    yield fx
    fx.stop()


def test_crm_import_checks_and_answers_calls(tmp_path: Path, crm: Crm, sidecars: Any) -> None:
    config = imported(CRM_WSDL, tmp_path / "out")
    assert (tmp_path / "out" / "wsdl" / "crm.wsdl").read_bytes() == CRM_WSDL.read_bytes()
    assert errors_of(config) == []
    res = cli("check", "-c", str(config))
    assert res.returncode == 0 and "4 methods mapped" in res.stdout, res.stderr
    cfg = yaml.safe_load(config.read_text())
    for role in ("grpc", "http", "admin"):
        cfg[role] = {}  # the harness picks free ports
    base = tmp_path / "out"
    cfg["protos"] = [str(base / "protos")]
    cfg["mappings"] = [str(base / "mappings")]
    soap = cfg["backends"]["customer_service"]["soap"]
    assert soap["endpoint"] == "${CUSTOMER_SERVICE_URL:-http://127.0.0.1:8081/crm}"
    soap["wsdl"] = str(base / soap["wsdl"])
    sc = sidecars(cfg, single_process=True, env={"CUSTOMER_SERVICE_URL": crm.url})
    ps = compile_protos([base / "protos"])
    md = ps.services()["crm.v1.CustomerService"].methods_by_name["GetCustomerById"]
    req_cls: Any = ps.message_class(md.input_type)
    resp_cls: Any = ps.message_class(md.output_type)
    with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
        stub = ch.unary_unary("/crm.v1.CustomerService/GetCustomerById",
                              request_serializer=req_cls.SerializeToString,
                              response_deserializer=resp_cls.FromString)
        got = stub(req_cls(customerId=3), timeout=10)
        assert (got.customerId, got.fullName, got.contact.email) == (3, "Grace Hopper", "grace@example.com")
        with pytest.raises(grpc.RpcError) as e:
            stub(req_cls(customerId=42), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # Client fault, no rules
    # an xsd enumeration is a proto enum and a dateTime a Timestamp, both ways
    md = ps.services()["crm.v1.CustomerService"].methods_by_name["SetStatus"]
    set_req: Any = ps.message_class(md.input_type)
    set_rep: Any = ps.message_class(md.output_type)
    status_enum = md.input_type.fields_by_name["status"].enum_type
    with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
        stub = ch.unary_unary("/crm.v1.CustomerService/SetStatus",
                              request_serializer=set_req.SerializeToString,
                              response_deserializer=set_rep.FromString)
        on_hold = status_enum.values_by_name["STATUS_ON_HOLD"].number
        got = stub(set_req(customerId=2, status=on_hold), timeout=10)
        assert (got.customerId, got.status) == (2, on_hold)
        assert status_enum.values_by_number[got.previous].name == "STATUS_ACTIVE"
        changed = got.changedAt.ToDatetime(tzinfo=dt.UTC)  # the fixture writes it in +01:00
        assert abs((changed - dt.datetime.now(dt.UTC)).total_seconds()) < 60
        with pytest.raises(grpc.RpcError) as e:  # required, left unspecified: nothing sent
            stub(set_req(customerId=2), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == "status is required"
    status, body, _ = sc.http("POST", "/v1/customer-service/SetStatus",
                              body={"customerId": 2, "status": "STATUS_CLOSED"})
    assert status == 200, body
    assert (body["status"], body["previous"]) == ("STATUS_CLOSED", "STATUS_ON_HOLD")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["changedAt"]), body
    status, body, _ = sc.http("POST", "/v1/customer-service/SearchCustomers", body={"namePrefix": "Al"})
    assert status == 200, body
    assert [c["fullName"] for c in body["customer"]] == ["Alan Turing", "Alonzo Church"]
    status, body, _ = sc.http("POST", "/v1/customer-service/UpdateEmail",
                              body={"customerId": 4, "email": "church@example.com"})
    assert status == 200 and body == {"customerId": 4, "email": "church@example.com", "updated": True}


@pytest.mark.parametrize("wsdl", CORPUS, ids=lambda p: p.name)
def test_every_wsdl_of_the_corpus_imports_and_checks(tmp_path: Path, wsdl: Path) -> None:
    """document/literal wrapped and bare, rpc/literal, rpc/encoded with SOAP-encoded arrays,
    SOAP 1.2 only, imports and includes: whatever the style, the output passes `check`."""
    config = imported(wsdl, tmp_path / "out", package="corpus.v1")
    assert errors_of(config) == []
    res = cli("check", "-c", str(config))
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_rpc_styles_and_encoded_arrays(tmp_path: Path) -> None:
    inventory = imported(ROOT / "tests" / "wsdl" / "inventory" / "inventory.wsdl", tmp_path / "inv")
    proto = next((inventory.parent / "protos").glob("*.proto")).read_text()
    # soapenc:Array of i:Item / of xsd:string → repeated fields of the item type
    assert "repeated Item items = 1;" in proto and "repeated string tags = 2;" in proto
    assert "int32 quantity = 3;" in proto
    weather = imported(ROOT / "tests" / "wsdl" / "weather" / "weather.wsdl", tmp_path / "weather")
    proto = next((weather.parent / "protos").glob("*.proto")).read_text()
    # rpc/literal: the request message holds the parts, the reply the output's parts
    assert "message GetForecastRequest {\n  string city = 1;\n  int32 days = 2;" in proto


def test_a_schema_imported_by_an_unknown_url_is_not_fetched(tmp_path: Path) -> None:
    text = (ROOT / "tests" / "wsdl" / "inventory" / "inventory.wsdl").read_text().replace(
        '<xsd:import namespace="http://schemas.xmlsoap.org/wsdl/"/>',
        '<xsd:import namespace="urn:x" schemaLocation="http://schemas.example.com/x.xsd"/>')
    (tmp_path / "remote.wsdl").write_text(text)
    res = cli("import-wsdl", str(tmp_path / "remote.wsdl"), "--package", "x.v1", "--out",
              str(tmp_path / "o"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "http://schemas.example.com/x.xsd, which is not fetched" in res.stderr


def test_soap12_only_imports_includes_recursion_and_odd_names(tmp_path: Path) -> None:
    out = tmp_path / "orders"
    config = imported(ORDERS_WSDL, out, package="shop.orders.v1")
    assert {p.relative_to(out).as_posix() for p in (out / "wsdl").rglob("*") if p.is_file()} == {
        "wsdl/orders.wsdl", "wsdl/schemas/types.xsd", "wsdl/schemas/common.xsd"}
    assert errors_of(config) == []
    proto = next((out / "protos").glob("*.proto")).read_text()
    assert "service OrderService {" in proto  # the first of two services
    assert "int64 order_id = 1;" in proto and "string Ship_To = 2;" in proto
    assert "repeated Category sub_category = 2;" in proto
    # enumerations from an included schema, and an anonymous one named after its element
    assert "Currency currency = 2;" in proto and "CURRENCY_GBP = 3;" in proto
    assert "optional State state = 3;" in proto
    assert 'STATE_IN_PROGRESS = 2;  // "in progress"' in proto
    mapping = yaml.safe_load(next((out / "mappings").glob("*.yaml")).read_text())
    assert mapping["methods"]["PlaceOrder"] == {"operation": "Place-Order"}
    other = imported(ORDERS_WSDL, tmp_path / "audit", "--service", "OrderAudit", package="shop.v1")
    assert errors_of(other) == []
    assert "service OrderAudit {" in next((tmp_path / "audit" / "protos").glob("*.proto")).read_text()


def test_examples_of_soap_methods_run_offline_in_check(tmp_path: Path) -> None:
    config = imported(CRM_WSDL, tmp_path / "out")
    mapping = next((tmp_path / "out" / "mappings").glob("*.yaml"))
    m = yaml.safe_load(mapping.read_text())
    body = ('<GetCustomerByIdResponse xmlns="urn:example:crm"><customerId>{id}</customerId>'
            '<fullName>Ada Lovelace</fullName><contact><email>a@x</email></contact>'
            '</GetCustomerByIdResponse>')
    envelope = ('<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
                + body.format(id=1) + "</e:Body></e:Envelope>")
    fault = ('<s:Fault xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><faultcode>s:Server'
             '</faultcode><faultstring>db down</faultstring></s:Fault>')
    m["methods"]["GetCustomerById"] = {"examples": [
        {"request": {"customerId": 1}, "reply": body.format(id=1),
         "expect": {"customerId": 1, "fullName": "Ada Lovelace", "contact": {"email": "a@x"}}},
        {"request": {"customerId": 1}, "reply": envelope,
         "expect": {"customerId": 1, "fullName": "Ada Lovelace", "contact": {"email": "a@x"}}},
        {"request": {"customerId": 1}, "reply": fault, "expect": {"error": "INTERNAL",
                                                                 "message": "^db down$"}},
        {"request": {"customerId": 2}, "reply": body.format(id=2),           # fails: id
         "expect": {"customerId": 3, "fullName": "Ada Lovelace", "contact": {"email": "a@x"}}},
        {"request": {"customerId": 1}, "reply": "Internal error",             # fails: UNKNOWN
         "expect": {"customerId": 1}},
        {"request": {"customerId": 1}, "reply": body, "stderr": "x",          # not for SOAP
         "expect": {"customerId": 1}},
    ]}
    m["methods"]["SearchCustomers"] = {"examples": [
        {"request": {"namePrefix": ""}, "expect": {"error": "INVALID_ARGUMENT"}}]}
    mapping.write_text(yaml.safe_dump(m, sort_keys=False))
    errs = errors_of(config)
    assert len(errs) == 3, errs
    assert "methods.GetCustomerById.examples[3]: example failed: customerId: expected 3, got 2" \
        in errs[0]
    assert "examples[4]: example failed: expected a reply, got UNKNOWN: HTTP 200: the SOAP " \
        "backend sent no SOAP envelope: 'Internal error'" in errs[1]
    assert "examples[5]: `stderr` and `exit_status` are for process backends" in errs[2]


@pytest.mark.parametrize("args,needle", [
    (["--package", "Not-A-Package"], "is not a proto package"),
    (["--package", "x.v1", "--service", "Nope"], "no service 'Nope'"),
    (["--package", "x.v1", "--port", "Nope"], "no SOAP port 'Nope'"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    res = cli("import-wsdl", str(CRM_WSDL), "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 1 and needle in res.stderr and "Traceback" not in res.stderr
    missing = cli("import-wsdl", str(tmp_path / "none.wsdl"), "--package", "x.v1", "--out", str(tmp_path))
    assert missing.returncode == 1 and "cannot load WSDL" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_check_reports_soap_problems_where_they_are(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = imported(CRM_WSDL, out)
    cfg = yaml.safe_load(config.read_text())
    cfg["backends"]["customer_service"]["soap"]["port"] = "NoSuchPort"
    config.write_text(yaml.safe_dump(cfg))
    errs = errors_of(config)
    assert len(errs) == 1 and "backends.customer_service.soap.port" in errs[0], errs
    assert "no SOAP port 'NoSuchPort'" in errs[0]
    cfg["backends"]["customer_service"]["soap"]["port"] = "CustomerServiceSoap12"
    config.write_text(yaml.safe_dump(cfg))
    mapping = next((out / "mappings").glob("*.yaml"))
    m = yaml.safe_load(mapping.read_text())
    m["methods"]["UpdateEmail"] = {"operation": "UpdateMail"}
    m["methods"]["SearchCustomers"] = {"request": {"nameprefix": "{namePrefix}"}}
    m["methods"]["GetCustomerById"] = {"response": {"fullName": "a.b"}, "faults": [
        {"match": {"code": "("}, "error": {"code": "NOT_FOUND"}}]}
    mapping.write_text(yaml.safe_dump(m))
    errs = errors_of(config)
    text = "\n".join(errs)
    assert "no operation 'UpdateMail'" in text
    assert "the request has no element 'nameprefix'" in text
    assert "methods.GetCustomerById.faults[0].match.code: regular expression" in text
    assert "reply path 'a.b': no element 'a'" in text
    assert len(errs) == 4, errs


def test_what_a_proto_cannot_express_is_reported_per_element_and_the_rest_works(
        tmp_path: Path) -> None:
    out = tmp_path / "ship"
    res = cli("import-wsdl", str(ROOT / "tests" / "wsdl" / "partial" / "partial.wsdl"),
              "--package", "ship.v1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert sorted(warnings) == sorted([
        "warning: CreateShipment.weight: attribute 'unit' is not expressed; skipped",
        "warning: CreateShipment.tracking: attribute 'href' is not expressed; skipped",
        "warning: CreateShipment.extensions: xsd:any (elements of any name) is not expressed; "
        "skipped",
        "warning: CreateShipment: choice of (courier, vehicle) | locker is not expressed as a "
        "oneof: its elements are fields of their own (and zeep may refuse a reply that takes "
        "the branch without a sequence)",
        "warning: Track: a repeated choice of scan | delay is not expressed; skipped",
    ]), res.stderr
    proto = next((out / "protos").glob("*.proto")).read_text()
    # a choice between single elements is a oneof; the rest of each message is written
    assert ("  oneof pickup_point_or_street_address {\n    string pickupPoint = 2;\n"
            "    string streetAddress = 3;\n  }\n  Weight weight = 4;\n}" in proto), proto
    assert "message Weight {\n  string value = 1;\n}" in proto
    assert "message Extensions {\n  string carrier = 1;\n}" in proto
    assert "message TrackReply {\n  int64 shipmentId = 1;\n  string state = 2;\n}" in proto
    assert "_value_1" not in proto
    # the rest works: examples run offline by `check` through zeep's writer and reader
    mapping = next((out / "mappings").glob("*.yaml"))
    m = yaml.safe_load(mapping.read_text())
    reply = ('<CreateShipmentResponse xmlns="urn:example:shipment"><shipmentId>{id}</shipmentId>'
             '<tracking href="https://t.example/{id}"><label>follow</label></tracking>{how}'
             '<extensions><carrier>DHL</carrier><x:eta xmlns:x="urn:other">2d</x:eta></extensions>'
             '</CreateShipmentResponse>')
    m["methods"]["CreateShipment"] = {"examples": [
        {"request": {"reference": "r1", "pickupPoint": "P-7"},
         "reply": reply.format(id=7, how="<courier>Bo</courier><vehicle>bike</vehicle>"),
         "expect": {"shipmentId": 7, "tracking": {"label": "follow"}, "courier": "Bo",
                    "vehicle": "bike", "extensions": {"carrier": "DHL"}}},
        {"request": {"reference": "r2", "streetAddress": "1 Main St", "weight": {"value": "2.5"}},
         "reply": reply.format(id=8, how="<courier>Ann</courier><vehicle>van</vehicle>"),
         "expect": {"shipmentId": 8, "tracking": {"label": "follow"}, "courier": "Ann",
                    "vehicle": "van", "extensions": {"carrier": "DHL"}}},
        {"request": {"reference": "r3"},  # zeep's limit, as the warning says
         "reply": reply.format(id=9, how="<locker>L-3</locker>"),
         "expect": {"error": "UNKNOWN", "message": "Unexpected element .*locker"}},
        {"request": {"reference": "r4"}, "reply": reply.format(id=9, how="<courier>C</courier>"
                                                                       "<vehicle>car</vehicle>"),
         "expect": {"shipmentId": 10}},  # must fail: proves the examples run
    ]}
    m["methods"]["Track"] = {"examples": [
        {"request": {"shipmentId": 7},
         "reply": '<TrackResponse xmlns="urn:example:shipment"><shipmentId>7</shipmentId>'
                  '<state>moving</state><scan>AMS</scan><delay>fog</delay><scan>LHR</scan>'
                  '</TrackResponse>',
         "expect": {"shipmentId": 7, "state": "moving"}}]}
    mapping.write_text(yaml.safe_dump(m, sort_keys=False))
    errs = errors_of(out / "adaptercar.yaml")
    assert len(errs) == 1 and "examples[3]: example failed: shipmentId: expected 10, got 9" \
        in errs[0], errs


def test_document_literal_bare_parts_and_multi_part_messages(tmp_path: Path) -> None:
    """Bare: the parts are the body's elements. Several simple-typed parts make one message of
    their elements (GetPrice, both ways); one complex-typed part is that element's content
    (CheckStock, named unlike the operation); one simple-typed part is a message of that one
    element (Echo: zeep takes and gives the value alone, the backend passes it so)."""
    out = tmp_path / "pricing"
    res = cli("import-wsdl", str(PRICING_WSDL), "--package", "pricing.v1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("warning: ")] == []
    proto = next((out / "protos").glob("*.proto")).read_text()
    assert "rpc Echo(EchoRequest) returns (EchoReply)" in proto
    assert "message EchoRequest {\n  string echo = 1;\n}" in proto
    assert "message EchoReply {\n  string echoed = 1;\n}" in proto
    assert "message GetPriceRequest {\n  string sku = 1;\n  int32 quantity = 2;\n}" in proto
    assert "message GetPriceReply {\n  string unitPrice = 1;\n  string currency = 2;\n}" in proto
    assert "message CheckStockRequest {\n  string sku = 1;\n  optional string warehouse = 2;\n}" \
        in proto
    assert "message CheckStockReply {\n  string sku = 1;\n  int64 onHand = 2;\n" \
        "  repeated string warehouse = 3;\n}" in proto
    # real calls through zeep's offline path: the request written, the reply read
    mapping = next((out / "mappings").glob("*.yaml"))
    m = yaml.safe_load(mapping.read_text())
    ns = 'xmlns="urn:example:pricing"'
    envelope = ('<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>{}'
                '</e:Body></e:Envelope>')
    m["methods"]["GetPrice"] = {"examples": [
        {"request": {"sku": "A-1", "quantity": 3},
         "reply": envelope.format(f'<unitPrice {ns}>12.50</unitPrice><currency {ns}>EUR</currency>'),
         "expect": {"unitPrice": "12.50", "currency": "EUR"}},
        {"request": {"sku": "A-1", "quantity": 3},
         "reply": envelope.format(f'<unitPrice {ns}>1</unitPrice><currency {ns}>EUR</currency>'),
         "expect": {"unitPrice": "2", "currency": "EUR"}},  # must fail: proves they run
        {"request": {"quantity": 3}, "expect": {"error": "INVALID_ARGUMENT",
                                                "message": "sku is required"}},
    ]}
    m["methods"]["CheckStock"] = {"examples": [
        {"request": {"sku": "A-1", "warehouse": "AMS"},
         "reply": f'<StockLevel {ns}><sku>A-1</sku><onHand>40000000000</onHand>'
                  '<warehouse>AMS</warehouse><warehouse>LHR</warehouse></StockLevel>',
         "expect": {"sku": "A-1", "onHand": 40000000000, "warehouse": ["AMS", "LHR"]}}]}
    m["methods"]["Echo"] = {"examples": [
        {"request": {"echo": "a < b"}, "reply": f"<echoed {ns}>a &lt; b</echoed>",
         "expect": {"echoed": "a < b"}},
        {"request": {}, "expect": {"error": "INVALID_ARGUMENT", "message": "echo is required"}}]}
    mapping.write_text(yaml.safe_dump(m, sort_keys=False))
    errs = errors_of(out / "adaptercar.yaml")
    assert len(errs) == 1 and "GetPrice.examples[1]: example failed: unitPrice: expected '2', " \
        "got '1'" in errs[0], errs


_PRICING_REPLIES = {
    "sku": '<p:unitPrice xmlns:p="urn:example:pricing">12.50</p:unitPrice>'
           '<p:currency xmlns:p="urn:example:pricing">EUR</p:currency>',
    "echo": "",  # Echo: filled in from the request by the handler
    "StockQuery": '<StockLevel xmlns="urn:example:pricing"><sku>A-1</sku><onHand>7</onHand>'
                  '<warehouse>AMS</warehouse><warehouse>LHR</warehouse></StockLevel>',
}


class _Pricing(BaseHTTPRequestHandler):
    """A bare service in a few lines: answers by the first element of the Body, and keeps
    what it was sent."""

    seen: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append(body)
        first = re.search(rb"<soap-env:Body><(?:\w+:)?(\w+)", body)
        payload = _PRICING_REPLIES[first.group(1).decode()] if first else ""
        echo = re.search(rb"<(?:\w+:)?echo[ >](?:[^<]*>)?([^<]*)</", body)
        if first and first.group(1) == b"echo" and echo:
            payload = (f'<echoed xmlns="urn:example:pricing">{echo.group(1).decode()} back'
                       f'</echoed>')
        out = ('<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
               f"{payload}</e:Body></e:Envelope>").encode()
        self.send_response(200)
        self.send_header("content-type", "text/xml; charset=utf-8")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_: Any) -> None:
        pass


def test_document_literal_bare_end_to_end(tmp_path: Path, sidecars: Any) -> None:
    out = tmp_path / "pricing"
    config = imported(PRICING_WSDL, out, package="pricing.v1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pricing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = yaml.safe_load(config.read_text())
        for role in ("grpc", "http", "admin"):
            cfg[role] = {}
        cfg["protos"] = [str(out / "protos")]
        cfg["mappings"] = [str(out / "mappings")]
        soap = cfg["backends"]["pricing_service"]["soap"]
        soap["wsdl"] = str(out / soap["wsdl"])
        url = f"http://127.0.0.1:{server.server_address[1]}/pricing"
        sc = sidecars(cfg, single_process=True, env={"PRICING_SERVICE_URL": url})
        status, body, _ = sc.http("POST", "/v1/pricing-service/GetPrice",
                                  body={"sku": "A-1", "quantity": 3})
        assert status == 200 and body == {"unitPrice": "12.50", "currency": "EUR"}, body
        # bare: the parts are the Body's children, no wrapper named after the operation
        assert re.search(rb"<soap-env:Body><(\w+:)?sku[ >].*A-1</(\w+:)?sku><(\w+:)?quantity"
                         rb"[ >].*3</(\w+:)?quantity></soap-env:Body>", _Pricing.seen[-1]), \
            _Pricing.seen[-1]
        ps = compile_protos([out / "protos"])
        md = ps.services()["pricing.v1.PricingService"].methods_by_name["CheckStock"]
        req_cls: Any = ps.message_class(md.input_type)
        resp_cls: Any = ps.message_class(md.output_type)
        with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
            stub = ch.unary_unary("/pricing.v1.PricingService/CheckStock",
                                  request_serializer=req_cls.SerializeToString,
                                  response_deserializer=resp_cls.FromString)
            got = stub(req_cls(sku="A-1"), timeout=10)
        assert (got.sku, got.onHand, list(got.warehouse)) == ("A-1", 7, ["AMS", "LHR"])
        assert re.search(rb"<soap-env:Body><(\w+:)?StockQuery[ >]", _Pricing.seen[-1])
        # one simple-typed part (Echo): the value alone is the Body's element, both ways
        md = ps.services()["pricing.v1.PricingService"].methods_by_name["Echo"]
        echo_req: Any = ps.message_class(md.input_type)
        echo_resp: Any = ps.message_class(md.output_type)
        with grpc.insecure_channel(f"127.0.0.1:{sc.ports['grpc']}") as ch:
            stub = ch.unary_unary("/pricing.v1.PricingService/Echo",
                                  request_serializer=echo_req.SerializeToString,
                                  response_deserializer=echo_resp.FromString)
            assert stub(echo_req(echo="a & b"), timeout=10).echoed == "a & b back"
        assert re.search(rb"<soap-env:Body><(\w+:)?echo( [^>]*)?>a &amp; b</(\w+:)?echo>"
                         rb"</soap-env:Body>", _Pricing.seen[-1]), _Pricing.seen[-1]
        status, body, _ = sc.http("POST", "/v1/pricing-service/Echo", body={"echo": "hi"})
        assert (status, body) == (200, {"echoed": "hi back"}), body
        status, body, _ = sc.http("POST", "/v1/pricing-service/Echo", body={})
        assert status == 400 and "echo is required" in str(body), body
    finally:
        server.shutdown()
        server.server_close()


EXTENSIBLE_WSDL = ROOT / "tests" / "wsdl" / "extensible" / "extensible.wsdl"


class _Audit(BaseHTTPRequestHandler):
    """Answers every request with entry 7, and keeps what it was sent."""

    seen: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.rfile.read(int(self.headers["content-length"])))
        out = (b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
               b'<RecordResponse xmlns="urn:example:audit"><entryId>7</entryId>'
               b'<x:note xmlns:x="urn:other">kept out</x:note></RecordResponse>'
               b'</e:Body></e:Envelope>')
        self.send_response(200)
        self.send_header("content-type", "text/xml; charset=utf-8")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_: Any) -> None:
        pass


def test_a_required_xsd_any_is_not_demanded_and_is_sent_empty(tmp_path: Path,
                                                             sidecars: Any) -> None:
    """A proto cannot feed elements of any name: a required xsd:any in a request is skipped by
    import-wsdl (warned), not demanded by the mapping (`check` passes), and sent empty (zeep
    would otherwise refuse every call)."""
    out = tmp_path / "audit"
    res = cli("import-wsdl", str(EXTENSIBLE_WSDL), "--package", "audit.v1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("warning: ")] == [
        "warning: Record: xsd:any (elements of any name) is not expressed; skipped",
        "warning: Record: xsd:any (elements of any name) is not expressed; skipped"]
    assert errors_of(out / "adaptercar.yaml") == []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Audit)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = yaml.safe_load((out / "adaptercar.yaml").read_text())
        for role in ("grpc", "http", "admin"):
            cfg[role] = {}
        cfg["protos"] = [str(out / "protos")]
        cfg["mappings"] = [str(out / "mappings")]
        soap = cfg["backends"]["audit_service"]["soap"]
        soap["wsdl"] = str(out / soap["wsdl"])
        url = f"http://127.0.0.1:{server.server_address[1]}/audit"
        sc = sidecars(cfg, single_process=True, env={"AUDIT_SERVICE_URL": url})
        status, body, _ = sc.http("POST", "/v1/audit-service/Record",
                                  body={"actor": "ada", "action": "login"})
        assert (status, body) == (200, {"entryId": "7"}), body
        assert re.search(rb"<(\w+:)?Record [^>]*><(\w+:)?actor>ada</(\w+:)?actor><(\w+:)?action>"
                         rb"login</(\w+:)?action></(\w+:)?Record>", _Audit.seen[-1]), _Audit.seen[-1]
    finally:
        server.shutdown()
        server.server_close()
