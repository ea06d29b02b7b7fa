"""Real processes on real loopback sockets: the ledger fixture and the sidecar.

Tests start the fixture and the sidecar as subprocesses exactly as users do, talk to them
with real gRPC and HTTP clients, and read their JSON logs and metrics.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
          every: float = 0.05) -> Any:
    """Poll until check() is truthy and return its value: what the sidecar does in the
    background (a reload, a restart, a log line) shows up after a while, not at once."""
    end = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError as e:  # e.g. a socket met between two workers: not yet
            value = e
        if value and not isinstance(value, OSError):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not {what} after {timeout}s (last: {value!r})")
        time.sleep(every)


def refused(port: int) -> bool:
    """Whether a connection to the port is refused now. A timeout is not a refusal: a stopping
    JSON listener drops SYNs for a moment (runtime/handshakes.py), and refuses at the retry."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False


_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port never handed out before in this test run: the kernel may offer
    the same ephemeral port twice while nothing listens on it yet."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def env_with_root(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra or {})
    return env


@dataclass
class Ledger:
    proc: subprocess.Popen[bytes]
    port: int
    journal: Path | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def journal_lines(self) -> list[str]:
        if self.journal is None or not self.journal.exists():
            return []
        return self.journal.read_text().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ledger(tmp: Path, *args: str, port: int = 0, journal: bool = True) -> Ledger:
    jpath = tmp / f"journal-{time.monotonic_ns()}.txt" if journal else None
    argv = [sys.executable, "-m", "legacy_fixtures.ledger", "--port", str(port), "--test-commands"]
    if jpath is not None:
        argv += ["--journal", str(jpath)]
    argv += list(args)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_with_root(), cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("LISTENING"):
        proc.kill()
        raise RuntimeError(f"ledger did not start: {line!r} {proc.stderr.read() if proc.stderr else b''!r}")
    return Ledger(proc, int(line.rsplit(":", 1)[1]), jpath)


def ledger_backend(address: str, **overrides: Any) -> dict[str, Any]:
    """A `line` backend block for the ledger, as the demo config has it."""
    line: dict[str, Any] = {
        "address": address,
        "framing": {"delimiter": "\r\n"},
        "encoding": "latin-1",
        "banner": "^LEDGER READY",
        "on_connect": [{"send": "LOGIN demo demo", "expect": "^OK"}],
        "pool": {"size": 2, "pipeline": 1},
        "timeout": "2s",
        "connect_timeout": "500ms",
    }
    line.update(overrides)
    return {"line": line}


@dataclass
class Sidecar:
    tmp: Path
    config: dict[str, Any]
    single_process: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.tmp / "adaptercar.yaml"

    def write_config(self) -> None:
        cfg = dict(self.config)
        for role in ("grpc", "http", "admin"):
            if role in cfg and cfg[role] is not None and "listen" not in cfg[role]:
                self.ports.setdefault(role, free_port())
                cfg[role] = {**cfg[role], "listen": f"127.0.0.1:{self.ports[role]}"}
            elif role in cfg and cfg[role] is not None:
                self.ports[role] = int(cfg[role]["listen"].rsplit(":", 1)[1])
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> Sidecar:
        self.write_config()
        self.log_path = self.tmp / f"sidecar-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "adaptercar.cli", "run", "-c", str(self.config_path)]
        if self.single_process:
            argv.append("--single-process")
        self.proc = subprocess.Popen(argv, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env=env_with_root(self.extra_env), cwd=ROOT)
        self.wait(ready=wait_ready, timeout=timeout)
        return self

    def wait(self, ready: bool = True, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                status, body = self.admin("/readyz")
                workers = body.get("workers", {}) if isinstance(body, dict) else {}
                listening = workers and all(w.get("listening") for w in workers.values())
                if (ready and status == 200) or (not ready and listening):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sidecar not {'ready' if ready else 'listening'} after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    # -- clients --------------------------------------------------------------------------
    def http(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None, port_role: str = "http", timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[port_role]}{path}", data=data, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                payload = r.read()
                hdrs = {k.lower(): v for k, v in r.headers.items()}
                status = r.status
        except urllib.error.HTTPError as e:
            payload = e.read()
            hdrs = {k.lower(): v for k, v in e.headers.items()}
            status = e.code
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
        return status, parsed, hdrs

    def admin(self, path: str, method: str = "GET") -> tuple[int, Any]:
        status, body, _ = self.http(method, path, port_role="admin", timeout=5)
        return status, body

    def metrics(self) -> str:
        status, body = self.admin("/metrics")
        assert status == 200
        return str(body)

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def grpc_client(self) -> GrpcClient:
        return GrpcClient(f"127.0.0.1:{self.ports['grpc']}")


class GrpcClient:
    """A real grpcio client using message classes compiled from the repo's protos."""

    _protoset: Any = None

    def __init__(self, target: str) -> None:
        import grpc

        from adaptercar.protos import compile_protos

        if GrpcClient._protoset is None:
            GrpcClient._protoset = compile_protos([ROOT / "protos"])
        self.ps = GrpcClient._protoset
        self.channel = grpc.insecure_channel(target)

    def call(self, full_method: str, timeout: float = 10.0, metadata: Any = None, **fields: Any) -> Any:
        service, method = full_method.rsplit(".", 1)
        md = self.ps.services()[service].methods_by_name[method]
        req_cls = self.ps.message_class(md.input_type)
        resp_cls = self.ps.message_class(md.output_type)
        stub = self.channel.unary_unary(f"/{service}/{method}", request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)
        return stub(req_cls(**fields), timeout=timeout, metadata=metadata)

    def close(self) -> None:
        self.channel.close()


def demo_like_config(ledger_address: str, **backend_overrides: Any) -> dict[str, Any]:
    return {
        "grpc": {},
        "http": {},
        "admin": {},
        "protos": [str(ROOT / "protos")],
        "mappings": [str(ROOT / "mappings" / "ledger.yaml")],
        "log": {"level": "info", "fields": {"service": "test"}},
        "backends": {"ledger": ledger_backend(ledger_address, **backend_overrides)},
        "shutdown": {"drain_timeout": "5s"},
    }


# The echo service over the ledger fixture's test commands (ECHO, EXTRA, SLOW, SILENT, BIG),
# shared by the line-backend and hot-path tests.
ECHO_PROTO = """\
syntax = "proto3";
package echo.v1;
import "google/api/annotations.proto";

service Echo {
  rpc Echo(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/echo" body: "*"}; }
  rpc Extra(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/extra" body: "*"}; }
  rpc Slow(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/slow" body: "*"}; }
  rpc Silent(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/silent" body: "*"}; }
  rpc Hang(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/hang" body: "*"}; }
  rpc Strict(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/strict" body: "*"}; }
  rpc Big(EchoRequest) returns (EchoReply) { option (google.api.http) = {post: "/v1/big" body: "*"}; }
}

message EchoRequest {
  string text = 1;
  int32 ms = 2;
  int32 n = 3;
}

message EchoReply {
  string text = 1;
}
"""

ECHO_MAPPING = """\
service: echo.v1.Echo
backend: ledger
methods:
  Echo:
    idempotent: true
    request: "ECHO {text}"
    response: [{match: '^OK (?P<text>.*)$', fields: {text: "{text}"}}]
  Extra:
    request: "EXTRA ECHO {text}"
    response: [{match: '^OK (?P<text>.*)$', fields: {text: "{text}"}}]
  Slow:
    request: "SLOW {ms} ECHO {text}"
    response: [{match: '^OK (?P<text>.*)$', fields: {text: "{text}"}}]
  Silent:
    request: "SILENT"
    response: [{match: '^OK (?P<text>.*)$', fields: {text: "{text}"}}]
  Hang:
    timeout: 1s                  # the method's own timeout, shorter than the backend's
    request: "SILENT"
    response: [{match: '^OK (?P<text>.*)$', fields: {text: "{text}"}}]
  Strict:
    # only lower-case words fit: anything else the fixture echoes is an unknown reply
    request: "ECHO {text}"
    response: [{match: '^OK (?P<text>[a-z]+)$', fields: {text: "{text}"}}]
  Big:
    request: "BIG {n}"
    response: [{match: '^OK (?P<text>x*)$', fields: {text: "{text}"}}]
"""
