"""`adaptercar import-wsdl`: a WSDL → a proto, a mapping and a config that serve it as is.

The proto mirrors the schema so that the soap backend's by-name matching needs no explicit
maps: one rpc per operation, its request message holding the input wrapper's elements and its
reply message the output wrapper's, nested complex types as nested messages, arrays as repeated
fields. zeep reads the WSDL (it already resolves imports and includes); what the proto cannot
express is reported per element, and the rest is still written.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .mapping.soap_operation import array_item

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PACKAGE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


class ImportError_(ValueError):
    """The WSDL cannot be imported at all (a per-element limitation is a warning instead)."""


@dataclass
class ImportResult:
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower() or "service"


def ident(name: str) -> str:
    """As the WSDL spells it when that is a proto identifier, else the nearest one."""
    if _IDENT.fullmatch(name):
        return name
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if _IDENT.fullmatch(s) else "_" + s


def pascal(name: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", name)
    s = "".join(p[:1].upper() + p[1:] for p in parts if p)
    return ident(s or "Message")


def _scalar(typ: Any) -> str:
    from zeep.xsd.types import builtins as b

    for cls, proto in (
        (b.Boolean, "bool"), (b.Float, "float"), (b.Double, "double"),
        (b.Base64Binary, "bytes"),
        (b.UnsignedInt, "uint32"), (b.UnsignedShort, "uint32"), (b.UnsignedByte, "uint32"),
        (b.UnsignedLong, "uint64"),
        (b.Byte, "int32"), (b.Short, "int32"), (b.Int, "int32"),
        (b.Long, "int64"), (b.Integer, "int64"),
        (b.DateTime, TIMESTAMP),
    ):
        if isinstance(typ, cls):
            return proto
    return "string"  # decimal (exact), date, time, durations and every string type: as text


TIMESTAMP = "google.protobuf.Timestamp"


def upper_snake(name: str) -> str:
    return snake(name).upper() if re.search(r"[A-Za-z0-9]", name) else ""


@dataclass
class _Enum:
    name: str
    values: list[tuple[str, str]]  # (proto value name, xsd literal)


@dataclass
class _Msg:
    name: str
    fields: list[str]


def _unused(wanted: str, taken: set[str], sep: str) -> str:
    """`wanted`, else wanted<sep>2, wanted<sep>3, ...: the first name not taken, now taken."""
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted}{sep}{n}", n + 1
    taken.add(name)
    return name


class _Builder:
    def __init__(self, warnings: list[str]) -> None:
        self.messages: list[_Msg] = []
        self.names: set[str] = set()
        self.by_type: dict[int, str] = {}
        self.warnings = warnings
        self.enum_values: Any = lambda typ: ()
        self.enums: list[_Enum] = []
        self.by_enum: dict[str, str] = {}
        self.value_names: set[str] = set()  # enum values share the package's scope
        self.timestamp = False

    def enum(self, typ: Any, literals: tuple[str, ...], where: str) -> str:
        """An xsd enumeration → a proto enum: `<ENUM>_UNSPECIFIED = 0`, then each literal as
        `<ENUM>_<LITERAL>`, numbered in schema order (the mapping converts by name)."""
        key = typ.qname.text
        if key in self.by_enum:
            return self.by_enum[key]
        name = self.unique(pascal(typ.qname.localname))
        self.by_enum[key] = name
        prefix = upper_snake(name)
        values = [(self._value(f"{prefix}_UNSPECIFIED"), "")]
        for lit in literals:
            base = upper_snake(lit)
            if not base:
                self.warnings.append(f"{where}: enumeration value {lit!r} has no letter or digit; "
                                     f"named {prefix}_VALUE{len(values)}")
                base = f"VALUE{len(values)}"
            values.append((self._value(f"{prefix}_{base}"), lit))
        self.enums.append(_Enum(name, values))
        return name

    def _value(self, wanted: str) -> str:
        return _unused(wanted, self.value_names, "_")  # enum values share the package's scope

    def unique(self, name: str) -> str:
        return _unused(name, self.names, "")

    def message(self, wanted: str, typ: Any, where: str, exact: bool = False) -> str:
        key = id(typ)
        if key in self.by_type:
            return self.by_type[key]
        qname = getattr(typ, "qname", None)
        named = not exact and qname is not None and getattr(typ, "name", None)
        name = self.unique(pascal(qname.localname) if named and qname is not None else wanted)
        self.by_type[key] = name  # before the fields: recursive types refer to themselves
        msg = _Msg(name, [])
        self.messages.append(msg)
        used: set[str] = set()
        number = 1
        oneofs = _choices(typ, where, self.warnings)
        open_oneof: str | None = None
        for el_name, el in getattr(typ, "elements", ()):
            if _is_any(el):
                self.warnings.append(f"{where}: xsd:any (elements of any name) is not expressed; "
                                     f"skipped")
                continue
            if not isinstance(el_name, str) or not hasattr(el, "type"):
                what = (f"a repeated choice of {_members(el)}" if isinstance(el, list)
                        else type(el).__name__)
                self.warnings.append(f"{where}: {what} is not expressed; skipped")
                continue
            fname = ident(el_name)
            if fname in used:
                self.warnings.append(f"{where}.{el_name}: name clash; skipped")
                continue
            used.add(fname)
            group = oneofs.get(el_name)
            if group != open_oneof:
                if open_oneof is not None:
                    msg.fields.append("  }")
                if group is not None:
                    msg.fields.append(f"  oneof {group} {{")
                open_oneof = group
            indent = "    " if group is not None else "  "
            sub = el.type
            many = el.max_occurs == "unbounded" or (isinstance(el.max_occurs, int) and el.max_occurs > 1)
            item = array_item(sub)
            if item is not None:  # a SOAP-encoded array: a repeated field of its item type
                sub, many = item, True
            if getattr(sub, "elements", None):
                ftype = self.message(pascal(f"{name}_{el_name}"), sub, f"{where}.{el_name}")
                label = "repeated " if many else ""
            else:
                literals = self.enum_values(sub)
                ftype = self.enum(sub, literals, f"{where}.{el_name}") if literals else _scalar(sub)
                self.timestamp = self.timestamp or ftype == TIMESTAMP
                label = "repeated " if many else ("optional " if el.min_occurs == 0 else "")
            if group is not None:
                label = ""  # a oneof's fields have presence already
            msg.fields.append(f"{indent}{label}{ftype} {fname} = {number};")
            number += 1
        if open_oneof is not None:
            msg.fields.append("  }")
        for attr_name, _attr in getattr(typ, "attributes", ()):
            self.warnings.append(f"{where}: attribute {attr_name!r} is not expressed; skipped")
        return name


def _is_any(el: Any) -> bool:
    from zeep.xsd.elements import Any as AnyElement

    return isinstance(el, AnyElement)


def _choices(typ: Any, where: str, warnings: list[str]) -> dict[str, str]:
    """Element name → the oneof it belongs to, for each xsd:choice between single elements
    (zeep flattens a choice's elements into optional ones). A choice that may repeat or that
    holds sequences, groups or xsd:any cannot be a oneof: its elements stay optional fields,
    and a warning says that which combination is valid is left to the service."""
    from zeep.xsd.elements.element import Element
    from zeep.xsd.elements.indicators import Choice

    out: dict[str, str] = {}

    def walk(node: Any) -> None:
        for child in node if isinstance(node, list) else ():
            item = child[1] if isinstance(child, tuple) else child
            if isinstance(item, Choice) and item.max_occurs == 1:  # else: not flattened
                members = list(item)
                names: list[str] = [m.name for m in members if type(m) is Element and m.name]
                if names and len(names) == len(members) and all(m.max_occurs == 1
                                                                for m in members):
                    group = ident("_or_".join(snake(n) for n in names))
                    out.update((n, group) for n in names)
                else:
                    warnings.append(f"{where}: choice of {_members(item)} is not expressed as a "
                                    f"oneof: its elements are fields of their own (and zeep may "
                                    f"refuse a reply that takes the branch without a sequence)")
            elif isinstance(item, list):
                walk(item)

    walk(list(getattr(typ, "elements_nested", ())))
    return out


def _members(indicator: Any) -> str:
    """`a | (b, c) | any` for a choice, as a warning shows it."""
    parts = []
    for m in indicator:
        name = getattr(m, "name", None)
        if _is_any(m):
            parts.append("xsd:any")
        elif name is not None and not isinstance(m, list):
            parts.append(name)
        else:
            parts.append("(" + ", ".join(getattr(x, "name", None) or "..." for x in m) + ")")
    return " | ".join(parts)


def import_wsdl(wsdl: str, package: str, out: Path, service: str | None = None,
                port: str | None = None) -> ImportResult:
    from .backends.soap import (
        SoapSpec,
        WsdlError,
        enum_values,
        load_wsdl,
        reply_wrapper,
        request_type,
    )

    if not _PACKAGE.fullmatch(package):
        raise ImportError_(f"--package {package!r} is not a proto package (like crm.v1)")
    result = ImportResult()
    spec = SoapSpec(name="import", wsdl=wsdl, endpoint=None, service=service, port=port, wsse=None,
                    timeout=1.0, connect_timeout=1.0, pool_size=1, max_reply_bytes=1)
    try:
        bound = load_wsdl(spec, first_service=True)
    except WsdlError as e:
        if "no http(s) address" not in str(e):
            raise ImportError_(str(e)) from e
        bound = load_wsdl(replace(spec, endpoint="http://127.0.0.1:8080/"),
                          first_service=True)
        result.warnings.append("the port has no http(s) address: set the endpoint in adaptercar.yaml")
    name = snake(bound.service)
    svc_name = pascal(bound.service)
    b = _Builder(result.warnings)
    b.enum_values = lambda typ: enum_values(bound, typ)
    b.names.add(svc_name)
    rpcs, methods = [], {}
    views: list[Any] = []
    for opname in sorted(bound.operations):
        op = bound.operations[opname]
        rpc = pascal(opname)
        in_type = request_type(op)
        out_type, _ = reply_wrapper(op)
        views += (in_type, out_type)  # alive till the end: `_Builder` remembers types by id
        req = (b.message(f"{rpc}Request", in_type, opname, exact=True) if in_type is not None
               else _empty(b, b.unique(f"{rpc}Request")))
        rep = (b.message(f"{rpc}Reply", out_type, opname, exact=True) if out_type is not None
               else _empty(b, b.unique(f"{rpc}Reply")))
        route = f"/v1/{name.replace('_', '-')}/{rpc}"
        rpcs.append(f"  rpc {rpc}({req}) returns ({rep}) {{\n"
                    f"    option (google.api.http) = {{post: \"{route}\" body: \"*\"}};\n  }}")
        methods[rpc] = {} if rpc == opname else {"operation": opname}
    proto = ["// Generated by `adaptercar import-wsdl` from " + Path(wsdl).name + ".",
             'syntax = "proto3";', "", f"package {package};", "",
             'import "google/api/annotations.proto";',
             *(['import "google/protobuf/timestamp.proto";'] if b.timestamp else []), "",
             f"service {svc_name} {{", *rpcs, "}", ""]
    for m in b.messages:
        proto += [f"message {m.name} {{", *m.fields, "}", ""]
    for en in b.enums:
        proto += [f"enum {en.name} {{", *(f"  {v} = {i};  // {json.dumps(lit)}" if lit else
                                          f"  {v} = {i};" for i, (v, lit) in enumerate(en.values)),
                  "}", ""]
    out.mkdir(parents=True, exist_ok=True)
    wsdl_dir = out / "wsdl"
    local = _copy_wsdl(Path(wsdl), wsdl_dir, result)
    write = _writer(result)
    write(out / "protos" / f"{name}.proto", "\n".join(proto))
    mapping = {"service": f"{package}.{svc_name}", "backend": name, "methods": methods}
    write(out / "mappings" / f"{name}.yaml",
          "# Generated by `adaptercar import-wsdl`: fields are matched to the schema by name.\n"
          + yaml.safe_dump(mapping, sort_keys=False))
    env = re.sub(r"[^A-Z0-9]+", "_", name.upper()) + "_URL"
    config = {
        "grpc": {"listen": "127.0.0.1:${GRPC_PORT:-50051}"},
        "http": {"listen": "127.0.0.1:${HTTP_PORT:-8080}"},
        "admin": {"listen": "127.0.0.1:${ADMIN_PORT:-9901}"},
        "protos": ["protos/"], "mappings": ["mappings/"],
        "backends": {name: {"soap": {
            "wsdl": f"wsdl/{local}", "endpoint": f"${{{env}:-{bound.address}}}",
            "service": bound.service, "port": bound.port}}},
    }
    write(out / "adaptercar.yaml", "# Generated by `adaptercar import-wsdl`.\n"
          + yaml.safe_dump(config, sort_keys=False))
    return result


def _empty(b: _Builder, name: str) -> str:
    b.messages.append(_Msg(name, []))
    return name


def _writer(result: ImportResult) -> Any:
    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        result.files.append(path)
    return write


def _copy_wsdl(src: Path, dest: Path, result: ImportResult) -> str:
    """The WSDL and the files it imports or includes by relative path, layout kept."""
    from lxml import etree

    if not src.is_file():
        raise ImportError_(f"{src}: only a local WSDL file can be copied")
    root = src.parent.resolve()
    todo, seen = [src.resolve()], set()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(root)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        result.files.append(target)
        for el in etree.parse(str(path), parser).iter():
            loc = el.get("location") or el.get("schemaLocation")
            if not loc or re.match(r"^[a-z][a-z0-9+.-]*:", loc):
                continue  # absent or a URL: standard schemas resolve without it
            found = (path.parent / loc).resolve()
            if not found.is_relative_to(root) or not found.is_file():
                result.warnings.append(f"{rel}: import {loc!r} is outside the WSDL's folder or "
                                       f"missing; not copied")
                continue
            todo.append(found)
    return str(src.resolve().relative_to(root))
