"""The run's shared state: settings, the servers under test, paired runs, and what was found.

Servers are started on first use and stay up for the whole run (idle servers cost nothing),
so every scenario pairs its subject with its baselines in the same minutes on the same
machine: A B A B …, one after the other, never at once, and the median of each figure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import load
from .load import LoadCommand, Measure
from .procs import (
    ROOT,
    BenchError,
    Processes,
    Started,
    cpu_seconds,
    free_port,
    memcached_argv,
    process_tree,
    python_env,
    wait_port,
)

KV = ROOT / "benchmarks" / "kv"
SOAP = ROOT / "benchmarks" / "soap"
FLOORS = ROOT / "benchmarks" / "floors"
ALTERNATIVES = ROOT / "benchmarks" / "alternatives"
KEY, FLAGS, VALUE = "bench", 7, "v" * 64
JSON_PATH = f"/v1/cache/{KEY}"
GRPC_PATH = "/kv.v1.Cache/Get"

# JSON → SOAP: the crm WSDL's GetCustomerById, answered by a canned reply (no XML declaration:
# the nginx string is single-quoted). The request is the
# envelope the sidecar (and zeep) send for customerId 1, byte for byte.
SOAP_PATH = "/crm"
CUSTOMER_PATH = "/v1/customers/1"
EXPECTED_CUSTOMER = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}
CANNED_SOAP = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
               '<GetCustomerByIdResponse xmlns="urn:example:crm"><customerId>1</customerId>'
               '<fullName>Ada Lovelace</fullName><contact><email>ada@example.com</email>'
               '<phone>+44 20 1815</phone></contact></GetCustomerByIdResponse></soap:Body></soap:Envelope>')
SOAP_REQUEST = (b"<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope "
                b'xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body>'
                b'<ns0:GetCustomerById xmlns:ns0="urn:example:crm"><ns0:customerId>1</ns0:customerId>'
                b'</ns0:GetCustomerById></soap-env:Body></soap-env:Envelope>')

# gRPC → stdio: echo.v1.Echo/Say over a pool of `cat`; SayRequest and SayReply are both one
# string field 1, so the request and the reply messages are the same bytes.
STDIO = ROOT / "benchmarks" / "stdio"
ECHO_PATH = "/echo.v1.Echo/Say"
ECHO_TEXT = "bench-echo-" + "x" * 21
ECHO_MESSAGE = b"\x0a" + bytes([len(ECHO_TEXT)]) + ECHO_TEXT.encode()
ECHO_CHILDREN = 4  # benchmarks/stdio/adaptercar.yaml's pool.size

# The ambassador: an SRV name with two endpoints (nginx on two ports), its target's A record.
AMBASSADOR = ROOT / "benchmarks" / "ambassador"
SRV_NAME = "_http._tcp.upstream.bench.test"
SRV_TARGET = "upstream.bench.test"
UPSTREAM_BODY = "hello from the upstream"

HAPROXY_CFG = """\
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 10s
resolvers loopback
  nameserver dns 127.0.0.1:{dns}
  accepted_payload_size 8192
  resolve_retries 3
  timeout resolve 1s
  timeout retry 1s
  hold valid 10s
frontend in
  bind 127.0.0.1:{port}
  default_backend upstream
backend upstream
  balance roundrobin
  retry-on conn-failure empty-response 503
  server-template up {n} {srv} resolvers loopback resolve-prefer ipv4 init-addr none
"""

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/body;
  default_type "{content_type}";
  server {{
{listen}
{locations}
  }}
}}
"""


@dataclass
class Settings:
    duration: int = 5  # seconds per run (wrk counts whole seconds)
    repeat: int = 2  # A B pairs
    warmup: int = 1  # seconds of unmeasured load before a subject's first run (0: none)
    rate: int = 1000  # the fixed-rate scenario's total requests per second
    out: Path = ROOT / "benchmarks" / "results"


@dataclass
class Row:
    scenario: str
    subject: str
    measure: Measure | None = None
    baseline: str | None = None
    ratio: float | None = None  # subject throughput / baseline throughput
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    runs: list[Measure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "subject": self.subject,
                "measure": self.measure.as_dict() if self.measure else None, "baseline": self.baseline,
                "ratio": None if self.ratio is None else round(self.ratio, 3), "note": self.note,
                "extra": {k: round(v, 4) for k, v in self.extra.items()},
                "runs": [m.as_dict() for m in self.runs]}


@dataclass
class Check:
    """One of the issue's targets, against a measured value."""

    target: str
    value: float
    limit: float
    at_most: bool  # True: value ≤ limit passes; False: value ≥ limit passes
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "value": round(self.value, 4), "limit": self.limit,
                "at_most": self.at_most, "unit": self.unit, "passed": self.passed}


@dataclass
class Subject:
    """One side of a pairing: the load to run and the processes whose CPU time it is charged."""

    label: str
    loads: Callable[[int], list[LoadCommand]]  # the load commands for a run of that many seconds
    pids: Callable[[], list[int]] | None = None


@dataclass
class Sidecar:
    started: Started
    http: int
    grpc: int
    admin: int


class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.procs = Processes(workdir)
        self.rows: list[Row] = []
        self.checks: list[Check] = []
        self.errors: list[str] = []
        self.solo: dict[str, Measure] = {}  # front → its solo median, for the mixed scenario
        self._servers: dict[str, Any] = {}
        self._h2log = 0
        self.grpc_request = workdir / "get-request.grpc"
        self.grpc_request.write_bytes(load.grpc_frame(_get_request_bytes(KEY)))
        self.grpc_reply_bytes = len(load.grpc_frame(_get_reply_bytes()))
        self.echo_request = workdir / "say-request.grpc"
        self.echo_request.write_bytes(load.grpc_frame(ECHO_MESSAGE))
        self.soap_request = workdir / "get-customer.xml"
        self.soap_request.write_bytes(SOAP_REQUEST)

    # -- servers, started once --------------------------------------------------------------
    def memcached(self) -> int:
        if "memcached" not in self._servers:
            port = free_port()
            p = self.procs.start("memcached", memcached_argv(port))
            wait_port(port, p.proc, "memcached")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"set {KEY} {FLAGS} 0 {len(VALUE)}\r\n{VALUE}\r\n".encode())
                if s.recv(100) != b"STORED\r\n":
                    raise BenchError("memcached did not store the benchmark key")
            self._servers["memcached"] = port
        return int(self._servers["memcached"])

    def launch_sidecar(self, name: str, config: Path, env: dict[str, str],
                       single_process: bool = False) -> Sidecar:
        """A sidecar on `config` with free ports for its fronts and admin, once ready."""
        ports = {"http": free_port(), "grpc": free_port(), "admin": free_port()}
        env = {**env, **{f"BENCH_{k.upper()}_PORT": str(v) for k, v in ports.items()}}
        argv = [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(config)]
        if single_process:
            argv.append("--single-process")
        p = self.procs.start(name, argv, env=python_env(env))
        sc = Sidecar(p, ports["http"], ports["grpc"], ports["admin"])
        _wait_ready(sc)
        return sc

    def start_sidecar(self, name: str, single_process: bool = False) -> Sidecar:
        sc = self.launch_sidecar(name, KV / "adaptercar.yaml", {"BENCH_MEMCACHED_PORT": str(self.memcached())},
                                 single_process)
        check_json(sc.http, name)
        check_grpc(sc.grpc, name, self.grpc_request)
        return sc

    def sidecar(self) -> Sidecar:
        if "sidecar" not in self._servers:
            self._servers["sidecar"] = self.start_sidecar("sidecar")
        sc: Sidecar = self._servers["sidecar"]
        return sc

    def _floor(self, name: str, script: str) -> tuple[Started, int]:
        if name not in self._servers:
            mc = self.memcached()
            p = self.procs.start(name, [sys.executable, str(FLOORS / script), "--port", "0",
                                        "--memcached", f"127.0.0.1:{mc}", "--pool", "2", "--pipeline", "16"])
            self._servers[name] = (p, _listening_port(p))
        got: tuple[Started, int] = self._servers[name]
        return got

    def twisted_floor(self) -> tuple[Started, int]:
        fresh = "twisted-floor" not in self._servers
        p, port = self._floor("twisted-floor", "twisted_memcached.py")
        if fresh:
            check_json(port, "twisted floor")
        return p, port

    def grpc_floor(self) -> tuple[Started, int]:
        fresh = "grpcaio-floor" not in self._servers
        p, port = self._floor("grpcaio-floor", "grpcaio_memcached.py")
        if fresh:
            check_grpc(port, "grpc.aio floor", self.grpc_request)
        return p, port

    # -- JSON → SOAP: a canned reply from nginx, the sidecar, FastAPI + zeep -------------------
    def canned_soap(self) -> int:
        """nginx answering every request with the crm WSDL's GetCustomerById reply: a C server
        that is never the bottleneck, so the figures are the SOAP client's."""
        if "canned-soap" not in self._servers:
            self._servers["canned-soap"] = self.nginx("canned-soap", {"/": f"return 200 '{CANNED_SOAP}';"},
                                                      content_type="text/xml; charset=utf-8")
            check_post(self._servers["canned-soap"], SOAP_PATH, self.soap_request, CANNED_SOAP.encode(),
                       "nginx (canned SOAP)")
        return int(self._servers["canned-soap"])

    def nginx(self, name: str, locations: dict[str, str], content_type: str = "text/plain") -> int:
        return self.nginx_ports(name, locations, content_type)[0]

    def nginx_ports(self, name: str, locations: dict[str, str], content_type: str = "text/plain",
                    ports: int = 1) -> list[int]:
        """An nginx (one worker, no access log) in its own prefix under the run's folder,
        answering the same on each of `ports` free ports."""
        got = [free_port() for _ in range(ports)]
        prefix = self.workdir / name
        prefix.mkdir(exist_ok=True)
        locs = "\n".join(f"    location {path} {{ {body} }}" for path, body in locations.items())
        listen = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in got)
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, listen=listen, locations=locs,
                                                              content_type=content_type))
        p = self.procs.start(name, ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                                    "-c", str(prefix / "nginx.conf")])
        for port in got:
            wait_port(port, p.proc, name)
        return got

    def soap_sidecar(self) -> Sidecar:
        if "soap-sidecar" not in self._servers:
            sc = self.launch_sidecar("soap-sidecar", SOAP / "adaptercar.yaml",
                                     {"BENCH_SOAP_PORT": str(self.canned_soap())})
            check_json(sc.http, "sidecar (SOAP)", CUSTOMER_PATH, EXPECTED_CUSTOMER)
            self._servers["soap-sidecar"] = sc
        got: Sidecar = self._servers["soap-sidecar"]
        return got

    def soap_floor(self) -> tuple[Started, int]:
        if "twisted-soap-floor" not in self._servers:
            endpoint = f"http://127.0.0.1:{self.canned_soap()}{SOAP_PATH}"
            p = self.procs.start("twisted-soap-floor", [sys.executable, str(FLOORS / "twisted_soap.py"),
                                                        "--port", "0", "--endpoint", endpoint])
            port = _listening_port(p)
            check_json(port, "Twisted SOAP floor", CUSTOMER_PATH, EXPECTED_CUSTOMER)
            self._servers["twisted-soap-floor"] = (p, port)
        got: tuple[Started, int] = self._servers["twisted-soap-floor"]
        return got

    def fastapi_zeep(self) -> int:
        if "fastapi-zeep" not in self._servers:
            endpoint = f"http://127.0.0.1:{self.canned_soap()}{SOAP_PATH}"
            port = free_port()
            p = self.procs.start("fastapi-zeep", [sys.executable, str(ALTERNATIVES / "fastapi_zeep.py"),
                                                  "--port", str(port), "--endpoint", endpoint])
            _listening_port(p, timeout=60)
            check_json(port, "FastAPI + zeep", CUSTOMER_PATH, EXPECTED_CUSTOMER)
            self._servers["fastapi-zeep"] = (p, port)
        got: tuple[Started, int] = self._servers["fastapi-zeep"]
        return got[1]

    # -- ambassador: SRV discovery, vs the upstream direct, vs HAProxy -------------------------
    def upstreams(self) -> list[int]:
        """Two static upstreams (one nginx listening on two ports): the SRV name's endpoints."""
        if "upstreams" not in self._servers:
            self._servers["upstreams"] = self.nginx_ports("upstreams", {"/": f"return 200 '{UPSTREAM_BODY}';"},
                                                          ports=2)
        got: list[int] = self._servers["upstreams"]
        return got

    def dns(self) -> int:
        """The loopback DNS server of legacy_fixtures/upstreams, serving the SRV records."""
        if "dns" not in self._servers:
            zone = self.workdir / "zone.json"
            zone.write_text(json.dumps({
                "srv": {SRV_NAME: {"ttl": 5, "records": [[10, 50, port, SRV_TARGET] for port in self.upstreams()]}},
                "a": {SRV_TARGET: {"ttl": 5, "addresses": ["127.0.0.1"]}}}))
            p = self.procs.start("dns", [sys.executable, "-m", "legacy_fixtures.upstreams.dns_server",
                                         "--zone", str(zone)])
            self._servers["dns"] = _listening_port(p)
        return int(self._servers["dns"])

    def ambassador(self) -> int:
        """The sidecar with one HTTP route to the SRV name, its resolver the loopback DNS."""
        if "ambassador" not in self._servers:
            port = free_port()
            sc = self.launch_sidecar("ambassador", AMBASSADOR / "adaptercar.yaml",
                                     {"BENCH_DNS_PORT": str(self.dns()), "BENCH_ROUTE_PORT": str(port),
                                      "BENCH_SRV_NAME": SRV_NAME})
            wait_get(port, "/", UPSTREAM_BODY.encode(), "ambassador", sc.started)
            self._servers["ambassador"] = (sc, port)
        got: tuple[Sidecar, int] = self._servers["ambassador"]
        return got[1]

    def ambassador_sidecar(self) -> Sidecar:
        self.ambassador()
        got: tuple[Sidecar, int] = self._servers["ambassador"]
        return got[0]

    def haproxy(self) -> tuple[Started, int]:
        """HAProxy (one thread) with the same SRV name from the same DNS server."""
        if "haproxy" not in self._servers:
            port = free_port()
            cfg = self.workdir / "haproxy.cfg"
            cfg.write_text(HAPROXY_CFG.format(dns=self.dns(), port=port, srv=SRV_NAME,
                                              n=len(self.upstreams())))
            p = self.procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
            wait_get(port, "/", UPSTREAM_BODY.encode(), "haproxy", p)
            self._servers["haproxy"] = (p, port)
        got: tuple[Started, int] = self._servers["haproxy"]
        return got

    def http_load(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.wrk(f"http://127.0.0.1:{port}/", duration or self.s.duration)

    def http_at_rate(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.h2load(f"http://127.0.0.1:{port}/", duration or self.s.duration, self._log(),
                           clients=1, h1=True, rps_per_client=self.s.rate)

    # -- gRPC → stdio ---------------------------------------------------------------------------
    def stdio_sidecar(self) -> Sidecar:
        if "stdio-sidecar" not in self._servers:
            sc = self.launch_sidecar("stdio-sidecar", STDIO / "adaptercar.yaml", {})
            check_grpc_bytes(sc.grpc, "sidecar (stdio)", ECHO_PATH, self.echo_request, ECHO_MESSAGE)
            self._servers["stdio-sidecar"] = sc
        got: Sidecar = self._servers["stdio-sidecar"]
        return got

    def stdio_floor(self) -> tuple[Started, int]:
        if "grpcaio-stdio-floor" not in self._servers:
            p = self.procs.start("grpcaio-stdio-floor", [sys.executable, str(FLOORS / "grpcaio_stdio.py"), "--port",
                                                         "0", "--children", str(ECHO_CHILDREN), "--", "cat"])
            port = _listening_port(p)
            check_grpc_bytes(port, "grpc.aio stdio floor", ECHO_PATH, self.echo_request, ECHO_MESSAGE)
            self._servers["grpcaio-stdio-floor"] = (p, port)
        got: tuple[Started, int] = self._servers["grpcaio-stdio-floor"]
        return got

    def echo_load(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.h2load(f"http://127.0.0.1:{port}{ECHO_PATH}", duration or self.s.duration, self._log(),
                           clients=4, streams=8, data=self.echo_request, headers=load.GRPC_HEADERS,
                           body_bytes=len(load.grpc_frame(ECHO_MESSAGE)))

    def direct_stdio_load(self, duration: int | None = None) -> LoadCommand:
        return load.direct_stdio(ECHO_TEXT, ["cat"], ECHO_CHILDREN, duration or self.s.duration)

    # -- loads -------------------------------------------------------------------------------
    def _log(self) -> Path:
        self._h2log += 1
        return self.workdir / f"h2load-{self._h2log}.log"

    def json_load(self, port: int, duration: int | None = None, path: str = JSON_PATH) -> LoadCommand:
        return load.wrk(f"http://127.0.0.1:{port}{path}", duration or self.s.duration)

    def soap_load(self, port: int, duration: int | None = None) -> LoadCommand:
        """The envelope the sidecar sends, POSTed straight to the canned SOAP server."""
        return load.wrk(f"http://127.0.0.1:{port}{SOAP_PATH}", duration or self.s.duration,
                        post=self.soap_request, content_type="text/xml; charset=utf-8")

    def grpc_load(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.h2load(f"http://127.0.0.1:{port}{GRPC_PATH}", duration or self.s.duration, self._log(),
                           clients=4, streams=8, data=self.grpc_request, headers=load.GRPC_HEADERS,
                           body_bytes=self.grpc_reply_bytes)

    def direct_load(self, duration: int | None = None, rate: float | None = None) -> LoadCommand:
        return load.direct(self.memcached(), KEY, len(VALUE), FLAGS, duration or self.s.duration,
                           conns=1 if rate else 4, depth=8, rate=rate)

    # At a fixed rate, one load-generator connection: h2load starts every client's rate timer at
    # the same instant, so N clients send bursts of N requests, and the queueing inside each
    # burst (measured: p50 0.45 ms with 1 client, 2.7 ms with 10, same total rate) would be
    # charged to the server. gRPC may overlap calls on its one connection (8 streams).
    def json_at_rate(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.h2load(f"http://127.0.0.1:{port}{JSON_PATH}", duration or self.s.duration, self._log(),
                           clients=1, h1=True, rps_per_client=self.s.rate)

    def grpc_at_rate(self, port: int, duration: int | None = None) -> LoadCommand:
        return load.h2load(f"http://127.0.0.1:{port}{GRPC_PATH}", duration or self.s.duration, self._log(),
                           clients=1, streams=8, data=self.grpc_request, headers=load.GRPC_HEADERS,
                           rps_per_client=self.s.rate, body_bytes=self.grpc_reply_bytes)

    # -- pairing -----------------------------------------------------------------------------
    def paired(self, subjects: Sequence[Subject]) -> dict[str, list[list[Measure]]]:
        """Run A B C A B C … `repeat` times; per subject, per load command, every run's Measure.

        A subject's first run is preceded by `warmup` seconds of the same load, unmeasured,
        so pools are connected and caches warm. Runs with errors make the whole pairing fail:
        figures from a server that answered errors are not throughput.
        """
        if self.s.warmup > 0:
            for sub in subjects:
                load.run_together(sub.loads(self.s.warmup))
                load.settle()
        out: dict[str, list[list[Measure]]] = {sub.label: [] for sub in subjects}
        for _ in range(self.s.repeat):
            for sub in subjects:
                pids = sub.pids() if sub.pids else []
                cpu0 = cpu_seconds(pids)
                ms = load.run_together(sub.loads(self.s.duration))
                cpu = cpu_seconds(pids) - cpu0
                for m in ms:
                    if m.errors:
                        raise BenchError(f"{sub.label}: {m.errors} failed requests in a {m.tool} run")
                    if m.requests == 0:
                        raise BenchError(f"{sub.label}: no request succeeded in a {m.tool} run")
                ms = [replace(m, cpu_seconds=cpu) if sub.pids else m for m in ms]
                out[sub.label].append(ms)
                figures = "; ".join(f"{m.rps:,.0f} req/s p50 {m.p50_ms:.2f} p99 {m.p99_ms:.2f} ms" for m in ms)
                print(f"   {sub.label}: {figures}", flush=True)
                load.settle()
        return out

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def check(self, target: str, value: float, limit: float, at_most: bool, unit: str = "") -> None:
        self.checks.append(Check(target, value, limit, at_most, unit))

    def stop(self) -> None:
        self.procs.stop_all()
        self._servers.clear()


def tree_of(started: Started) -> Callable[[], list[int]]:
    return lambda: process_tree(started.pid)


def _listening_port(p: Started, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in p.log.read_text(errors="replace").splitlines():
            if line.startswith("LISTENING "):
                return int(line.rsplit(":", 1)[1])
        if p.proc.poll() is not None:
            raise BenchError(f"{p.name} exited {p.proc.returncode}:\n{p.tail()}")
        time.sleep(0.05)
    raise BenchError(f"{p.name} did not start listening within {timeout:.0f}s:\n{p.tail()}")


def _wait_ready(sc: Sidecar, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sc.started.proc.poll() is not None:
            raise BenchError(f"the sidecar exited {sc.started.proc.returncode}:\n{sc.started.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{sc.admin}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise BenchError(f"the sidecar was not ready within {timeout:.0f}s:\n{sc.started.tail()}")


# -- answers are checked before any load: a fast error is not throughput --------------------------
EXPECTED_JSON = {"key": KEY, "flags": FLAGS, "value": VALUE}


def check_json(port: int, who: str, path: str = JSON_PATH, expected: Any = None) -> None:
    expected = EXPECTED_JSON if expected is None else expected
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError as e:
        raise BenchError(f"{who}: GET {url} failed: {e}") from None
    try:
        got = json.loads(body)
    except ValueError:
        got = body[:200]
    if status != 200 or got != expected:
        raise BenchError(f"{who}: GET {url} answered {status} {got!r}, expected 200 {expected!r}")


def wait_get(port: int, path: str, expected: bytes, who: str, p: Started, timeout: float = 30.0) -> None:
    """Until GET answers 200 with `expected`: a proxy answers 503 until discovery has run."""
    url = f"http://127.0.0.1:{port}{path}"
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        if p.proc.poll() is not None:
            raise BenchError(f"{who} exited {p.proc.returncode}:\n{p.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                status, got = r.status, r.read()
            if status == 200 and got == expected:
                return
            last = f"{status} {got[:200]!r}"
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read()[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    raise BenchError(f"{who}: GET {url} did not answer 200 {expected!r} within {timeout:.0f}s "
                     f"(last: {last}):\n{p.tail()}")


def check_post(port: int, path: str, body_file: Path, expected: bytes, who: str) -> None:
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url, data=body_file.read_bytes(), method="POST",
                                 headers={"Content-Type": "text/xml; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, got = r.status, r.read()
    except OSError as e:
        raise BenchError(f"{who}: POST {url} failed: {e}") from None
    if status != 200 or got != expected:
        raise BenchError(f"{who}: POST {url} answered {status} {got[:300]!r}, expected 200 {expected[:300]!r}")


_kv: Any = None


def _kv_messages() -> Any:
    """kv.v1 message classes, generated from the benchmark's proto at run time."""
    global _kv
    if _kv is None:
        import grpc

        sys.path.insert(0, str(KV / "protos"))
        try:
            _kv = grpc.protos("kv/v1/kv.proto")  # type: ignore[attr-defined]
        finally:
            sys.path.remove(str(KV / "protos"))
    return _kv


def _get_request_bytes(key: str) -> bytes:
    return bytes(_kv_messages().GetRequest(key=key).SerializeToString())


def _get_reply_bytes() -> bytes:
    return bytes(_kv_messages().GetReply(**EXPECTED_JSON).SerializeToString())


def check_grpc(port: int, who: str, request_file: Path) -> None:
    """A real grpcio call, then the exact bytes h2load will send, through nghttp: grpc-status
    errors come as HTTP 200, so h2load's own count of successes cannot tell them apart."""
    import grpc

    kv = _kv_messages()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(GRPC_PATH, request_serializer=kv.GetRequest.SerializeToString,
                              response_deserializer=kv.GetReply.FromString)
        try:
            reply = stub(kv.GetRequest(key=KEY), timeout=10)
        except grpc.RpcError as e:
            raise BenchError(f"{who}: gRPC Get failed: {e.code()} {e.details()}") from None
    got = {"key": reply.key, "flags": reply.flags, "value": reply.value}
    if got != EXPECTED_JSON:
        raise BenchError(f"{who}: gRPC Get answered {got!r}, expected {EXPECTED_JSON!r}")
    check_nghttp(port, who, GRPC_PATH, request_file)


def check_grpc_bytes(port: int, who: str, path: str, request_file: Path, expected: bytes) -> None:
    """check_grpc for a method whose messages are given as bytes (no generated classes)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(path)
        try:
            reply = stub(request_file.read_bytes()[5:], timeout=10)
        except grpc.RpcError as e:
            raise BenchError(f"{who}: gRPC {path} failed: {e.code()} {e.details()}") from None
    if reply != expected:
        raise BenchError(f"{who}: gRPC {path} answered {reply!r}, expected {expected!r}")
    check_nghttp(port, who, path, request_file)


def check_nghttp(port: int, who: str, path: str, request_file: Path) -> None:
    argv = ["nghttp", "-v", "-d", str(request_file)]
    for h in load.GRPC_HEADERS:
        argv += ["-H", h]
    argv.append(f"http://127.0.0.1:{port}{path}")
    try:
        out = subprocess.run(argv, capture_output=True, timeout=20).stdout.decode("latin-1")
    except subprocess.TimeoutExpired:
        raise BenchError(f"{who}: nghttp did not finish") from None
    if "grpc-status: 0" not in out:
        raise BenchError(f"{who}: the h2load request bytes do not get grpc-status 0:\n{out[-1500:]}")
