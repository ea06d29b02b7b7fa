"""OpenAPI 3.0.3 description of the JSON/HTTP front, generated from the same routes it serves.

The document is built from the Router (not from the rules a second time) so it can never
describe a path the front would not match. Schemas follow the proto3 JSON mapping the front
speaks: lowerCamel property names, 64-bit integers as strings, enums by name, well-known types
in their JSON forms. Comments from the .proto files become summaries and descriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from adaptercar.fronts.http_routes import PathVariable, Route, Router, RouteTarget
from adaptercar.protos import ProtoSet

__all__ = ["ERROR_SCHEMA_NAME", "openapi_document"]

ERROR_SCHEMA_NAME = "google.rpc.Status"
_REF = "#/components/schemas/"
_OPENAPI_VERBS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_QUERY_DEPTH = 4  # nested query parameters (`a.b.c.d`) documented at most this deep

_F = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT64: {"type": "string", "format": "int64"},
    _F.TYPE_SINT64: {"type": "string", "format": "int64"},
    _F.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _F.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    _F.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WRAPPERS: dict[str, int] = {
    "google.protobuf.DoubleValue": _F.TYPE_DOUBLE,
    "google.protobuf.FloatValue": _F.TYPE_FLOAT,
    "google.protobuf.Int64Value": _F.TYPE_INT64,
    "google.protobuf.UInt64Value": _F.TYPE_UINT64,
    "google.protobuf.Int32Value": _F.TYPE_INT32,
    "google.protobuf.UInt32Value": _F.TYPE_UINT32,
    "google.protobuf.BoolValue": _F.TYPE_BOOL,
    "google.protobuf.StringValue": _F.TYPE_STRING,
    "google.protobuf.BytesValue": _F.TYPE_BYTES,
}
_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "example": "1.5s",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamel field paths.",
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
# Query and path values can only be scalars: these message types travel as one string.
_QUERY_WKT = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"}) | frozenset(
    {"google.protobuf.FieldMask", *_WRAPPERS}
)


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The error of a failed call: a gRPC status code, a message, details.",
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": dict(_WKT["google.protobuf.Any"])},
        },
    }


class _Comments:
    """Leading (else trailing) comments of every element, by full name."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self.text: dict[str, str] = {}
        for fdp in files:
            names = _element_names(fdp)
            for loc in fdp.source_code_info.location:
                name = names.get(tuple(loc.path))
                comment = (loc.leading_comments or loc.trailing_comments).strip()
                if name is not None and comment:
                    self.text[name] = "\n".join(line.strip() for line in comment.splitlines())

    def get(self, name: str) -> str:
        return self.text.get(name, "")


def _element_names(fdp: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-location paths (descriptor.proto field numbers) to element full names."""
    out: dict[tuple[int, ...], str] = {}
    pkg = f"{fdp.package}." if fdp.package else ""

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], full: str) -> None:
        out[path] = full
        for i, v in enumerate(e.value):
            out[path + (2, i)] = f"{full}.{v.name}"

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], full: str) -> None:
        out[path] = full
        for i, f in enumerate(m.field):
            out[path + (2, i)] = f"{full}.{f.name}"
        for i, n in enumerate(m.nested_type):
            message(n, path + (3, i), f"{full}.{n.name}")
        for i, e in enumerate(m.enum_type):
            enum(e, path + (4, i), f"{full}.{e.name}")

    for i, m in enumerate(fdp.message_type):
        message(m, (4, i), pkg + m.name)
    for i, e in enumerate(fdp.enum_type):
        enum(e, (5, i), pkg + e.name)
    for i, s in enumerate(fdp.service):
        out[(6, i)] = pkg + s.name
        for j, meth in enumerate(s.method):
            out[(6, i, 2, j)] = f"{pkg}{s.name}.{meth.name}"
    return out


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


class _Schemas:
    """components/schemas, filled with every message and enum the routes reach."""

    def __init__(self, comments: _Comments) -> None:
        self.comments = comments
        self.components: dict[str, dict[str, Any]] = {}

    def message_ref(self, desc: Descriptor) -> dict[str, Any]:
        wkt = self._wkt(desc.full_name)
        if wkt is not None:
            return wkt
        if desc.full_name not in self.components:
            self.components[desc.full_name] = {}  # placeholder first: messages may recurse
            self.components[desc.full_name] = self._message(desc)
        return {"$ref": _REF + desc.full_name}

    def enum_ref(self, desc: EnumDescriptor) -> dict[str, Any]:
        if desc.full_name == "google.protobuf.NullValue":
            return {"nullable": True, "description": "JSON null."}
        if desc.full_name not in self.components:
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in desc.values]}
            self._describe(schema, desc.full_name)
            self.components[desc.full_name] = schema
        return {"$ref": _REF + desc.full_name}

    def field(self, f: FieldDescriptor) -> dict[str, Any]:
        """The JSON value of a field as a whole: array for repeated, object for maps."""
        if _is_map(f):
            assert f.message_type is not None
            value = self.single(f.message_type.fields_by_name["value"])
            schema: dict[str, Any] = {"type": "object", "additionalProperties": value}
        elif f.is_repeated:
            schema = {"type": "array", "items": self.single(f)}
        else:
            schema = self.single(f)
        if "$ref" not in schema:
            schema = dict(schema)
            self._describe(schema, f.full_name)
        return schema

    def single(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None:
            return self.message_ref(f.message_type)
        if f.enum_type is not None:
            return self.enum_ref(f.enum_type)
        return dict(_SCALARS[f.type])

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {f.json_name: self.field(f) for f in desc.fields},
        }
        self._describe(schema, desc.full_name)
        oneofs = [o for o in desc.oneofs if not o.name.startswith("_")]  # `_x`: proto3 optional
        if oneofs:
            note = "; ".join(
                f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs
            )
            schema["description"] = (schema.get("description", "") + f"\n\nOneof: {note}.").strip()
        return schema

    def _wkt(self, name: str) -> dict[str, Any] | None:
        if name in _WRAPPERS:
            return {**_SCALARS[_WRAPPERS[name]], "nullable": True}
        found = _WKT.get(name)
        return dict(found) if found is not None else None

    def _describe(self, schema: dict[str, Any], name: str) -> None:
        text = self.comments.get(name)
        if text and "description" not in schema:
            schema["description"] = text


def _operation_id(route: Route) -> str:
    base = f"{route.service.replace('.', '_')}_{route.method.name}"
    if route.rpc_form:
        return base
    return f"{base}_http" + (str(route.binding + 1) if route.binding else "")


def _singular(word: str) -> str:
    """A readable parameter name from a collection segment; cosmetic, so rules, no dictionary."""
    for plural, single in (
        ("ies", "y"),
        ("sses", "ss"),
        ("xes", "x"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("lves", "lf"),
    ):
        if word.endswith(plural) and len(word) > len(plural):
            return word[: -len(plural)] + single
    if word.endswith("s") and not word.endswith(("ss", "us")) and len(word) > 1:
        return word[:-1]
    return word


def _path_and_parameters(route: Route, schemas: _Schemas) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a route and its path parameters.

    A variable of several segments is split into one parameter per `*`, named after the
    literal before it (`{name=shelves/*/books/*}` -> `/shelves/{shelf}/books/{book}`): the
    request is the same, and generated clients, which percent-encode a '/' inside a parameter,
    then build paths the router matches. Only `**` stays one parameter whose '/' must be sent
    unescaped.
    """
    used: set[str] = set()

    def unique(name: str) -> str:
        n, candidate = 1, name
        while candidate in used:
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate)
        return candidate

    variables = {id(v): leaf for v, leaf in route.path_bindings}
    parts: list[str] = []
    params: list[dict[str, Any]] = []
    for seg in route.parsed.segments:
        if not isinstance(seg, PathVariable):
            parts.append(seg)
            continue
        leaf = variables[id(seg)]
        described = schemas.comments.get(leaf.full_name)
        if not seg.multi_segment:
            param: dict[str, Any] = {"name": unique(seg.name), "in": "path", "required": True}
            if described:
                param["description"] = described
            param["schema"] = schemas.single(leaf)
            parts.append("{" + param["name"] + "}")
            params.append(param)
            continue
        fmt = "/".join(seg.segments)
        for i, inner in enumerate(seg.segments):
            if inner not in ("*", "**"):
                parts.append(inner)
                continue
            before = seg.segments[i - 1] if i > 0 else ""
            base = _singular(before) if before not in ("", "*", "**") else seg.name
            name = unique(base)
            note = f"Part of `{seg.name}`, which is `{fmt}`."
            if inner == "**":
                note += " May hold several segments: send their '/' unescaped."
            parts.append("{" + name + "}")
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": f"{described}\n\n{note}".strip(),
                    "schema": {"type": "string"},
                }
            )
    path = "/" + "/".join(parts) + (f":{route.parsed.verb}" if route.parsed.verb else "")
    return path, params


def _query_parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    """Every scalar leaf not set by the path or the body, as `a.b` lowerCamel names."""
    if route.body == "*":
        return []
    bound = route.bound_paths
    body = route.body
    out: list[dict[str, Any]] = []

    def walk(
        desc: Descriptor, names: tuple[str, ...], proto: tuple[str, ...], stack: set[str]
    ) -> None:
        for f in desc.fields:
            path = proto + (f.name,)
            if (body and path[0] == body) or path in bound or _is_map(f):
                continue
            name = ".".join(names + (f.json_name,))
            msg = f.message_type
            if msg is not None and msg.full_name not in _QUERY_WKT:
                if f.is_repeated or msg.full_name in stack or len(path) >= _QUERY_DEPTH:
                    continue
                if msg.full_name.startswith("google.protobuf."):
                    continue  # Struct, Any, Empty...: no scalar form
                walk(msg, names + (f.json_name,), path, stack | {msg.full_name})
                continue
            schema = schemas.single(f)
            param: dict[str, Any] = {"name": name, "in": "query", "required": False}
            if f.is_repeated:
                schema = {"type": "array", "items": schema}
                param.update(style="form", explode=True)
            text = schemas.comments.get(f.full_name)
            if text:
                param["description"] = text
            param["schema"] = schema
            out.append(param)

    walk(route.method.input_type, (), (), {route.method.input_type.full_name})
    return out


def _operation(route: Route, schemas: _Schemas) -> tuple[str, dict[str, Any]]:
    method = route.method
    comment = schemas.comments.get(method.full_name)
    op: dict[str, Any] = {
        "operationId": _operation_id(route),
        "tags": [route.service],
        "summary": comment.split("\n\n")[0].replace("\n", " ") if comment else method.name,
    }
    if comment and comment != op["summary"]:
        op["description"] = comment
    path, params = _path_and_parameters(route, schemas)
    params += _query_parameters(route, schemas)
    if params:
        op["parameters"] = params
    if route.body:
        if route.body_field is not None:
            body_schema = schemas.field(route.body_field)
        else:
            body_schema = schemas.message_ref(method.input_type)
        op["requestBody"] = {
            "required": not route.rpc_form,
            "content": {"application/json": {"schema": body_schema}},
        }
    if route.response_field is not None:
        reply = schemas.field(route.response_field)
    else:
        reply = schemas.message_ref(method.output_type)
    op["responses"] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": reply}}},
        "default": {
            "description": "An error (HTTP status from the gRPC code).",
            "content": {"application/json": {"schema": {"$ref": _REF + ERROR_SCHEMA_NAME}}},
        },
    }
    return path, op


def openapi_document(
    protoset: ProtoSet,
    targets: Iterable[RouteTarget],
    title: str,
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of every route the JSON front serves for `targets`.

    Raises RouteError (from Router.build) when a target's annotation cannot be served.
    """
    router = Router.build(targets)
    comments = _Comments(protoset.files)
    schemas = _Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    services: list[str] = []
    for route in router.routes:
        verb = route.http_method.lower()
        if verb not in _OPENAPI_VERBS:
            continue  # a custom HTTP method OpenAPI cannot describe
        if route.service not in services:
            services.append(route.service)
        path, op = _operation(route, schemas)
        item = paths.setdefault(path, {})
        existing = item.get(verb)
        if existing is not None:
            # `/{a}` and `/{b}` are one OpenAPI path; Router.build rejects them for one
            # verb, but keep the document whole should that ever change.
            extra = f"Also serves {route.http_method} {route.template} ({route.method.full_name})."
            existing["description"] = (existing.get("description", "") + "\n\n" + extra).strip()
            continue
        item[verb] = op
    components = dict(sorted(schemas.components.items()))
    components.setdefault(ERROR_SCHEMA_NAME, _error_schema())
    tags = []
    for name in services:
        tag: dict[str, Any] = {"name": name}
        if comments.get(name):
            tag["description"] = comments.get(name)
        tags.append(tag)
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "tags": tags,
        "paths": paths,
        "components": {"schemas": components},
    }
