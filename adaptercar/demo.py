"""`adaptercar demo [--check]`: the ledger and crm fixtures and the sidecar, started together.

The demo is the first thing a new user runs, so it must work on a busy machine (ports taken:
it picks free ones), must say exactly what to type next, and must clean up after itself.
`--check` turns it into an end-to-end smoke test that CI and users can trust.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "examples" / "demo" / "adaptercar.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick(preferred: int, fixed: bool) -> int:
    return preferred if fixed and _port_free(preferred) else _free_port()


class Demo:
    def __init__(self, check: bool) -> None:
        fixed = not check
        self.ports = {
            "ledger": _pick(7000, fixed), "crm": _pick(8081, fixed), "grpc": _pick(50051, fixed),
            "http": _pick(8080, fixed), "admin": _pick(9901, fixed),
            "fx": _pick(15001, fixed), "fx_upstream": _pick(8001, fixed),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = Path(os.environ.get("ADAPTERCAR_DEMO_LOGS", ROOT / ".demo"))
        self.logdir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        p = self.ports
        return {
            **os.environ,
            "LEDGER_ADDR": f"127.0.0.1:{p['ledger']}", "LEDGER_USER": "demo", "LEDGER_PASS": "demo",
            "CRM_URL": f"http://127.0.0.1:{p['crm']}/crm",
            "GRPC_PORT": str(p["grpc"]), "HTTP_PORT": str(p["http"]), "ADMIN_PORT": str(p["admin"]),
            "FX_PORT": str(p["fx"]), "FX_ADDR": f"127.0.0.1:{p['fx_upstream']}",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }

    def start(self) -> None:
        env = self.env()
        # the fixtures start at once; each prints a line when its port is open
        fixtures = [self._spawn_fixture(name, env) for name in ("ledger", "crm")]
        # the service the ledger calls out to through the ambassador route
        rates_log = open(self.logdir / "fx-rates.log", "wb")  # noqa: SIM115 - lives as long as the child
        rates = subprocess.Popen(
            [sys.executable, "-m", "legacy_fixtures.upstreams.http_upstream", "--name", "fx-rates",
             "--port", str(self.ports["fx_upstream"])],
            stdout=subprocess.PIPE, stderr=rates_log, env=env, cwd=ROOT,
        )
        self.procs.append(rates)
        for name, fx in fixtures:
            assert fx.stdout is not None
            line = fx.stdout.readline().decode().strip()
            if not line.startswith("LISTENING"):
                raise RuntimeError(f"the {name} fixture did not start "
                                   f"(see {self.logdir / f'{name}.log'})")
        assert rates.stdout is not None
        if not rates.stdout.readline().strip():
            raise RuntimeError(f"the fx-rates upstream did not start (see {self.logdir / 'fx-rates.log'})")
        sidecar_log = open(self.logdir / "sidecar.log", "wb")  # noqa: SIM115
        sc = subprocess.Popen(
            [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(DEMO_CONFIG)],
            stdout=sidecar_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        self.procs.append(sc)
        self.wait_ready(sc)

    def _spawn_fixture(self, name: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        fx = subprocess.Popen(
            [sys.executable, "-m", f"legacy_fixtures.{name}", "--port", str(self.ports[name])],
            stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT,
        )
        self.procs.append(fx)
        return name, fx

    def wait_ready(self, sc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.ports['admin']}/readyz"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if sc.poll() is not None:
                raise RuntimeError(f"the sidecar exited with status {sc.returncode}; its log: {self.logdir / 'sidecar.log'}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the sidecar was not ready after {timeout:.0f}s; its log: {self.logdir / 'sidecar.log'}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- what users see -------------------------------------------------------------------
    def banner(self) -> str:
        p = self.ports
        h = f"http://127.0.0.1:{p['http']}"
        return f"""
adaptercar demo: three legacy programs are now also gRPC and JSON/HTTP APIs:
  - the 1990s ledger server (legacy_fixtures/ledger, a TCP line protocol on 127.0.0.1:{p['ledger']})
  - ratequote, a stdin/stdout batch program (legacy_fixtures/ratequote), run as a pool of 2 children
  - crm, a SOAP CustomerService (legacy_fixtures/crm, http://127.0.0.1:{p['crm']}/crm?wsdl)
and an outbound route: the legacy side calls 127.0.0.1:{p['fx']} and the ambassador forwards to
the fx-rates service (an HTTP test upstream on 127.0.0.1:{p['fx_upstream']}) with timeouts,
retries and a circuit breaker.

  JSON/HTTP  {h}
  gRPC       127.0.0.1:{p['grpc']}   (server reflection on: grpcurl -plaintext 127.0.0.1:{p['grpc']} list)
  ambassador http://127.0.0.1:{p['fx']}   (route fxrates)
  admin      http://127.0.0.1:{p['admin']}   (/healthz /readyz /metrics /config /ambassador, POST /reload)
  config     {DEMO_CONFIG.relative_to(ROOT)}   mappings: mappings/ledger.yaml, mappings/ratequote.yaml,
             docs/examples/crm/mapping.yaml
  logs       {self.logdir}/sidecar.log (JSON lines), {self.logdir}/ledger.log, {self.logdir}/crm.log

Try:
  curl {h}/v1/accounts/1001/balance
  curl '{h}/v1/accounts/1001/transactions?limit=3'
  curl -X POST {h}/v1/transfers -d '{{"fromAccount":"1001","toAccount":"1002","amountCents":"2500"}}'
  curl -X POST {h}/v1/accounts/1001/notes -d '{{"text":"line one\\r\\nline two"}}'
  curl {h}/v1/accounts/1001/statement
  curl {h}/v1/accounts/9999/balance          # a legacy ERR 404 becomes HTTP 404 / NOT_FOUND
  curl -X POST {h}/ledger.v1.Ledger/GetBalance -d '{{"accountId":"1002"}}'
  curl -X POST {h}/v1/quotes -d '{{"product":"WIDGET","quantity":3,"region":"EU"}}'
  curl {h}/v1/customers/1                  # a SOAP call: GetCustomerById on the crm service
  curl '{h}/v1/customers?name_prefix=Al'
  curl {h}/v1/customers/99                 # a SOAP fault becomes HTTP 404 / NOT_FOUND
  curl {h}/openapi.json
  curl http://127.0.0.1:{p['fx']}/rates/EUR     # through the ambassador route to fx-rates
  curl http://127.0.0.1:{p['admin']}/ambassador
  curl http://127.0.0.1:{p['admin']}/metrics | grep adaptercar_requests_total

Press Ctrl-C to stop.
"""


Check = tuple[str, Callable[[], Any], Callable[[Any], bool]]


def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _checks(ports: dict[str, int]) -> list[Check]:
    import grpc

    from .compile import load_all

    loaded = load_all(DEMO_CONFIG, environ={**os.environ, "LEDGER_USER": "demo", "LEDGER_PASS": "demo"},
                      run_examples=False)
    ps = loaded.protoset
    channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")

    def rpc_to(service: str, name: str, **fields: Any) -> Callable[[], Any]:
        m = ps.services()[service].methods_by_name[name]
        req_cls, resp_cls = ps.message_class(m.input_type), ps.message_class(m.output_type)
        stub = channel.unary_unary(f"/{service}/{name}", request_serializer=req_cls.SerializeToString,
                                   response_deserializer=resp_cls.FromString)

        def call() -> Any:
            from google.protobuf import json_format

            try:
                return ("OK", json_format.MessageToDict(stub(req_cls(**fields), timeout=5)))
            except grpc.RpcError as e:
                return (e.code().name, e.details())

        return call

    def rpc(name: str, **fields: Any) -> Callable[[], Any]:
        return rpc_to("ledger.v1.Ledger", name, **fields)

    def rpc_rq(name: str, **fields: Any) -> Callable[[], Any]:
        return rpc_to("ratequote.v1.RateQuote", name, **fields)

    def rpc_crm(name: str, **fields: Any) -> Callable[[], Any]:
        return rpc_to("customers.v1.Customers", name, **fields)

    hp, fx = ports["http"], ports["fx"]
    note = "line one\r\nline two with a CRLF inside"
    return [
        ("grpc GetBalance 1001", rpc("GetBalance", account_id="1001"),
         lambda r: r[0] == "OK" and r[1].get("currency") == "EUR" and int(r[1]["balanceCents"]) > 0),
        ("grpc ListTransactions 1001 limit 3", rpc("ListTransactions", account_id="1001", limit=3),
         lambda r: r[0] == "OK" and len(r[1]["transactions"]) == 3),
        ("grpc Transfer 1001 -> 1002 2500", rpc("Transfer", from_account="1001", to_account="1002", amount_cents=2500),
         lambda r: r[0] == "OK" and r[1]["transactionId"].startswith("TX")),
        ("grpc PutNote (payload with CRLF)", rpc("PutNote", account_id="1001", text=note),
         lambda r: r == ("OK", {"stored": True})),
        ("grpc GetStatement 1001", rpc("GetStatement", account_id="1001"),
         lambda r: r[0] == "OK" and note in r[1]["text"]),
        ("grpc Ping", rpc("Ping"), lambda r: r == ("OK", {"status": "PONG"})),
        ("grpc GetBalance 9999 -> NOT_FOUND", rpc("GetBalance", account_id="9999"),
         lambda r: r[0] == "NOT_FOUND"),
        ("grpc GetBalance with CRLF injection -> INVALID_ARGUMENT", rpc("GetBalance", account_id="1001\r\nXFER 1001 2001 100"),
         lambda r: r[0] == "INVALID_ARGUMENT"),
        ("http GET /v1/accounts/1002/balance", lambda: _http(hp, "GET", "/v1/accounts/1002/balance"),
         lambda r: r[0] == 200 and r[1]["accountId"] == "1002" and isinstance(r[1]["balanceCents"], str)),
        ("http GET /v1/accounts/1001/transactions?limit=2", lambda: _http(hp, "GET", "/v1/accounts/1001/transactions?limit=2"),
         lambda r: r[0] == 200 and len(r[1]["transactions"]) == 2),
        ("http POST /v1/transfers", lambda: _http(hp, "POST", "/v1/transfers",
                                                 {"fromAccount": "1002", "toAccount": "2001", "amountCents": "100"}),
         lambda r: r[0] == 200 and r[1]["transactionId"].startswith("TX")),
        ("http POST /v1/accounts/2001/notes", lambda: _http(hp, "POST", "/v1/accounts/2001/notes", {"text": "hi"}),
         lambda r: r == (200, {"stored": True})),
        ("http GET /v1/accounts/2001/statement", lambda: _http(hp, "GET", "/v1/accounts/2001/statement"),
         lambda r: r[0] == 200 and "hi" in r[1]["text"]),
        ("http GET /v1/ping", lambda: _http(hp, "GET", "/v1/ping"), lambda r: r == (200, {"status": "PONG"})),
        ("http POST /ledger.v1.Ledger/GetBalance", lambda: _http(hp, "POST", "/ledger.v1.Ledger/GetBalance", {"accountId": "2001"}),
         lambda r: r[0] == 200 and r[1]["balanceCents"] == "100"),
        ("http GET /v1/accounts/9999/balance -> 404", lambda: _http(hp, "GET", "/v1/accounts/9999/balance"),
         lambda r: r[0] == 404 and r[1]["code"] == 5),
        ("http malformed JSON -> 400", lambda: _raw_post(hp, "/v1/transfers", b"{nope"),
         lambda r: r[0] == 400 and r[1]["code"] == 3),
        ("grpc RateQuote.Quote WIDGET x3 EU (stdio child)", rpc_rq("Quote", product="WIDGET", quantity=3, region="EU"),
         lambda r: r == ("OK", {"unitPriceCents": "1250", "totalCents": "3750", "currency": "EUR", "region": "EU"})),
        ("http POST /v1/quotes GADGET x2 US (stdio child)",
         lambda: _http(hp, "POST", "/v1/quotes", {"product": "GADGET", "quantity": 2, "region": "US"}),
         lambda r: r[0] == 200 and r[1]["currency"] == "USD" and r[1]["totalCents"] == "21996"),
        ("http POST /v1/quotes unknown product -> 404",
         lambda: _http(hp, "POST", "/v1/quotes", {"product": "NOPE", "quantity": 1, "region": "EU"}),
         lambda r: r[0] == 404 and r[1]["code"] == 5),
        ("grpc Customers.GetCustomer 1 (SOAP)", rpc_crm("GetCustomer", id=1),
         lambda r: r == ("OK", {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"})),
        ("grpc Customers.GetCustomer 99 (SOAP fault) -> NOT_FOUND", rpc_crm("GetCustomer", id=99),
         lambda r: r == ("NOT_FOUND", "customer 99 not found")),
        ("http GET /v1/customers?name_prefix=Al (SOAP, array)",
         lambda: _http(hp, "GET", "/v1/customers?name_prefix=Al"),
         lambda r: r[0] == 200 and [c["fullName"] for c in r[1]["customer"]]
         == ["Alan Turing", "Alonzo Church"]),
        ("http GET /v1/customers/99 (SOAP fault) -> 404", lambda: _http(hp, "GET", "/v1/customers/99"),
         lambda r: r[0] == 404 and r[1]["code"] == 5),
        ("ambassador GET /rates/EUR (route fxrates -> fx-rates)", lambda: _plain(fx, "/rates/EUR"),
         lambda r: r == (200, "fx-rates")),
        ("http GET /openapi.json", lambda: _http(hp, "GET", "/openapi.json"),
         lambda r: r[0] == 200 and "/v1/accounts/{accountId}/balance" in json.dumps(r[1]["paths"])
         or "/v1/accounts/{account_id}/balance" in json.dumps(r[1]["paths"])),
    ]


def _plain(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _raw_post(port: int, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def run_checks(ports: dict[str, int]) -> bool:
    all_ok = True
    for name, call, good in _checks(ports):
        try:
            result = call()
            ok = bool(good(result))
        except Exception as e:  # noqa: BLE001 - a check that crashes is a failed check
            result, ok = f"{type(e).__name__}: {e}", False
        all_ok = all_ok and ok
        shown = json.dumps(result, ensure_ascii=False) if not isinstance(result, str) else result
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {shown[:160]}")
    return all_ok


def run_demo(check: bool = False) -> int:
    if not DEMO_CONFIG.exists():
        print(f"adaptercar demo: {DEMO_CONFIG} not found; run it from a checkout of the repository",
              file=sys.stderr)
        return 1
    demo = Demo(check)
    try:
        demo.start()
        if check:
            print(f"adaptercar demo --check: ledger on :{demo.ports['ledger']}, crm on "
                  f":{demo.ports['crm']}, gRPC :{demo.ports['grpc']}, "
                  f"JSON :{demo.ports['http']}, admin :{demo.ports['admin']}, "
                  f"ambassador :{demo.ports['fx']}")
            ok = run_checks(demo.ports)
            print("all demo calls answered correctly" if ok else "some demo calls FAILED "
                  f"(logs in {demo.logdir})")
            return 0 if ok else 1
        print(demo.banner())
        while all(p.poll() is None for p in demo.procs):
            time.sleep(0.5)
        print("a demo process exited; stopping", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"adaptercar demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo")
        return 0
    finally:
        demo.stop()
