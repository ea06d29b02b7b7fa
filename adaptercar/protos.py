"""Compile the offered .proto files once, at start-up or reload, into a private descriptor pool.

protoc runs as a child process (grpc_tools' bundled compiler) so that its diagnostics
(`file.proto:12:5: ...`) reach the user verbatim, and so a compiler crash can never take the
sidecar down. The result lives in a fresh DescriptorPool per load: a reload builds a new pool
and can redefine every message without colliding with the set still serving in-flight calls.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

__all__ = ["ProtoError", "ProtoSet", "compile_protos", "empty_protoset"]

# protoc is fast; a minute only guards against a wedged child, never a real compile.
_PROTOC_TIMEOUT_S = 60.0


class ProtoError(Exception):
    """The .proto files could not be compiled or loaded; the message is what users must read."""


def _googleapis_include() -> Path:
    """The directory holding `google/api/annotations.proto` (googleapis-common-protos)."""
    api_dir = Path(annotations_pb2.__file__).resolve().parent
    # .../site-packages/google/api/annotations_pb2.py -> .../site-packages
    return api_dir.parent.parent


def _protobuf_include() -> Path:
    """grpc_tools' bundled `google/protobuf/*.proto`, matching the protoc we run."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


@dataclass
class ProtoSet:
    """One compiled generation of protos: descriptors, message classes and HTTP rules.

    Immutable in use: everything is derived at load time, except message classes, which are
    created on first use and cached (creating one is a pure function of its descriptor).
    """

    pool: descriptor_pool.DescriptorPool
    files: list[descriptor_pb2.FileDescriptorProto]
    descriptor_set_bytes: bytes
    user_files: frozenset[str]
    _services: dict[str, ServiceDescriptor] = field(default_factory=dict, repr=False)
    _http_rules: dict[str, http_pb2.HttpRule] = field(default_factory=dict, repr=False)
    _classes: dict[str, type[Message]] = field(default_factory=dict, repr=False)

    def services(self) -> dict[str, ServiceDescriptor]:
        """Services of the user's files by full name (google/* files are never offered)."""
        return dict(self._services)

    def method(self, full_service: str, name: str) -> MethodDescriptor:
        """Raises KeyError with a readable message when the service or method is unknown."""
        service = self._services.get(full_service)
        if service is None:
            known = ", ".join(sorted(self._services)) or "none"
            raise KeyError(
                f"service {full_service!r} is not defined in the protos (known: {known})"
            )
        method = service.methods_by_name.get(name)
        if method is None:
            known = ", ".join(m.name for m in service.methods) or "none"
            raise KeyError(f"service {full_service} has no method {name!r} (methods: {known})")
        return method

    def message_class(self, desc: Descriptor) -> type[Message]:
        cls = self._classes.get(desc.full_name)
        if cls is None:
            cls = message_factory.GetMessageClass(desc)
            self._classes[desc.full_name] = cls
        return cls

    def http_rule(self, method_desc: MethodDescriptor) -> http_pb2.HttpRule | None:
        """The method's `google.api.http` option, or None. Treat the result as read-only."""
        return self._http_rules.get(method_desc.full_name)


def empty_protoset() -> ProtoSet:
    """A set with no services: a config without `protos` is valid and offers nothing."""
    return ProtoSet(
        pool=descriptor_pool.DescriptorPool(),
        files=[],
        descriptor_set_bytes=descriptor_pb2.FileDescriptorSet().SerializeToString(),
        user_files=frozenset(),
    )


def _collect(paths: Sequence[Path]) -> tuple[list[Path], list[Path], set[str]]:
    """Input files, include roots, and the import names (paths relative to a root) of inputs.

    Directories come first among the roots so a file given both directly and through its
    directory resolves to one import name (protoc rejects inputs "shadowed" by a root).
    """
    dirs: list[Path] = []
    loose: list[Path] = []
    for raw in paths:
        p = Path(raw).resolve()
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            if p.suffix != ".proto":
                raise ProtoError(f"{raw}: not a .proto file")
            loose.append(p)
        else:
            raise ProtoError(f"{raw}: no such file or directory")
    roots: list[Path] = []
    for d in dirs + [f.parent for f in loose]:
        if d not in roots:
            roots.append(d)
    files: list[Path] = []
    names: set[str] = set()
    seen: set[Path] = set()
    for f in [f for d in dirs for f in sorted(d.rglob("*.proto"))] + loose:
        if f in seen:
            continue
        seen.add(f)
        root = next(r for r in roots if f.is_relative_to(r))
        name = f.relative_to(root).as_posix()
        if name in names:
            continue  # same import name under two roots: protoc would compile only the first
        names.add(name)
        files.append(f)
    return files, roots, names


def compile_protos(paths: Sequence[Path]) -> ProtoSet:
    """Compile every `*.proto` under the given directories (recursively) and the given files.

    Raises ProtoError carrying protoc's own diagnostics verbatim.
    """
    files, roots, names = _collect(paths)
    if not files:
        return empty_protoset()
    with tempfile.TemporaryDirectory(prefix="adaptercar-protoc-") as tmp:
        out = Path(tmp) / "descriptors.pb"
        argv = [sys.executable, "-m", "grpc_tools.protoc"]
        for root in roots:
            argv += ["-I", str(root)]
        argv += ["-I", str(_googleapis_include()), "-I", str(_protobuf_include())]
        argv += ["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"]
        argv += [str(f) for f in files]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_PROTOC_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ProtoError(f"protoc did not finish within {_PROTOC_TIMEOUT_S:.0f}s") from exc
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip()
            raise ProtoError(message or f"protoc failed with exit status {done.returncode}")
        data = out.read_bytes()
    return _load(data, names)


def _load(data: bytes, names: set[str]) -> ProtoSet:
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        try:
            pool.Add(fdp)
        except Exception as exc:  # the pool's errors are not part of protobuf's typed API
            raise ProtoError(f"{fdp.name}: cannot load descriptors: {exc}") from exc
    user = frozenset(n for n in names if not n.startswith("google/"))
    services: dict[str, ServiceDescriptor] = {}
    rules: dict[str, http_pb2.HttpRule] = {}
    for fdp in fds.file:
        if fdp.name not in user:
            continue
        prefix = f"{fdp.package}." if fdp.package else ""
        for svc in fdp.service:
            services[prefix + svc.name] = pool.FindServiceByName(prefix + svc.name)
            for m in svc.method:
                rule = _read_http_rule(m.options)
                if rule is not None:
                    rules[f"{prefix}{svc.name}.{m.name}"] = rule
    return ProtoSet(
        pool=pool,
        files=list(fds.file),
        descriptor_set_bytes=data,
        user_files=user,
        _services=services,
        _http_rules=rules,
    )


def _read_http_rule(opts: descriptor_pb2.MethodOptions) -> http_pb2.HttpRule | None:
    # Re-parse so the extension is decoded whether or not annotations_pb2 was imported
    # before the set was parsed (otherwise it stays an unknown field).
    parsed = descriptor_pb2.MethodOptions.FromString(opts.SerializeToString())
    if not parsed.HasExtension(annotations_pb2.http):
        return None
    rule = http_pb2.HttpRule()
    rule.CopyFrom(parsed.Extensions[annotations_pb2.http])
    return rule
