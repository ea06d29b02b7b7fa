"""Sans-IO routing of JSON/HTTP calls onto rpcs: `google.api.http` templates and request building.

Every template is parsed and compiled once, when the Router is built (start-up or reload);
matching a request is a dict lookup on the first path segment plus a few precompiled regexes.

Decoding of captured path values follows google/api/http.proto:
- a variable of one segment (`{name}`, `{name=*}`) is fully percent-decoded, `%2F` included
  (it becomes '/'; the raw '/' never appears inside such a capture since segments split on it);
- a variable of several segments (`{name=shelves/*}`, `{path=**}`) is decoded except `%2F`/`%2f`,
  which stay encoded, so a decoded value can still be split back into its segments.
A route without a `:verb` treats a ':' in the last segment as part of the value; routes with a
verb are tried before those without, then routes with more literal segments before fewer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from google.api import http_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

if TYPE_CHECKING:
    from adaptercar.protos import ProtoSet

__all__ = [
    "Match",
    "MethodNotAllowed",
    "NotFound",
    "PathVariable",
    "RequestError",
    "Route",
    "RouteError",
    "RouteTarget",
    "Router",
    "build_request",
    "parse_message",
    "parse_template",
    "route_targets",
]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters that end a literal segment; anything else (unreserved, sub-delims, '@', '%')
# may appear in a literal.
_LITERAL_STOP = frozenset("/:{}*=?# \t\r\n")
_PCT_2F = re.compile(r"(%2[fF])")

# Well-known message types that travel as a single JSON scalar, so a path or query value may
# set them (google/api/http.proto allows these as "primitive" leaves).
_SCALAR_WKT = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
_TRUE = frozenset({"true", "True", "TRUE", "t", "T", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "f", "F", "0"})


class RouteError(Exception):
    """An annotation cannot be served (bad template, unknown field, conflicting routes)."""


class RequestError(Exception):
    """A request cannot become a message; the front answers INVALID_ARGUMENT / 400."""


@dataclass(frozen=True)
class RouteTarget:
    service: str
    method: MethodDescriptor
    rule: http_pb2.HttpRule | None


def route_targets(protoset: ProtoSet, services: Iterable[str] | None = None) -> list[RouteTarget]:
    """Targets for every unary method of the given (default: all) services, with its rule.

    Streaming methods are left out: adaptercar only serves unary rpcs.
    """
    all_services = protoset.services()
    names = sorted(all_services) if services is None else list(services)
    out: list[RouteTarget] = []
    for name in names:
        for m in all_services[name].methods:
            if m.client_streaming or m.server_streaming:
                continue
            out.append(RouteTarget(name, m, protoset.http_rule(m)))
    return out


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class PathVariable:
    field_path: tuple[str, ...]  # proto field names, outermost first
    segments: tuple[str, ...]  # the variable's own template, ("*",) for `{name}`

    @property
    def multi_segment(self) -> bool:
        return len(self.segments) > 1 or "**" in self.segments

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True)
class ParsedTemplate:
    template: str
    segments: tuple[str | PathVariable, ...]
    verb: str
    regex: re.Pattern[str]
    variables: tuple[PathVariable, ...]
    literal_count: int
    double_star: bool
    shape: str  # what it matches, variables erased: two routes of one shape conflict
    bound: frozenset[tuple[str, ...]]  # field paths the variables set

    @property
    def is_literal(self) -> bool:
        return not self.variables and self.literal_count == len(self.segments)

    @property
    def first_literal(self) -> str | None:
        first = self.segments[0]
        return first if isinstance(first, str) and first not in ("*", "**") else None


def _segment_regex(seg: str) -> str:
    if seg == "*":
        return "[^/]+"
    if seg == "**":
        return ".*"
    return re.escape(seg)


def parse_template(template: str) -> ParsedTemplate:
    """Parse a google.api.http path template; raises RouteError naming the position."""

    def fail(pos: int, what: str) -> RouteError:
        return RouteError(f"path template {template!r}, at character {pos + 1}: {what}")

    def literal(pos: int) -> tuple[str, int]:
        end = pos
        while end < len(template) and template[end] not in _LITERAL_STOP:
            end += 1
        if end == pos:
            found = repr(template[pos]) if pos < len(template) else "end of template"
            raise fail(pos, f"expected a literal, '*', '**' or '{{field}}', found {found}")
        return template[pos:end], end

    def plain_segment(pos: int) -> tuple[str, int]:
        if template.startswith("**", pos):
            return "**", pos + 2
        if template.startswith("*", pos):
            return "*", pos + 1
        return literal(pos)

    if not template.startswith("/"):
        raise fail(0, "must start with '/'")
    segments: list[str | PathVariable] = []
    verb = ""
    pos = 1
    while True:
        if template.startswith("{", pos):
            close = template.find("}", pos)
            if close < 0:
                raise fail(pos, "'{' is never closed")
            inner = template[pos + 1 : close]
            path_text, eq, sub = inner.partition("=")
            names = tuple(path_text.split("."))
            if not all(_IDENT.fullmatch(n) for n in names):
                raise fail(pos + 1, f"{path_text!r} is not a field path (a.b.c)")
            if eq:
                if "{" in sub:
                    raise fail(pos, "variables cannot nest")
                variable = PathVariable(names, tuple(_plain(p, pos, fail) for p in sub.split("/")))
            else:
                variable = PathVariable(names, ("*",))
            segments.append(variable)
            pos = close + 1
        else:
            seg, pos = plain_segment(pos)
            segments.append(seg)
        if pos == len(template):
            break
        c = template[pos]
        if c == "/":
            pos += 1
            continue
        if c == ":":
            verb, end = literal(pos + 1)
            if end != len(template):
                raise fail(end, "the ':verb' suffix must end the template")
            break
        raise fail(pos, f"unexpected {c!r}")

    flat: list[str] = []
    for s in segments:
        flat.extend(s.segments if isinstance(s, PathVariable) else [s])
    if "**" in flat[:-1]:
        raise fail(template.find("**"), "'**' may only be the last segment")
    variables = tuple(s for s in segments if isinstance(s, PathVariable))
    seen: set[tuple[str, ...]] = set()
    for v in variables:
        if v.field_path in seen:
            raise fail(0, f"field {v.name!r} is bound twice")
        seen.add(v.field_path)
    parts: list[str] = []
    for s in segments:
        if isinstance(s, PathVariable):
            parts.append("(" + "/".join(_segment_regex(x) for x in s.segments) + ")")
        else:
            parts.append(_segment_regex(s))
    source = "/" + "/".join(parts) + (re.escape(":" + verb) if verb else "")
    return ParsedTemplate(
        template=template,
        segments=tuple(segments),
        verb=verb,
        regex=re.compile(source),
        variables=variables,
        literal_count=sum(1 for x in flat if x not in ("*", "**")),
        double_star="**" in flat,
        shape="/" + "/".join(flat) + (f":{verb}" if verb else ""),
        bound=frozenset(seen),
    )


def _plain(part: str, pos: int, fail: Callable[[int, str], RouteError]) -> str:
    """One segment inside `{field=...}`: '*', '**' or a literal, and nothing else."""
    if part in ("*", "**"):
        return part
    if not part or any(c in _LITERAL_STOP for c in part):
        raise fail(pos, f"bad segment {part!r} inside variable")
    return part


# --------------------------------------------------------------------------- fields


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _is_message(f: FieldDescriptor) -> bool:
    return f.message_type is not None


def _message_name(f: FieldDescriptor) -> str:
    """Full name of a message field's type, "" for scalars and enums."""
    return f.message_type.full_name if f.message_type is not None else ""


def _is_scalar_leaf(f: FieldDescriptor) -> bool:
    return not _is_message(f) or _message_name(f) in _SCALAR_WKT


def _is_bool(f: FieldDescriptor) -> bool:
    if f.type == FieldDescriptor.TYPE_BOOL:
        return True
    return _message_name(f) == "google.protobuf.BoolValue"


class _Fields:
    """Field lookup by either JSON spelling (proto name or lowerCamel), built once per type."""

    __slots__ = ("desc", "by_name")

    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        self.by_name: dict[str, FieldDescriptor] = {}
        for f in desc.fields:
            self.by_name[f.name] = f
            self.by_name.setdefault(f.json_name, f)


def _index(desc: Descriptor, registry: dict[str, _Fields]) -> _Fields:
    """Index `desc` and every message type reachable from it (cycles are fine)."""
    found = registry.get(desc.full_name)
    if found is not None:
        return found
    fields = registry[desc.full_name] = _Fields(desc)
    for f in desc.fields:
        if f.message_type is not None and not _is_map(f):
            _index(f.message_type, registry)
    return fields


def _convert(f: FieldDescriptor, value: str, where: str) -> Any:
    """A path or query string as the JSON value ParseDict expects for field `f`.

    Only bools need work: ParseDict accepts numbers, enums, bytes and well-known types as
    strings, but a bool only as a JSON true/false.
    """
    if _is_bool(f):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise RequestError(f"{where}: {value!r} is not a bool (true or false)")
    return value


@dataclass(frozen=True)
class _Binding:
    """Where a path variable lands: one (json name, proto name) pair per level."""

    keys: tuple[tuple[str, str], ...]
    leaf: FieldDescriptor
    variable: PathVariable


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True, eq=False)
class Route:
    http_method: str
    template: str
    service: str
    method: MethodDescriptor
    body: str  # "" (none), "*" (whole message) or a top-level field name
    response_body: str  # "" (whole message) or a top-level field of the output
    rpc_form: bool  # the `POST /pkg.Service/Method` route every method gets
    binding: int  # 0: the rule itself, n: its n-th additional binding (rpc form: 0)
    parsed: ParsedTemplate
    _input: _Fields = field(repr=False)
    _registry: dict[str, _Fields] = field(repr=False)
    _bindings: tuple[_Binding, ...] = field(repr=False)
    body_field: FieldDescriptor | None = field(repr=False)  # set when body names a field
    response_field: FieldDescriptor | None = field(repr=False)  # set with response_body
    order: int = field(repr=False, default=0)

    @property
    def grpc_path(self) -> str:
        """`/package.Service/Method`, the rpc's gRPC path (and its `POST` route)."""
        return f"/{self.service}/{self.method.name}"

    @property
    def variables(self) -> tuple[PathVariable, ...]:
        return self.parsed.variables

    @property
    def path_bindings(self) -> tuple[tuple[PathVariable, FieldDescriptor], ...]:
        """Each path variable with the (leaf) field it sets."""
        return tuple((b.variable, b.leaf) for b in self._bindings)

    @property
    def bound_paths(self) -> frozenset[tuple[str, ...]]:
        return self.parsed.bound

    def _priority(self) -> tuple[int, int, int, int]:
        p = self.parsed
        return (0 if p.verb else 1, -p.literal_count, int(p.double_star), self.order)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    captures: tuple[str, ...]  # raw (still percent-encoded), in route.variables order

    @property
    def params(self) -> dict[str, str]:
        """Decoded path values by dotted field path; RequestError on undecodable escapes."""
        out: dict[str, str] = {}
        for var, raw in zip(self.route.parsed.variables, self.captures, strict=True):
            out[var.name] = _decode(raw, var.multi_segment, var.name)
        return out


@dataclass(frozen=True, slots=True)
class NotFound:
    path: str


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    path: str
    allowed: tuple[str, ...]


def _decode(raw: str, multi: bool, name: str) -> str:
    if "%" not in raw:
        return raw
    try:
        if not multi:
            return unquote(raw, errors="strict")
        parts = _PCT_2F.split(raw)  # odd items are the %2F separators themselves
        return "".join(p if i % 2 else unquote(p, errors="strict") for i, p in enumerate(parts))
    except UnicodeDecodeError:
        raise RequestError(f"path value for {name!r} is not valid percent-encoded UTF-8") from None


class _MethodTable:
    """The routes of one HTTP method: exact paths first, then regexes by first segment."""

    __slots__ = ("exact", "buckets", "default")

    def __init__(self, routes: list[Route]) -> None:
        self.exact: dict[str, Route] = {}
        wild: list[Route] = []
        by_first: dict[str, list[Route]] = {}
        for r in routes:
            if r.parsed.is_literal:
                self.exact[r.template] = r
            elif (first := r.parsed.first_literal) is None:
                wild.append(r)
            else:
                by_first.setdefault(first, []).append(r)
        self.default = tuple(sorted(wild, key=Route._priority))
        self.buckets = {
            k: tuple(sorted(v + wild, key=Route._priority)) for k, v in by_first.items()
        }

    def find(self, path: str) -> Match | None:
        exact = self.exact.get(path)
        if exact is not None:
            return Match(exact, ())
        end = path.find("/", 1)
        first = path[1:end] if end > 0 else path[1:]
        colon = first.find(":")
        if colon >= 0:
            first = first[:colon]
        for route in self.buckets.get(first, self.default):
            m = route.parsed.regex.fullmatch(path)
            if m is not None:
                return Match(route, m.groups())
        return None


class Router:
    """All routes of one config generation; immutable once built."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        methods: dict[str, list[Route]] = {}
        for r in routes:
            methods.setdefault(r.http_method, []).append(r)
        self._tables = {m: _MethodTable(rs) for m, rs in methods.items()}

    @classmethod
    def build(cls, entries: Iterable[RouteTarget]) -> Router:
        """Compile every route; RouteError names the rpc and what is wrong with its rule."""
        registry: dict[str, _Fields] = {}
        routes: list[Route] = []
        for target in entries:
            routes.extend(_routes_for(target, registry, len(routes)))
        shapes: dict[tuple[str, str], Route] = {}
        for r in routes:
            key = (r.http_method, r.parsed.shape)
            other = shapes.get(key)
            if other is not None:
                raise RouteError(
                    f"{r.method.full_name}: {r.http_method} {r.template} conflicts with "
                    f"{other.http_method} {other.template} of {other.method.full_name}"
                )
            shapes[key] = r
        return cls(routes)

    def match(self, http_method: str, path: str) -> Match | NotFound | MethodNotAllowed:
        """`path` is the raw request path; a query string, if left on, is ignored."""
        q = path.find("?")
        if q >= 0:
            path = path[:q]
        if not path.startswith("/"):
            return NotFound(path)
        table = self._tables.get(http_method)
        if table is not None:
            found = table.find(path)
            if found is not None:
                return found
        allowed = tuple(
            sorted(m for m, t in self._tables.items() if m != http_method and t.find(path))
        )
        return MethodNotAllowed(path, allowed) if allowed else NotFound(path)


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    out = [rule]
    for extra in rule.additional_bindings:
        out.extend(_bindings(extra))
    return out


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def _routes_for(target: RouteTarget, registry: dict[str, _Fields], start: int) -> list[Route]:
    method = target.method
    where = method.full_name
    input_fields = _index(method.input_type, registry)
    _index(method.output_type, registry)
    specs: list[tuple[str, str, str, str, bool, int]] = [
        ("POST", f"/{target.service}/{method.name}", "*", "", True, 0)
    ]
    if target.rule is not None:
        for n, b in enumerate(_bindings(target.rule)):
            vp = _verb_and_path(b)
            if vp is None:
                if n == 0 and not target.rule.additional_bindings:
                    raise RouteError(f"{where}: google.api.http rule sets no HTTP method/path")
                if n == 0:
                    continue
                raise RouteError(f"{where}: additional binding {n} sets no HTTP method/path")
            if not vp[0] or not _IDENT.fullmatch(vp[0]):
                raise RouteError(f"{where}: custom HTTP method {vp[0]!r} is not a token")
            specs.append((vp[0], vp[1], b.body, b.response_body, False, n))
    out: list[Route] = []
    for http_method, template, body, response_body, rpc_form, n in specs:
        try:
            parsed = parse_template(template)
        except RouteError as exc:
            raise RouteError(f"{where}: {exc}") from None
        bindings = tuple(_bind(v, input_fields, registry, where) for v in parsed.variables)
        body_field = None
        if body and body != "*":
            body_field = method.input_type.fields_by_name.get(body)
            if body_field is None:
                raise RouteError(
                    f"{where}: body {body!r} is not a field of {method.input_type.full_name}"
                )
        response_field = None
        if response_body:
            response_field = method.output_type.fields_by_name.get(response_body)
            if response_field is None:
                raise RouteError(
                    f"{where}: response_body {response_body!r} is not a field of "
                    f"{method.output_type.full_name}"
                )
        out.append(
            Route(
                http_method=http_method,
                template=template,
                service=target.service,
                method=method,
                body=body,
                response_body=response_body,
                rpc_form=rpc_form,
                binding=n,
                parsed=parsed,
                _input=input_fields,
                _registry=registry,
                _bindings=bindings,
                body_field=body_field,
                response_field=response_field,
                order=start + len(out),
            )
        )
    return out


def _bind(var: PathVariable, fields: _Fields, registry: dict[str, _Fields], where: str) -> _Binding:
    keys: list[tuple[str, str]] = []
    desc = fields.desc
    f: FieldDescriptor | None = None
    for i, name in enumerate(var.field_path):
        f = desc.fields_by_name.get(name)
        if f is None:
            raise RouteError(
                f"{where}: path variable {var.name!r}: {desc.full_name} has no field {name!r}"
            )
        keys.append((f.json_name, f.name))
        last = i == len(var.field_path) - 1
        if f.is_repeated:
            raise RouteError(f"{where}: path variable {var.name!r}: {f.name!r} is repeated")
        if not last:
            if f.message_type is None or _message_name(f) in _SCALAR_WKT:
                raise RouteError(
                    f"{where}: path variable {var.name!r}: {f.name!r} is not a message"
                )
            desc = f.message_type
    assert f is not None
    if not _is_scalar_leaf(f):
        raise RouteError(
            f"{where}: path variable {var.name!r} names a message field; it must name a "
            "scalar, enum or well-known scalar type"
        )
    return _Binding(tuple(keys), f, var)


# --------------------------------------------------------------------------- requests


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise RequestError("request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise RequestError("malformed JSON body: nested too deeply") from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _enter(d: dict[str, Any], json_name: str, proto_name: str, where: str) -> dict[str, Any]:
    """The sub-object under a field, whichever spelling the caller used, as the JSON name."""
    child = _take(d, json_name, proto_name, where)
    if child is None:
        child = {}
    elif not isinstance(child, dict):
        raise RequestError(f"{where}: must be a JSON object, got {_json_kind(child)}")
    d[json_name] = child
    return child


def _take(d: dict[str, Any], json_name: str, proto_name: str, where: str) -> Any:
    if proto_name != json_name and proto_name in d:
        if json_name in d:
            raise RequestError(f"{where}: given twice, as {json_name!r} and {proto_name!r}")
        return d.pop(proto_name)
    return d.get(json_name)


def build_request(
    match: Match, query: Mapping[str, list[str]], body: bytes | None
) -> dict[str, Any]:
    """The proto3-JSON dict of the request message (feed it to ParseDict / parse_message).

    `query` maps parameter names to all their values (as `urllib.parse.parse_qs` gives them);
    `body` is the raw request body. Raises RequestError with a message fit for the caller.
    """
    route = match.route
    msg_name = route.method.input_type.full_name
    result: dict[str, Any]
    has_body = body is not None and body.strip() != b""
    if route.body == "*":
        if query:
            names = ", ".join(sorted(query))
            raise RequestError(
                f"query parameters are not accepted here ({names}): the JSON body carries "
                f"the whole {msg_name} message"
            )
        if has_body:
            assert body is not None
            parsed = _parse_json(body)
            if not isinstance(parsed, dict):
                raise RequestError(
                    f"request body must be a JSON object ({msg_name}), got {_json_kind(parsed)}"
                )
            result = parsed
        else:
            result = {}
    else:
        result = {}
        if route.body_field is not None:
            if has_body:
                assert body is not None
                f = route.body_field
                value = _parse_json(body)
                _check_body_value(f, value)
                result[f.json_name] = value
        elif has_body:
            raise RequestError(
                f"{route.http_method} {route.template} takes no request body; "
                "send fields as query parameters"
            )
    params = match.params
    for b in route._bindings:
        d = result
        for json_name, proto_name in b.keys[:-1]:
            d = _enter(d, json_name, proto_name, f"field {proto_name!r}")
        json_name, proto_name = b.keys[-1]
        _take(d, json_name, proto_name, f"field {b.variable.name!r}")
        d.pop(proto_name, None)
        d[json_name] = _convert(b.leaf, params[b.variable.name], f"path value {b.variable.name!r}")
    if query:
        _apply_query(route, result, query)
    return result


def _check_body_value(f: FieldDescriptor, value: Any) -> None:
    if value is None:
        return
    if f.is_repeated and not _is_map(f):
        if not isinstance(value, list):
            raise RequestError(
                f"request body is field {f.name!r} (repeated): expected a JSON array, "
                f"got {_json_kind(value)}"
            )
    elif _is_map(f) or (_is_message(f) and not _is_wkt(f)):
        if not isinstance(value, dict):
            raise RequestError(
                f"request body is field {f.name!r} ({_type_name(f)}): expected a JSON object, "
                f"got {_json_kind(value)}"
            )


def _is_wkt(f: FieldDescriptor) -> bool:
    return _message_name(f).startswith("google.protobuf.")


def _type_name(f: FieldDescriptor) -> str:
    return _message_name(f) or "scalar"


def _apply_query(route: Route, result: dict[str, Any], query: Mapping[str, list[str]]) -> None:
    bound = route.bound_paths
    body_field = route.body_field
    for key, values in query.items():
        where = f"query parameter {key!r}"
        chain = _resolve(route, key, where)
        proto_path = tuple(f.name for f in chain)
        if proto_path in bound or any(p[: len(proto_path)] == proto_path for p in bound):
            raise RequestError(f"{where}: field is already bound by the path")
        if body_field is not None and chain[0] is body_field:
            raise RequestError(f"{where}: field {body_field.name!r} is the request body")
        leaf = chain[-1]
        d = result
        for f in chain[:-1]:
            d = _enter(d, f.json_name, f.name, where)
        if _take(d, leaf.json_name, leaf.name, where) is not None:
            raise RequestError(f"{where}: field {leaf.name!r} is set twice")
        d.pop(leaf.name, None)
        if leaf.is_repeated:
            d[leaf.json_name] = [_convert(leaf, v, where) for v in values]
        elif len(values) != 1:
            raise RequestError(
                f"{where}: field {leaf.name!r} is not repeated, got {len(values)} values"
            )
        else:
            d[leaf.json_name] = _convert(leaf, values[0], where)


def _resolve(route: Route, key: str, where: str) -> list[FieldDescriptor]:
    fields = route._input
    parts = key.split(".")
    chain: list[FieldDescriptor] = []
    for i, part in enumerate(parts):
        f = fields.by_name.get(part)
        if f is None:
            raise RequestError(f"{where}: {fields.desc.full_name} has no field {part!r}")
        chain.append(f)
        last = i == len(parts) - 1
        if _is_map(f):
            raise RequestError(f"{where}: map field {f.name!r} cannot be set from the query")
        if last:
            if not _is_scalar_leaf(f):
                raise RequestError(
                    f"{where}: field {f.name!r} is a message ({_type_name(f)}); set its "
                    f"fields as {key}.<field>"
                )
        else:
            if not _is_message(f) or _message_name(f) in _SCALAR_WKT:
                raise RequestError(f"{where}: field {f.name!r} has no sub-fields")
            if f.is_repeated:
                raise RequestError(
                    f"{where}: field {f.name!r} is a repeated message; it cannot be set "
                    "from the query"
                )
            fields = route._registry[_message_name(f)]
    return chain


def parse_message(data: Mapping[str, Any], cls: type[Message]) -> Message:
    """ParseDict with every failure turned into RequestError (field named, no traceback)."""
    try:
        return json_format.ParseDict(dict(data), cls())
    except json_format.ParseError as exc:
        raise RequestError(str(exc)) from None
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        # ParseDict lets some shape errors through untyped (e.g. an object for a wrapper).
        raise RequestError(f"invalid {cls.DESCRIPTOR.full_name}: {exc}") from None
