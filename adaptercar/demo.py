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
            "DEMO_DIR": str(self.logdir),  # where the companion part of the config reads and writes
        }

    def _fixture(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=log, env=env,
                                cwd=ROOT)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _started(proc: subprocess.Popen[bytes], word: str, what: str) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.strip() or not line.startswith(word):
            raise RuntimeError(f"the {what} did not start (see its log)")

    def start(self) -> None:
        env = self.env()
        # the companion tails the ledger's log `from: start` and renders confwatch.conf: begin
        # both afresh, so this run's lines are the ones shown and confwatch gets its SIGHUP
        for name in ("ledger-app.log", "confwatch.conf"):
            (self.logdir / name).unlink(missing_ok=True)
        overrides = self.logdir / "values"  # the second values folder: empty at start
        overrides.mkdir(exist_ok=True)
        for old in overrides.iterdir():
            if old.is_file():
                old.unlink()
        d = self.logdir
        # the fixtures start at once; each prints a line when its port is open
        fx = self._fixture("ledger", ["legacy_fixtures.ledger", "--port", str(self.ports["ledger"]),
                                      "--log", str(d / "ledger-app.log")], env)
        crm = self._fixture("crm", ["legacy_fixtures.crm", "--port", str(self.ports["crm"])], env)
        # the service the ledger calls out to through the ambassador route
        rates = self._fixture("fx-rates", ["legacy_fixtures.upstreams.http_upstream", "--name",
                                           "fx-rates", "--port", str(self.ports["fx_upstream"])], env)
        cw = self._fixture("confwatch", ["legacy_fixtures.confwatch", "--config", str(d / "confwatch.conf"),
                                         "--pidfile", str(d / "confwatch.pid"),
                                         "--status", str(d / "confwatch.status.json")], env)
        self._started(fx, "LISTENING", f"ledger fixture ({d / 'ledger.log'})")
        self._started(crm, "LISTENING", f"crm fixture ({d / 'crm.log'})")
        self._started(rates, "", f"fx-rates upstream ({d / 'fx-rates.log'})")
        self._started(cw, "CONFWATCH READY", f"confwatch fixture ({d / 'confwatch.log'})")
        sidecar_log = open(self.logdir / "sidecar.log", "wb")  # noqa: SIM115
        sc = subprocess.Popen(
            [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(DEMO_CONFIG)],
            stdout=sidecar_log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        self.procs.append(sc)
        self.wait_ready(sc)

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
retries and a circuit breaker; and companion duties (docs/companion.md): the ledger's log file
re-emitted as JSON lines (event legacy_log), its STATS command polled into gauges
(legacy_ledger_*), and the config file of confwatch (legacy_fixtures/confwatch) rendered from
examples/demo/values/ (a file in {self.logdir}/values/ overrides one), then a SIGHUP to it.

  JSON/HTTP  {h}
  gRPC       127.0.0.1:{p['grpc']}   (server reflection on: grpcurl -plaintext 127.0.0.1:{p['grpc']} list)
  ambassador http://127.0.0.1:{p['fx']}   (route fxrates)
  admin      http://127.0.0.1:{p['admin']}   (/healthz /readyz /metrics /config /ambassador, POST /reload)
  config     {DEMO_CONFIG.relative_to(ROOT)}   mappings: mappings/ledger.yaml, mappings/ratequote.yaml,
             docs/examples/crm/mapping.yaml
  logs       {self.logdir}/sidecar.log (JSON lines), ledger.log, ledger-app.log, crm.log, confwatch.log

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
  curl http://127.0.0.1:{p['admin']}/metrics | grep legacy_ledger_
  grep legacy_log {self.logdir}/sidecar.log
  echo 50 > {self.logdir}/values/max_sessions; sleep 2; tail -1 {self.logdir}/confwatch.log

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


def _eventually(call: Callable[[], Any], good: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    """For what happens on its own schedule (a stats poll, a log tail, a render): the first
    result that is good, else the last one."""
    end = time.monotonic() + timeout
    while True:
        result = call()
        if good(result) or time.monotonic() > end:
            return result
        time.sleep(0.2)


def _metric_lines(port: int, prefix: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return [line for line in r.read().decode().splitlines() if line.startswith(prefix)]


def _legacy_log_lines(logdir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (logdir / "sidecar.log").read_text(errors="replace").splitlines():
        if '"legacy_log"' in line:
            rec = json.loads(line)
            if rec.get("source") == "ledger-app":
                out.append(rec)
    return out


def _confwatch(logdir: Path) -> tuple[str, Any]:
    rendered = logdir / "confwatch.conf"
    try:
        status = json.loads((logdir / "confwatch.status.json").read_text())
    except (OSError, ValueError):
        status = None
    return (rendered.read_text() if rendered.exists() else "(not written)"), status


def _companion_checks(ports: dict[str, int], logdir: Path) -> list[Check]:
    values = {p.name: p.read_text().rstrip("\n") for p in (DEMO_CONFIG.parent / "values").iterdir()}
    return [
        ("companion stats: legacy_ledger_accounts on /metrics",
         lambda: _eventually(lambda: _metric_lines(ports["admin"], "legacy_ledger_accounts"),
                             lambda r: r == ['legacy_ledger_accounts{backend="ledger"} 3.0']),
         lambda r: r == ['legacy_ledger_accounts{backend="ledger"} 3.0']),
        ("companion logs: the ledger's log lines as legacy_log",
         lambda: _eventually(lambda: [(r["level"], r["msg"]) for r in _legacy_log_lines(logdir)][:2],
                             lambda r: len(r) == 2),
         lambda r: len(r) == 2 and r[0][0] == "INFO" and r[0][1].startswith("ledger listening on")),
        ("companion config: confwatch.conf rendered, confwatch reloaded it on SIGHUP",
         lambda: _eventually(lambda: _confwatch(logdir), lambda r: bool(r[1] and r[1]["hups"] >= 1)),
         lambda r: all(f"{k} = {v}" in r[0] for k, v in values.items())
         and r[1]["hups"] >= 1 and r[1]["values"] == values),
    ]


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


def run_checks(ports: dict[str, int], logdir: Path | None = None) -> bool:
    all_ok = True
    checks = _checks(ports) + (_companion_checks(ports, logdir) if logdir is not None else [])
    for name, call, good in checks:
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
            ok = run_checks(demo.ports, demo.logdir)
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
