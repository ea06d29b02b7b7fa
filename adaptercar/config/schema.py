"""Typed, immutable models of adaptercar.yaml.

Validation runs with a context (see `load.validation_context`) that carries the config
file's folder: relative paths (protos, mappings, wsdl, keys, cwd, companion files) are joined
to it while validating, lexically (symlinks are kept: a Kubernetes ConfigMap mount swaps a
symlink, and a reload must follow it). Sections that are absent are None ("off").

Fields annotated with `SECRET` are shown as `***` by `redacted_dict` (admin `/config`).
Secrets in templates should be written `{env.NAME}` (rendered at send time, so `/config`
shows the template), not `${NAME}` (expanded at load time into the config itself).
"""

from __future__ import annotations

import codecs
import os
import re
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    NonNegativeInt,
    PlainValidator,
    PositiveInt,
    ValidationInfo,
    model_validator,
)

from adaptercar.config.mapping_schema import (
    Auth,
    Duration,
    PositiveDuration,
    Regex,
    Request,
    Response,
    Strict,
    Template,
    exactly_one,
    invalid,
)
from adaptercar.config.problems import describe

MiB = 1024 * 1024


class _Secret:
    """Marker: the field holds a secret (Annotated metadata, read by `redacted_dict`)."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _Secret()


def _number_as_text(value: object) -> object:
    # `PORT: 8080` in an environment or a log field means the text "8080".
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_number_as_text)]
"""A string where a YAML number is taken as its text (env values, log fields)."""


# --- paths --------------------------------------------------------------------------------

def _path_text(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise invalid("expected a path, got ''")
    return value


def _resolve(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    context = info.context
    base = context.get("base_dir") if isinstance(context, dict) else None
    if base is not None and not value.is_absolute():
        return Path(os.path.normpath(Path(base) / value))
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolve)]
"""A file or folder; relative to the config file's folder."""


def _path_or_url(value: object, info: ValidationInfo) -> Path | str:
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    if isinstance(value, str) and value.strip():
        return _resolve(Path(value), info)
    raise invalid(f"expected a path or an http(s):// URL, got {describe(value)}")


PathOrUrl = Annotated[Path | str, PlainValidator(_path_or_url)]
"""A local file (Path, resolved) or a URL (str)."""


# --- addresses ----------------------------------------------------------------------------

def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` / `[v6]:port` → (host, port); ValueError when it is not that shape."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(address)
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(address)
        host = host[1:-1]
    elif ":" in host or not host.strip() or any(c.isspace() for c in host):
        raise ValueError(address)
    number = int(port)
    if number > 65535:
        raise ValueError(address)
    return host, number


def _address(value: object, *, listen: bool) -> str:
    expected = "host:port or unix:/path"
    if not isinstance(value, str):
        raise invalid(f"expected an address ({expected}), got {describe(value)}")
    if value.startswith("unix:"):
        if not value[5:].strip():
            raise invalid(f"expected a socket path after 'unix:', got {value!r}")
        return value
    try:
        _, port = split_host_port(value)
    except ValueError:
        raise invalid(f"expected an address ({expected}), got {value!r}") from None
    if port == 0 and not listen:
        raise invalid(f"port 0 can only be used to listen, got {value!r}")
    return value


Address = Annotated[str, PlainValidator(lambda v: _address(v, listen=False))]
"""Where to connect: `host:port`, `[::1]:port` or `unix:/path`."""
ListenAddress = Annotated[str, PlainValidator(lambda v: _address(v, listen=True))]
"""Where to listen; port 0 picks a free port."""


def _encoding(value: object) -> str:
    if not isinstance(value, str):
        raise invalid(f"expected an encoding name such as latin-1, got {describe(value)}")
    try:
        codecs.lookup(value)
    except LookupError:
        raise invalid(f"unknown encoding {value!r} (any Python codec: utf-8, latin-1, "
                      "cp037, ...)") from None
    return value


Encoding = Annotated[str, PlainValidator(_encoding)]


# --- TLS ----------------------------------------------------------------------------------

class ServerTls(Strict):
    """A front's TLS: its certificate (chain, PEM) and key; with `client_ca`, every caller must
    present a certificate signed by one of those CAs (mTLS)."""

    cert: ConfigPath
    key: ConfigPath
    client_ca: ConfigPath | None = None


class ClientTls(Strict):
    """TLS towards an upstream: `ca` (PEM bundle; default: the system's CAs), an optional client
    certificate (`cert` + `key`), `server_name` (SNI and the name checked; default: the URL's
    host). `verify: false` skips every check (logged as a warning)."""

    ca: ConfigPath | None = None
    cert: ConfigPath | None = None
    key: ConfigPath | None = None
    server_name: str | None = Field(default=None, min_length=1)
    verify: bool = True

    @model_validator(mode="after")
    def _check(self) -> ClientTls:
        if (self.cert is None) != (self.key is None):
            raise invalid("'cert' and 'key' go together (the client certificate and its key)")
        return self


# --- fronts, admin, log -------------------------------------------------------------------

class Grpc(Strict):
    listen: ListenAddress
    reflection: bool = True
    max_message_bytes: PositiveInt = 4 * MiB
    tls: ServerTls | None = None


class Http(Strict):
    listen: ListenAddress
    max_body_bytes: PositiveInt = 4 * MiB
    tls: ServerTls | None = None
    read_timeout: PositiveDuration = 10.0
    """A request (line, headers, body) must arrive whole this long after its first byte: 408."""
    idle_timeout: PositiveDuration = 60.0
    """A connection with no request under way is closed after this long."""
    max_headers: PositiveInt = 100
    """Header fields per request; more: 431."""
    max_header_bytes: PositiveInt = 16384
    """Request line plus headers, in bytes; more: 431."""


class Admin(Strict):
    listen: ListenAddress = "127.0.0.1:9901"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Log(Strict):
    level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = "info"
    format: Literal["json", "text"] = "json"
    fields: dict[str, Text] = Field(default_factory=dict)


# --- backends -----------------------------------------------------------------------------

class Framing(Strict):
    """Exactly one of: `{delimiter: "\\r\\n"}`, `{length_prefix: 4}` (big-endian binary,
    1/2/4 bytes), `{length_prefix: 6, ascii: true}` (that many ASCII digits, zero-padded),
    `{fixed: 80}` (records of 80 bytes), `{stx_etx: true}` (0x02 payload 0x03).
    Length prefixes count the payload only."""

    delimiter: str | None = Field(default=None, min_length=1)
    length_prefix: PositiveInt | None = None
    ascii: bool = False
    fixed: PositiveInt | None = None
    stx_etx: bool = False

    @model_validator(mode="after")
    def _check(self) -> Framing:
        exactly_one("framing", {
            "delimiter": self.delimiter is not None,
            "length_prefix": self.length_prefix is not None,
            "fixed": self.fixed is not None,
            "stx_etx": self.stx_etx,
        })
        if self.ascii and self.length_prefix is None:
            raise invalid("'ascii' only goes with 'length_prefix'")
        if self.length_prefix is not None:
            if self.ascii and self.length_prefix > 10:
                raise invalid(f"an ASCII length prefix has 1 to 10 digits, "
                              f"got {self.length_prefix}")
            if not self.ascii and self.length_prefix not in (1, 2, 4):
                raise invalid(f"a binary length prefix has 1, 2 or 4 bytes, got "
                              f"{self.length_prefix} (add 'ascii: true' for decimal digits)")
        return self

    def delimiter_bytes(self, encoding: str) -> bytes | None:
        return self.delimiter.encode(encoding) if self.delimiter is not None else None


NEWLINE = Framing(delimiter="\n")


class Exchange(Strict):
    """One step after connecting: send a frame (template), optionally expect a reply."""

    send: Template
    expect: Regex | None = None


class Pool(Strict):
    """Per worker process. `pipeline` is in-flight requests per connection."""

    size: PositiveInt = 4
    pipeline: PositiveInt = 1
    idle_timeout: PositiveDuration | None = None
    """Close a connection idle this long; None: never."""
    max_age: PositiveDuration | None = None
    """Replace a connection this old once it is idle; None: never."""
    keepalive: bool = True
    max_waiting: NonNegativeInt = 256
    """Calls waiting for a connection beyond this fail fast (RESOURCE_EXHAUSTED)."""


class Probe(Strict):
    send: Template
    expect: Regex | None = None
    every: PositiveDuration = 10.0
    timeout: PositiveDuration | None = None
    """None: the backend's timeout."""


class _StreamBackend(Strict):
    """What line and process backends share: frames, encodings, bounds."""

    mode: Literal["pooled", "per-call"] = "pooled"
    encoding: Encoding = "utf-8"
    banner: Regex | None = None
    on_connect: tuple[Exchange, ...] = ()
    pool: Pool = Field(default_factory=Pool)
    timeout: PositiveDuration = 2.0
    max_line_bytes: PositiveInt = 65536
    max_reply_bytes: PositiveInt = MiB
    max_frames: PositiveInt = 10000
    max_concurrency: PositiveInt | None = None
    """Calls running at once per worker, then `queue` (deadline-aware shedding); None:
    pool.size × pool.pipeline when `queue` is set, else only the pool bounds calls."""
    queue: NonNegativeInt | None = None
    """Calls waiting for a slot per worker, then RESOURCE_EXHAUSTED; None: pool.max_waiting."""
    probe: Probe | None = None
    framing: Framing = NEWLINE

    @model_validator(mode="after")
    def _check_framing(self) -> _StreamBackend:
        framing = self.framing
        if framing.delimiter is not None:
            try:
                framing.delimiter.encode(self.encoding)
            except UnicodeEncodeError:
                raise invalid(f"the delimiter {framing.delimiter!r} cannot be written in "
                              f"encoding {self.encoding!r}") from None
        return self


class LineBackend(_StreamBackend):
    """A TCP (or unix socket) line-protocol server."""

    address: Address
    framing: Framing
    connect_timeout: PositiveDuration = 1.0


def _cwd(value: object, info: ValidationInfo) -> Path | None:
    if value is None:
        context = info.context
        base = context.get("base_dir") if isinstance(context, dict) else None
        return Path(base) if base is not None else None
    if isinstance(value, str) and value.strip():
        return _resolve(Path(value), info)
    raise invalid(f"expected a folder, got {describe(value)}")


class RestartBackoff(Strict):
    base: PositiveDuration = 0.1
    max: PositiveDuration = 10.0


class ProcessBackend(_StreamBackend):
    """A legacy binary on stdin/stdout. `banner`/`on_connect` run after each spawn."""

    command: tuple[str, ...] = Field(min_length=1)
    """argv as written; argv[0] is looked up on PATH."""
    cwd: Annotated[Path | None, PlainValidator(_cwd)] = Field(default=None, validate_default=True)
    """Default: the config file's folder (None only when validated without a context)."""
    env: Annotated[dict[str, Text], SECRET] = Field(default_factory=dict)
    """Added to the sidecar's environment. Values may be secrets: /config hides them."""
    restart: RestartBackoff = Field(default_factory=RestartBackoff)



class Wsse(Strict):
    username: str
    password: Annotated[str, SECRET]
    digest: bool = False
    """PasswordDigest instead of PasswordText."""


class BasicAuth(Strict):
    """HTTP basic authentication towards the service (an `Authorization` header per request)."""

    username: str
    password: Annotated[str, SECRET]


class SoapBackend(Strict):
    wsdl: PathOrUrl
    endpoint: str | None = None
    """Overrides the WSDL's address."""
    service: str | None = None
    """Optional when the WSDL has one service."""
    port: str | None = None
    """Picks the binding (SOAP 1.1 or 1.2); default: the first SOAP 1.1 port."""
    wsse: Wsse | None = None
    basic_auth: BasicAuth | None = None
    timeout: PositiveDuration = 2.0
    connect_timeout: PositiveDuration = 1.0
    pool: Pool = Field(default_factory=Pool)
    max_reply_bytes: PositiveInt = MiB
    max_concurrency: PositiveInt | None = None
    """Calls running at once per worker, then `queue`; None: pool.size when `queue` is set,
    else calls are not bounded."""
    queue: NonNegativeInt | None = None
    """Calls waiting for a slot per worker, then RESOURCE_EXHAUSTED; None: pool.max_waiting."""
    tls: ClientTls | None = None
    """For an https:// endpoint; without it, https uses the system's CAs."""

    @model_validator(mode="after")
    def _check_endpoint(self) -> SoapBackend:
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise invalid(f"endpoint must be an http:// or https:// URL, got {self.endpoint!r}")
        return self


BackendKind = Literal["line", "process", "soap"]


class Backend(Strict):
    line: LineBackend | None = None
    process: ProcessBackend | None = None
    soap: SoapBackend | None = None

    @model_validator(mode="after")
    def _check(self) -> Backend:
        exactly_one("a backend", {"line": self.line is not None,
                                  "process": self.process is not None,
                                  "soap": self.soap is not None})
        return self

    @property
    def kind(self) -> BackendKind:
        if self.line is not None:
            return "line"
        if self.process is not None:
            return "process"
        return "soap"

    @property
    def spec(self) -> LineBackend | ProcessBackend | SoapBackend:
        spec = self.line or self.process or self.soap
        assert spec is not None  # guaranteed by the validator
        return spec


# --- auth ---------------------------------------------------------------------------------

def _key_source(value: object, info: ValidationInfo) -> Path | str:
    if isinstance(value, str) and value.startswith("file:") and value[5:].strip():
        return _resolve(Path(value[5:]), info)
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return value
    raise invalid(f"expected file:PATH or an https:// JWKS URL, got {describe(value)}")


class Jwt(Strict):
    issuer: str | None = None
    audience: str | tuple[str, ...] | None = None
    keys: Annotated[Path | str | None, PlainValidator(_key_source)] = None
    """A JWKS: `file:PATH` (Path, resolved) or an https:// URL (str)."""
    secret: Annotated[str | None, SECRET] = None
    """Shared secret for HS* algorithms."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: Duration = 0.0

    @model_validator(mode="after")
    def _check(self) -> Jwt:
        exactly_one("jwt", {"keys": self.keys is not None, "secret": self.secret is not None})
        return self


class AuthConfig(Strict):
    jwt: Jwt
    default: Auth = "required"
    """For methods whose mapping does not say."""


# --- ambassador ---------------------------------------------------------------------------

def _host_port_default(value: object, default_port: int) -> str:
    if isinstance(value, str):
        try:
            split_host_port(value)
            return value
        except ValueError:
            if value.strip() and ":" not in value and not any(c.isspace() for c in value):
                return f"{value}:{default_port}"
    raise invalid(f"expected host or host:port, got {describe(value)}")


class Upstream(Strict):
    srv: str | None = None
    dns: Address | None = None
    static: tuple[Address, ...] | None = Field(default=None, min_length=1)
    tls: ClientTls | None = None
    """Speak HTTPS to the upstream (http routes only)."""

    @model_validator(mode="after")
    def _check(self) -> Upstream:
        exactly_one("upstream", {"srv": self.srv is not None, "dns": self.dns is not None,
                                 "static": self.static is not None})
        return self


class Resolver(Strict):
    nameservers: tuple[
        Annotated[str, PlainValidator(lambda v: _host_port_default(v, 53))], ...
    ] = ()
    """`host` or `host:port`; empty: the system resolver."""
    min_ttl: Duration = 1.0
    max_ttl: Duration = 60.0
    timeout: PositiveDuration = 2.0


class Backoff(Strict):
    base: PositiveDuration = 0.025
    max: PositiveDuration = 1.0


class Budget(Strict):
    ratio: float = Field(default=0.2, ge=0)
    min_per_second: float = Field(default=10.0, ge=0)


RETRY_CONDITIONS = ("connect-failure", "reset")


def _retry_condition(value: object) -> str | int:
    if isinstance(value, str) and value in RETRY_CONDITIONS:
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    raise invalid("expected connect-failure, reset or an HTTP status 4xx/5xx, "
                  f"got {describe(value)}")


_METHOD = re.compile(r"^[A-Z]+$")


def _http_method(value: object) -> str:
    if isinstance(value, str) and _METHOD.match(value.upper()):
        return value.upper()
    raise invalid(f"expected an HTTP method such as GET, got {describe(value)}")


class Retry(Strict):
    attempts: PositiveInt = 3
    """Every try counts, the first included."""
    backoff: Backoff = Field(default_factory=Backoff)
    on: tuple[Annotated[str | int, PlainValidator(_retry_condition)], ...] = (
        "connect-failure", "reset", 502, 503, 504)
    budget: Budget = Field(default_factory=Budget)
    methods: tuple[Annotated[str, PlainValidator(_http_method)], ...] = (
        "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE")


class CircuitBreaker(Strict):
    failures: PositiveInt = 5
    reset: PositiveDuration = 30.0


def _host_header(value: object) -> str:
    if isinstance(value, str) and value and value.isascii() and value.isprintable() \
            and " " not in value:
        return value
    raise invalid("expected keep, upstream or a host name such as api.example.com, "
                  f"got {describe(value)}")


class Route(Strict):
    name: str = Field(min_length=1)
    listen: ListenAddress
    protocol: Literal["http", "tcp"] = "http"
    upstream: Upstream
    resolver: Resolver | None = None
    timeout: PositiveDuration = 10.0
    """The whole call, retries included."""
    per_try_timeout: PositiveDuration | None = None
    connect_timeout: PositiveDuration = 1.0
    host_header: Annotated[str, PlainValidator(_host_header)] = "keep"
    """`keep` the caller's Host (as Envoy and HAProxy do), `upstream`: the endpoint's name,
    or a literal name."""
    retry: Retry = Field(default_factory=Retry)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)

    @model_validator(mode="after")
    def _check_tls(self) -> Route:
        if self.upstream.tls is not None and self.protocol != "http":
            raise invalid("'upstream.tls' needs protocol: http (tcp routes pass bytes through)")
        return self


# --- companion ----------------------------------------------------------------------------

class CompanionLog(Strict):
    path: ConfigPath
    parse: Regex | None = None
    fields: dict[str, Text] = Field(default_factory=dict)
    max_line_bytes: PositiveInt = 65536
    from_: Literal["end", "start"] = Field(default="end", alias="from")
    """Where reading the file there at start begins; a file that appears later is read whole."""


class CompanionStats(Strict):
    backend: str
    every: PositiveDuration = 10.0
    request: Request
    response: Response
    metric: Template = "legacy_{name}"
    include: tuple[str, ...] | None = None


def _signal(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        member = getattr(signal.Signals, name, None)
        if member is not None:
            return int(member)
    raise invalid(f"expected a signal name such as HUP, got {describe(value)}")


class OnChange(Strict):
    signal: Annotated[int | None, PlainValidator(_signal)] = None
    """Signal number (written as a name: HUP, USR1, ...)."""
    pidfile: ConfigPath | None = None
    restart: str | None = None
    """A backend name: its children / connections are restarted."""
    command: tuple[str, ...] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OnChange:
        exactly_one("on_change", {"signal": self.signal is not None,
                                  "restart": self.restart is not None,
                                  "command": self.command is not None})
        if self.signal is not None and self.pidfile is None:
            raise invalid("'signal' needs 'pidfile' (the file holding the process id)")
        return self


class CompanionConfig(Strict):
    template: ConfigPath
    values: tuple[ConfigPath, ...] = ()
    output: ConfigPath
    on_change: OnChange | None = None


class Companion(Strict):
    logs: tuple[CompanionLog, ...] = ()
    stats: tuple[CompanionStats, ...] = ()
    config: tuple[CompanionConfig, ...] = ()


# --- process model ------------------------------------------------------------------------

class Workers(Strict):
    """Worker processes per front. The ambassador runs once: its breakers, budgets and route
    listeners are per process, and N of them would each allow the whole budget."""

    grpc: PositiveInt = 1
    http: PositiveInt = 1
    ambassador: Literal[1] = 1


class Shutdown(Strict):
    drain_timeout: Duration = 10.0


# --- the whole file -----------------------------------------------------------------------

class Config(Strict):
    grpc: Grpc | None = None
    http: Http | None = None
    admin: Admin | None = None
    protos: tuple[ConfigPath, ...] = ()
    mappings: tuple[ConfigPath, ...] = ()
    log: Log = Field(default_factory=Log)
    backends: dict[str, Backend] = Field(default_factory=dict)
    auth: AuthConfig | None = None
    ambassador: tuple[Route, ...] = ()
    companion: Companion | None = None
    workers: Workers = Field(default_factory=Workers)
    shutdown: Shutdown = Field(default_factory=Shutdown)

    @model_validator(mode="after")
    def _check_workers(self) -> Config:
        """Workers of a front share its port: each binds it, so it must be a fixed TCP port."""
        for role in ("grpc", "http"):
            section, count = getattr(self, role), getattr(self.workers, role)
            if section is None or count < 2:
                continue
            if section.listen.startswith("unix:") or split_host_port(section.listen)[1] == 0:
                raise invalid(f"workers.{role} is {count}: they share {role}.listen, which must "
                              f"then be a fixed TCP port, got {section.listen!r}")
        return self


# --- /config ------------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@/\s]*(@)")


def _is_secret(field: Any) -> bool:
    return any(isinstance(item, _Secret) for item in field.metadata)


def _redact(model: BaseModel, dumped: dict[str, Any]) -> None:
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        value = getattr(model, name)
        if key not in dumped or value is None:
            continue
        if _is_secret(field):
            if isinstance(value, dict):
                dumped[key] = {k: "***" for k in value}
            else:
                dumped[key] = "***"
        elif isinstance(value, BaseModel):
            _redact(value, dumped[key])
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _redact(item, dumped[key][index])
        elif isinstance(value, dict):
            for item_key, item in value.items():
                if isinstance(item, BaseModel):
                    _redact(item, dumped[key][item_key])


def _redact_urls(node: Any) -> Any:
    if isinstance(node, str):
        return _URL_PASSWORD.sub(r"\1***\2", node)
    if isinstance(node, dict):
        return {k: _redact_urls(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_urls(v) for v in node]
    return node


def redacted_dict(config: BaseModel) -> dict[str, Any]:
    """The effective config as JSON-ready data, secrets (and URL passwords) as `***`."""
    dumped = config.model_dump(mode="json", by_alias=True)
    _redact(config, dumped)
    result: dict[str, Any] = _redact_urls(dumped)
    return result
