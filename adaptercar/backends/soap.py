"""A SOAP backend: compiled plans (or zeep) build and read envelopes, a lean HTTP/1.1 client
carries them.

zeep's own transport (`requests`) blocks, so it is used only to load the WSDL, once per config
load and before the reactor runs (or in the reload thread). Per call, the operation's compiled
plan (or zeep's `binding._create`, which also yields SOAPAction / Content-Type and applies
WS-Security) renders the envelope, the bytes go out on a persistent connection of the
backend's `http_pool.HttpPool` (HTTP/1.1 from the sans-IO `mapping.http11`, which replaced
Twisted's `Agent`: measured as most of the JSON worker's time on this path), and the reply,
read with a bound on its size, is parsed by the hardened reader in `mapping.soap_operation`
and handed to the compiled reader (or zeep's). A timeout closes the connection, so a late reply
can never be read by the next call.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from ..mapping.errors import CallError, Code
from ..mapping.http11 import HttpError, Reply, ReplyTooLarge, request_bytes
from ..mapping.soap_compiled import Fallback, compile_binding
from ..mapping.soap_operation import SOAP11, SOAP12, FaultInfo, read_reply
from .http_pool import HttpPool, NoReply, Timeout, describe

# External references are decided by `_offline_transport`, not refused wholesale by zeep, so that
# standard schemas imported by URL resolve to the local copies below.
SECURITY_SETTINGS = {"xml_huge_tree": False, "forbid_dtd": True, "forbid_entities": True,
                     "forbid_external": False}

_SCHEMAS = Path(__file__).with_name("schemas")
#: Standard schemas WSDLs import by URL, served from local copies: nothing is fetched.
STANDARD_SCHEMAS = {
    "schemas.xmlsoap.org/soap/encoding": _SCHEMAS / "soap-encoding.xsd",
    "www.w3.org/2001/xml.xsd": _SCHEMAS / "xml.xsd",
}


def _offline_transport(wsdl: str) -> Any:
    """A zeep transport that serves the standard schemas locally and fetches nothing else from
    the network unless the WSDL itself was named by URL (the user asked for the network then)."""
    from urllib.parse import urlparse

    import zeep

    remote_ok = urlparse(wsdl).scheme in ("http", "https")

    class OfflineTransport(zeep.Transport):  # type: ignore[misc]
        def load(self, url: str) -> bytes:
            parts = urlparse(url)
            if parts.scheme in ("http", "https"):
                local = STANDARD_SCHEMAS.get((parts.netloc + parts.path).rstrip("/"))
                if local is not None:
                    return local.read_bytes()
                if not remote_ok:
                    raise WsdlError(f"it imports {url}, which is not fetched (adaptercar reads "
                                    f"no schema from the network): save it next to the WSDL "
                                    f"and import it by a relative schemaLocation")
            return super().load(url)  # type: ignore[no-any-return]

    return OfflineTransport()


class WsdlError(ValueError):
    """The WSDL cannot be loaded or does not have what the config names; `key` is the
    config key to blame (wsdl, service, port, endpoint)."""

    def __init__(self, message: str, key: str = "wsdl") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class SoapSpec:
    name: str
    wsdl: str
    endpoint: str | None
    service: str | None
    port: str | None
    wsse: tuple[str, str, bool] | None
    timeout: float
    connect_timeout: float
    pool_size: int
    max_reply_bytes: int
    tls: Any = None  # tls.ClientMaterial: `tls:` of an https endpoint
    basic_auth: tuple[str, str] | None = None


@dataclass(eq=False)
class WsdlBinding:
    """The loaded WSDL: zeep client + the chosen port's binding, endpoint and SOAP version."""

    client: Any
    binding: Any
    address: str
    soap_ns: str
    service: str
    port: str
    operations: dict[str, Any] = field(default_factory=dict)
    lone_inputs: dict[str, str] = field(default_factory=dict)
    """Operation → the element of its lone simple-typed input part (see `LonePart`)."""
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """`{namespace}name` of a simple type → its xsd:enumeration values (zeep drops facets)."""


def load_wsdl(spec: SoapSpec, first_service: bool = False) -> WsdlBinding:
    """Blocking (zeep reads files and URLs with `requests`): call at config load only.
    `first_service`: with no service named, take the first instead of asking for one."""
    import zeep
    from zeep.exceptions import Error as ZeepError
    from zeep.wsdl.bindings.soap import Soap12Binding, SoapBinding

    wsse = None
    if spec.wsse is not None:
        from zeep.wsse.username import UsernameToken

        wsse = UsernameToken(spec.wsse[0], spec.wsse[1], use_digest=spec.wsse[2])
    try:
        client = zeep.Client(spec.wsdl, wsse=wsse, settings=zeep.Settings(**SECURITY_SETTINGS),
                             transport=_offline_transport(spec.wsdl))
    except WsdlError as e:
        raise WsdlError(f"cannot load WSDL {spec.wsdl}: {e}") from e
    except (OSError, ZeepError, ValueError) as e:
        raise WsdlError(f"cannot load WSDL {spec.wsdl}: {' '.join(str(e).split())}") from e
    except Exception as e:  # noqa: BLE001 - lxml/requests errors of every kind: one clear line
        raise WsdlError(f"cannot load WSDL {spec.wsdl}: {type(e).__name__}: {e}") from e
    services = client.wsdl.services
    if spec.service is not None:
        svc = services.get(spec.service)
        if svc is None:
            raise WsdlError(f"WSDL has no service {spec.service!r} (services: {', '.join(services)})",
                            "service")
    elif len(services) == 1 or (first_service and services):
        svc = next(iter(services.values()))
    else:
        raise WsdlError(f"WSDL has several services ({', '.join(services)}): name one with 'service'")
    soap_ports = {n: p for n, p in svc.ports.items() if isinstance(p.binding, SoapBinding)}
    if spec.port is not None:
        port = soap_ports.get(spec.port)
        if port is None:
            raise WsdlError(f"service {svc.name} has no SOAP port {spec.port!r} "
                            f"(ports: {', '.join(soap_ports) or 'none'})", "port")
    else:
        ordered = sorted(soap_ports.values(), key=lambda p: isinstance(p.binding, Soap12Binding))
        if not ordered:
            raise WsdlError(f"service {svc.name} has no SOAP port", "service" if spec.service else "wsdl")
        port = ordered[0]
    address = spec.endpoint or port.binding_options.get("address") or ""
    if not address.startswith(("http://", "https://")):
        raise WsdlError(f"port {port.name} has no http(s) address; set 'endpoint'", "wsdl")
    binding = port.binding
    ns = SOAP12 if isinstance(binding, Soap12Binding) else SOAP11
    operations = dict(binding._operations)
    optional_any(operations.values())
    lone = {name: part.name for name, op in operations.items()
            if (part := lone_part(op, "input")) is not None}
    return WsdlBinding(client, binding, address, ns, svc.name, port.name,
                       operations, lone, _enumerations(client))


def optional_any(operations: Any) -> None:
    """Make every xsd:any of the requests optional, in this load's own zeep schema.

    A proto cannot express elements of any name, so the mapping never fills an xsd:any; zeep
    would refuse to render a request whose any is required ("Missing element for Any"), which
    would make every call of such an operation fail. It is sent empty instead: an extension
    point left unused, which is what such services accept when they accept a request at all."""
    from zeep.xsd.elements import Any as AnyElement

    seen: set[int] = set()
    todo = [getattr(getattr(op.input, "body", None), "type", None) for op in operations]
    while todo:
        typ = todo.pop()
        if typ is None or id(typ) in seen:
            continue
        seen.add(id(typ))
        for _name, el in getattr(typ, "elements", ()):
            if isinstance(el, AnyElement):
                el.min_occurs = 0
            else:
                todo.append(getattr(el, "type", None))


_XSD = "{http://www.w3.org/2001/XMLSchema}"


def _enumerations(client: Any) -> dict[str, tuple[str, ...]]:
    """Every enumerated simple type of the WSDL's schemas, read again with lxml because zeep
    keeps no facets: named types by `{tns}name`, anonymous ones by their element's name."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    transport = client.transport
    out: dict[str, tuple[str, ...]] = {}
    todo = [(d._location, d._target_namespace) for d in client.wsdl.types.documents if d._location]
    seen: set[str] = set()
    while todo:
        location, tns = todo.pop()
        if location in seen:
            continue
        seen.add(location)
        try:
            root = etree.fromstring(transport.load(location), parser)
        except Exception:  # noqa: BLE001 - zeep read it already; enumerations are a bonus
            continue
        for schema in root.iter(f"{_XSD}schema"):  # the root itself, or a WSDL's inline ones
            ns = schema.get("targetNamespace", tns)
            for st in schema.iter(f"{_XSD}simpleType"):
                values = tuple(e.get("value", "") for e in st.iterfind(
                    f"{_XSD}restriction/{_XSD}enumeration"))
                parent = st.getparent()
                name = st.get("name") or (parent.get("name") if parent is not None else None)
                if values and name:
                    out[f"{{{ns}}}{name}"] = values
            for inc in schema.iter(f"{_XSD}include", f"{_XSD}import"):
                loc = inc.get("schemaLocation")
                if loc:
                    from zeep.loader import absolute_location

                    todo.append((absolute_location(loc, location),
                                 ns if inc.tag == f"{_XSD}include" else inc.get("namespace")))
    return out


def enum_values(wsdl: WsdlBinding, zeep_type: Any) -> tuple[str, ...]:
    """The enumeration values of a zeep simple type, () when it has none."""
    qname = getattr(zeep_type, "qname", None)
    return wsdl.enums.get(qname.text, ()) if qname is not None else ()


@dataclass(frozen=True, eq=False)
class LonePart:
    """A document/literal bare message of ONE part whose element has a simple type, seen as a
    structure of that one element, so that the mapping matches it by name like any other.
    zeep itself takes that value alone (not by name) and hands it back alone."""

    name: str
    elements: tuple[tuple[str, Any], ...]


def lone_part(op: Any, side: str) -> LonePart | None:
    """The `LonePart` view of `op`'s input or output body, None when it is not one."""
    from zeep.xsd.types import ComplexType

    body: Any = getattr(getattr(op, side, None), "body", None)
    typ = getattr(body, "type", None)
    if typ is None or isinstance(typ, ComplexType) or not getattr(body, "name", None):
        return None
    return LonePart(body.name, ((body.name, body),))


def request_type(op: Any) -> Any:
    """The request type whose children the mapping sees (a `LonePart` for a lone simple part)."""
    lone = lone_part(op, "input")
    return lone if lone is not None else getattr(getattr(op.input, "body", None), "type", None)


def reply_wrapper(op: Any) -> tuple[Any, str | None]:
    """The reply type whose children the mapping sees, and the child's name when zeep hands
    a lone child back unwrapped (it does so for a wrapper of one element and no attributes,
    and for a bare message of one simple-typed part)."""
    lone = lone_part(op, "output")
    if lone is not None:
        return lone, lone.name
    body = getattr(op.output, "body", None)
    typ = getattr(body, "type", None)
    elems = list(getattr(typ, "elements", ()))
    if len(elems) == 1 and not list(getattr(typ, "attributes", ())):
        return typ, elems[0][0]
    return typ, None


_UNREACHABLE = (error.ConnectError, error.DNSLookupError, error.ConnectionLost, error.TimeoutError)

#: Seconds between connect probes of an idle SOAP endpoint (calls report on it meanwhile).
PROBE_EVERY = 5.0


class SoapBackend:
    """One backend's live HTTP side; `spec` is compared on reload.

    Ready means the endpoint accepts TCP connections: a connect probe at start and every
    PROBE_EVERY seconds, and the outcome of every call in between (a reply of any kind: up;
    a refused or failed connection: down). A SOAP service has no standard ping operation, and
    calling a business operation to probe it would have effects, so the probe stops at TCP."""

    def __init__(self, spec: SoapSpec, wsdl: WsdlBinding, reactor: Any) -> None:
        self.spec = spec
        self.wsdl = wsdl
        self.reactor: Any = reactor
        self.probe_ok: bool | None = None  # None: not probed yet
        self._loop: Any = None
        self.auth: tuple[tuple[str, str], ...] = ()
        if spec.basic_auth is not None:
            pair = f"{spec.basic_auth[0]}:{spec.basic_auth[1]}".encode()
            self.auth = (("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")),)
        self.pool: Any = None
        self.in_flight = 0
        self.failures = 0
        self.last_error = ""
        # envelopes and reply readers compiled per operation; zeep for the rest (soap_compiled)
        self.compiled = compile_binding(wsdl.client, wsdl.binding, wsdl.soap_ns)

    def start(self) -> None:
        from twisted.internet import task

        self.pool = HttpPool(self.wsdl.address, self.spec.pool_size, self.spec.connect_timeout,
                             self.spec.max_reply_bytes, self.reactor, self.spec.tls,
                             f"backend {self.spec.name}")
        self._loop = task.LoopingCall(self._probe)
        self._loop.clock = self.reactor
        self._loop.start(PROBE_EVERY, now=True)

    def stop(self) -> defer.Deferred[None]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.pool is not None:
            self.pool.stop()
        return defer.succeed(None)

    def _probe(self) -> defer.Deferred[None] | None:
        """A TCP connect to the endpoint's host and port, closed at once."""
        from urllib.parse import urlsplit

        from twisted.internet.endpoints import HostnameEndpoint

        if self.in_flight:
            return None  # the calls in flight will tell
        try:  # a LoopingCall stops for good on an exception: none may escape
            parts = urlsplit(self.wsdl.address)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            ep = HostnameEndpoint(self.reactor, (parts.hostname or "").encode("idna"), port,
                                  timeout=self.spec.connect_timeout)
            d = ep.connect(protocol.Factory.forProtocol(protocol.Protocol))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a malformed address: not ready, say why
            self._mark(False, f"connect probe: {type(e).__name__}: {e}")
            return None

        def up(p: Any) -> None:
            p.transport.loseConnection()
            self._mark(True, "")

        def down(f: Failure) -> None:
            self._mark(False, f"connect probe: {_describe(f)}")

        return d.addCallbacks(up, down)

    def _mark(self, ok: bool, why: str) -> None:
        self.probe_ok = ok
        if why:
            self.last_error = why

    @property
    def ready(self) -> bool:
        return bool(self.probe_ok)

    def state(self) -> dict[str, Any]:
        return {"ready": self.ready, "endpoint": self.wsdl.address, "port": self.wsdl.port,
                "in_flight": self.in_flight, "consecutive_failures": self.failures,
                "last_error": self.last_error}

    def envelope(self, operation: str, kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The compiled envelope; zeep renders (and escapes, and validates against the schema)
        what it cannot build."""
        compiled = self.compiled.operations.get(operation)
        if compiled is not None:
            try:
                return compiled.envelope(kwargs)
            except Fallback:
                pass
        return render_envelope(self.wsdl, operation, kwargs)

    def start_call(self, operation: str, kwargs: dict[str, Any], timeout: float,
                   extra_headers: dict[str, str], idempotent: bool,
                   done: Callable[[Any, BaseException | None], None]) -> Callable[[], None]:
        """Send one call; `done(zeep's result or a FaultInfo, None)` or `done(None, CallError)`
        once (the caller maps a FaultInfo with the method's rules). → a function that gives up
        on the call. Raises CallError when the request cannot be built: nothing was sent.

        A request that got not one byte of reply because its pooled connection turned out to
        be dead (the server closed it while idle, as the request went out) is sent once more on
        a fresh connection, but only for an idempotent method: the server may have acted on it."""
        data, headers = self.envelope(operation, kwargs)  # may raise: nothing sent
        try:
            request = request_bytes(self.pool.prefix, (*headers.items(), *extra_headers.items(),
                                                       *self.auth), data)
        except ValueError as e:
            raise CallError(Code.INVALID_ARGUMENT, f"cannot send to SOAP backend: {e}") from None
        self.in_flight += 1

        def answered(reply: Reply | None, err: BaseException | None) -> None:
            self.in_flight -= 1
            if reply is not None:
                self._mark(True, "")  # whatever came back, the endpoint is up
                try:
                    value = self._parsed(operation, reply)
                except CallError as e:
                    done(None, e)
                    return
                except Exception as e:  # noqa: BLE001 - never into the connection's callback
                    done(None, CallError(Code.INTERNAL, f"SOAP reply: {type(e).__name__}: {e}"))
                    return
                self.failures = 0
                done(value, None)
                return
            assert err is not None
            if isinstance(err, defer.CancelledError):
                done(None, err)
                return
            call_error = self._error(err, timeout, idempotent)
            if call_error.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                self.failures += 1
                self.last_error = call_error.message
            done(None, call_error)

        return self.pool.request(request, timeout, idempotent, answered).cancel

    def _parsed(self, operation: str, reply: Reply) -> Any:
        envelope = read_reply(reply.status, reply.body, self.wsdl.soap_ns)
        if isinstance(envelope, FaultInfo):
            return envelope
        return self._deserialize(operation, envelope, reply.body)

    def _error(self, err: BaseException, timeout: float, idempotent: bool) -> CallError:
        where = f"SOAP backend {self.spec.name} at {self.wsdl.address}"
        if isinstance(err, Timeout):
            return CallError(Code.DEADLINE_EXCEEDED,
                             f"SOAP backend {self.spec.name} did not answer in {timeout:g}s")
        if isinstance(err, ReplyTooLarge):
            return CallError(Code.INTERNAL, f"SOAP reply exceeds max_reply_bytes "
                                            f"({self.spec.max_reply_bytes}): {err}")
        if isinstance(err, NoReply):
            note = " (sent twice)" if err.retried else (
                "" if idempotent or not err.stale else
                " (not retried: the method is not idempotent)")
            return CallError(Code.UNAVAILABLE, f"{where} closed the connection without a "
                                               f"reply{note}: {err}")
        if isinstance(err, HttpError):
            return CallError(Code.UNAVAILABLE, f"{where}: unreadable HTTP reply: {err}")
        self._mark(False, "")
        return CallError(Code.UNAVAILABLE, f"{where} unreachable: {describe(err)}")

    def _deserialize(self, operation: str, envelope: Any, raw: bytes) -> Any:
        compiled = self.compiled.operations.get(operation)
        if compiled is not None:
            try:
                return compiled.result(envelope)
            except Fallback:
                pass
        return deserialize(self.wsdl, operation, envelope, raw)


def render_envelope(wsdl: WsdlBinding, operation: str,
                    kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """zeep renders (and escapes) the request: the envelope's bytes and the HTTP headers
    (SOAPAction or the 1.2 Content-Type action, WS-Security applied). No I/O."""
    from lxml import etree
    from zeep.exceptions import Error as ZeepError

    args: tuple[Any, ...] = ()
    lone = wsdl.lone_inputs.get(operation)
    if lone is not None:  # zeep takes a lone simple part's value alone, not by name
        args, kwargs = ((kwargs[lone],) if lone in kwargs else ()), {}
    try:
        env, headers = wsdl.binding._create(operation, args, kwargs, client=wsdl.client,
                                            options={"address": wsdl.address})
    except (ZeepError, TypeError, ValueError) as e:
        raise CallError(Code.INVALID_ARGUMENT, f"request does not fit the WSDL: {e}") from e
    return etree.tostring(env, encoding="utf-8", xml_declaration=True), headers


def deserialize(wsdl: WsdlBinding, operation: str, envelope: Any, raw: bytes) -> Any:
    """A reply envelope (already read by `read_reply`) → zeep's result. No I/O."""
    from zeep.exceptions import Error as ZeepError

    from ..mapping.soap_operation import snippet

    try:
        return wsdl.operations[operation].process_reply(envelope)
    except (ZeepError, ValueError, TypeError, AttributeError) as e:
        raise CallError(Code.UNKNOWN, f"SOAP reply does not fit the WSDL "
                                      f"({' '.join(str(e).split())[:200]}): {snippet(raw)}") from e


def run_offline(wsdl: WsdlBinding, op: Any, request: Any, reply: str) -> Any:
    """An `examples:` entry of a SOAP method, as a call would run it minus the HTTP: the
    request through the mapping and zeep's writer, the canned reply (a whole envelope, or the
    XML that goes in its Body; text that is not XML stays as it is) through the hardened reader,
    zeep and the mapping. → the reply message; raises CallError as the call would."""
    from ..mapping.soap_operation import FaultInfo, read_reply
    from ..mapping.template import RenderContext

    render_envelope(wsdl, op.operation, op.kwargs(request, RenderContext(request, {})))
    text = reply.strip()
    if text.startswith("<") and "Envelope" not in text.split(">", 1)[0]:
        text = (f'<soap:Envelope xmlns:soap="{wsdl.soap_ns}"><soap:Body>{text}</soap:Body>'
                f'</soap:Envelope>')
    raw = text.encode("utf-8")
    envelope = read_reply(200, raw, wsdl.soap_ns)
    if isinstance(envelope, FaultInfo):
        raise op.fault(envelope, request)
    return op.message(deserialize(wsdl, op.operation, envelope, raw))


def _describe(f: Failure) -> str:
    reasons = getattr(f.value, "reasons", None)
    if reasons:
        return "; ".join(_describe(r) for r in reasons)
    if type(f.value).__module__.startswith("OpenSSL"):
        from ..tls import describe_failure

        return describe_failure(f) or repr(f.value)
    if f.check(*_UNREACHABLE):
        return f.value.__class__.__name__ + (f": {f.value}" if str(f.value) else "")
    return f"{type(f.value).__name__}: {f.value}"
